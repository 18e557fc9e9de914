"""Compression with distillation on digits: accuracy, size, speed and whether explanations survive.

Per seed: a CNN2d teacher, a dense KD MLP student, then compressed students fine-tuned from the dense
student's weights: unstructured sparsity 50/80/90/95 %, 50 % of the hidden neurons removed, int8 PTQ
and QAT (weight-only int8 by default, ``--int8-mode``), each with KD and with KD +
ExplanationPreservation (saliency maps of the dense student, weight ``--preserve-weight``). A control,
"dense, fine-tuned" (sparsity 0), fine-tunes the dense student the same epochs with the same settings and
no compression, so that the drift from fine-tuning alone can be told apart from that of compression.
Agreement is measured by the ExplanationAgreement callback run twice on the validation split: once with the
teacher as the "teacher", once with the dense student (the compressed model's uncompressed self).

int8 students: accuracy and top-1 agreement come from the real int8 model on the validation split
(``compare_predictions``); their maps (and chance levels) come from the int8 model's fake-quantised twin
(``kdlight.compression.twin.fake_quantized_twin``: the same int8 weights, dequantised, torchao fake
quantisation of the activations, straight-through gradients), whose logits are compared with the int8
model's on the validation split (reported under the table).

    python scripts/compression_results.py --out /tmp/compression_table.md           # 3 seeds (~4 min)
    python scripts/compression_results.py --quick --out /tmp/compression_quick.md   # 1 seed, 1-2 epochs
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from kdlight import ClassifierModule, DistillationModule
from kdlight.compression import StructuredPruning, StudentPruning, compare_predictions
from kdlight.compression.twin import fake_quantized_twin, int8_layers
from kdlight.data import DigitsDataModule
from kdlight.explain import ExplanationAgreement
from kdlight.models import MLP, CNN2d
from kdlight.objectives import KD, Composite
from kdlight.objectives.preservation import ExplanationPreservation

METHODS = ["saliency", "integrated_gradients"]
METRIC = "rank_correlation"  # Spearman rank correlation of the maps (chance level from a random student)


#: where the explanation callback's per-class tables go (the runs log nothing else)
SCRATCH = Path(tempfile.mkdtemp(prefix="kdlight-compression-"))


def trainer(epochs: int, callbacks=(), limit: float | None = None) -> Trainer:
    return Trainer(
        default_root_dir=SCRATCH,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=list(callbacks),
        limit_train_batches=limit,
    )


def adam(lr: float):
    return lambda params: torch.optim.Adam(params, lr=lr)


def student() -> MLP:
    return MLP(in_features=64, num_classes=10, hidden=[128, 64])


def objective(preserve: float) -> torch.nn.Module:
    kd = KD(temperature=4.0, alpha=0.9)
    if preserve <= 0:
        return kd
    return Composite([kd, ExplanationPreservation(reference="dense_student", kind="saliency", weight=preserve)])


def distill(teacher, network, data, epochs, preserve=0.0, callbacks=(), lr=3e-3) -> DistillationModule:
    module = DistillationModule(
        copy.deepcopy(teacher), network, objective(preserve), teacher_as_given=True, optimizer=adam(lr)
    )
    trainer(epochs, callbacks).fit(module, datamodule=data)
    return module


def agreement(reference, model, data, seed: int) -> dict[str, float]:
    """Test accuracy, top-1 agreement and map agreement (with chance) of ``model`` against ``reference``."""
    callback = ExplanationAgreement(
        methods=METHODS,
        num_probes=128,
        log_images=False,
        faithfulness=False,
        surrogate=False,
        seed=seed,
        metrics=[METRIC],
        method_args={"integrated_gradients": {"n_steps": 16}},
    )
    module = DistillationModule(
        copy.deepcopy(reference).eval(), model, KD(), teacher_as_given=True, allow_teacher_data_overlap=True
    )
    (metrics,) = trainer(1, [callback]).validate(module, datamodule=data, verbose=False)
    found = {"acc": metrics["val/acc"], "top1": metrics["val/agreement"]}
    for method in METHODS:
        for key, value in callback.last_results.items():
            if key.endswith(f"explain/{method}/{METRIC}"):
                found[f"{method}"] = float(value)
            elif key.endswith(f"explain/{method}/chance_{METRIC}"):
                found[f"{method}_chance"] = float(value)
    return found


def footprint(model, example) -> dict[str, float]:
    from kdlight.compression.measure import cpu_latency, parameter_counts, size_on_disk

    nonzero, total = parameter_counts(model)
    latency = cpu_latency(model, example, batch_sizes=(1, 64), repeats=30, warmup=5)
    return {
        "nonzero": nonzero,
        "total": total,
        "kb": size_on_disk(model, compressed=True) / 1024,
        "ms1": latency[1],
        "ms64": latency[64],
    }


def variants(args) -> list[tuple[str, dict]]:
    levels = [0.5, 0.9] if args.quick else [0.5, 0.8, 0.9, 0.95]
    found: list[tuple[str, dict]] = [("dense KD", {"kind": "dense"}), ("dense, fine-tuned", {"kind": "finetune"})]
    for level in levels:
        found.append((f"sparse {level:.0%}", {"kind": "sparse", "amount": level}))
    found.append(("channels -50%", {"kind": "channels", "ratio": 0.5}))
    found += [("int8 PTQ", {"kind": "ptq"}), ("int8 QAT", {"kind": "qat"})]
    return found


def compress(spec, dense, teacher, data, args, preserve) -> torch.nn.Module | None:
    """The compressed student of ``spec``, fine-tuned from the dense student's weights."""
    kind, epochs = spec["kind"], args.finetune_epochs
    if kind == "dense":
        return dense
    if kind == "ptq":
        if preserve:
            return None  # no training, nothing to preserve
        from kdlight.compression.quantization import quantize_int8

        return quantize_int8(copy.deepcopy(dense), mode=args.int8_mode)
    callbacks = []  # kind "finetune": the control, the same fine-tuning without compression
    if kind == "sparse":
        callbacks = [StudentPruning(amount=spec["amount"], schedule="cubic", end_epoch=max(0, epochs // 2 - 1))]
    elif kind == "channels":
        callbacks = [StructuredPruning(ratio=spec["ratio"], at_epoch=0)]
    elif kind == "qat":
        from kdlight.compression.quantization import QuantizationAwareTraining

        callbacks = [QuantizationAwareTraining(mode=args.int8_mode)]
    module = distill(teacher, copy.deepcopy(dense), data, epochs, preserve, callbacks, lr=1e-3)
    return module.student.eval()


def run_seed(seed: int, args) -> dict[tuple[str, str], dict[str, float]]:
    seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=64, seed=seed)
    teacher_module = ClassifierModule(CNN2d(channels=[32, 64], hidden=128), optimizer=adam(3e-3))
    trainer(args.teacher_epochs).fit(teacher_module, datamodule=data)
    teacher = teacher_module.model.eval()
    dense = distill(teacher, student(), data, args.student_epochs).student.eval()
    example = data.example_input(64)
    rows = {}
    for name, spec in variants(args):
        for preserve in (0.0, args.preserve_weight):
            if spec["kind"] == "dense" and preserve:
                continue
            seed_everything(seed, verbose=False)
            try:
                model = compress(spec, dense, teacher, data, args, preserve)
            except Exception as err:  # a variant another part of the package cannot build yet
                print(f"[seed {seed}] {name}: skipped ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
                continue
            if model is None:
                continue
            row = footprint(model, example)
            row |= measure(model, teacher, dense, data, seed, name)
            rows[(name, "KD + preserve" if preserve else "KD")] = row
            print(f"[seed {seed}] {name} ({'+preserve' if preserve else 'KD'}): {row}", flush=True)
    return rows


def measure(model, teacher, dense, data, seed: int, name: str) -> dict[str, float]:
    """Agreement of ``model`` with the teacher (``t_``) and the dense student (``d_``). An int8 model's
    accuracy and top-1 agreement are its own (``compare_predictions`` on the validation split); its maps
    are its fake-quantised twin's, whose logit gap to the int8 model is recorded (``twin_*``)."""
    explained, row = model, {}
    if int8_layers(model):
        explained = fake_quantized_twin(model).eval()
        fidelity = compare_predictions(model, explained, data.val_dataloader())
        row |= {"twin_max_diff": fidelity["max_logit_difference"], "twin_top1": fidelity["agreement"]}
    for prefix, reference in (("t", teacher), ("d", dense)):
        try:
            found = agreement(reference, explained, data, seed)
        except Exception as err:  # report a failing variant and keep the others
            print(f"[seed {seed}] {name}: no agreement ({type(err).__name__}: {str(err).splitlines()[0][:160]})")
            continue
        if explained is not model:
            real = compare_predictions(reference, model, data.val_dataloader())
            row[f"{prefix}_twin_acc"] = found["acc"]
            found |= {"acc": real["accuracy"], "top1": real["agreement"]}
        row |= {f"{prefix}_{k}": v for k, v in found.items()}
    return row


def int8_notes(results: list[dict]) -> list[str]:
    """Lines under the table: how closely the fake-quantised twins reproduce the int8 models."""
    rows = [r for seed in results for key, r in seed.items() if "twin_max_diff" in r]
    if not rows:
        return []
    worst = max(r["twin_max_diff"] for r in rows)
    top1 = min(r["twin_top1"] for r in rows)
    acc_gap = max(abs(r["t_twin_acc"] - r["t_acc"]) for r in rows if "t_twin_acc" in r)
    return [
        "",
        "int8 rows: val acc and top-1 agreement are the real int8 model's (torchao kernels) on the validation split; "
        "its maps (and their chance level) are those of its fake-quantised twin (the same int8 weights, dequantised, "
        "with torchao fake quantisation of the activations for dynamic int8; gradients by the straight-through "
        "estimator), because "
        "gradients do not pass torchao's int8 kernels (dynamic) or pass them only through an internal "
        f"dequantisation (weight-only). Twin vs int8 model on the validation split, over {len(rows)} int8 students: "
        f"largest logit difference {worst:.1e}, top-1 agreement {top1:.3f} (lowest), accuracy gap {acc_gap:.3f}.",
    ]


def cell(values: list[float], fmt: str = "{:.3f}") -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: list[dict], seeds: int) -> str:
    keys = list(dict.fromkeys(k for r in results for k in r))
    lines = [
        f"Digits, CNN2d teacher -> MLP [128, 64] student, mean ± std over {seeds} seed(s); agreement on the validation "
        f"split; map agreement = Spearman rank correlation of the maps (saliency / integrated gradients), "
        "chance = a freshly initialised student.",
        "",
        "| model | objective | val acc | non-zero / total params | size KB (zip) | ms @1 | ms @64 | top-1 w/ teacher "
        "| saliency w/ teacher (chance) | IG w/ teacher (chance) | top-1 w/ dense | saliency w/ dense (chance) "
        "| IG w/ dense (chance) |",
        "|" + "---|" * 13,
    ]
    for key in keys:
        rs = [r[key] for r in results if key in r]

        def col(name, fmt="{:.3f}", rs=rs):
            return cell([r.get(name, math.nan) for r in rs], fmt)

        lines.append(
            f"| {key[0]} | {key[1]} | {col('t_acc')} | {col('nonzero', '{:.0f}')} / {col('total', '{:.0f}')} "
            f"| {col('kb', '{:.1f}')} | {col('ms1', '{:.3f}')} | {col('ms64', '{:.3f}')} | {col('t_top1')} "
            f"| {col('t_saliency')} ({col('t_saliency_chance', '{:.2f}')}) "
            f"| {col('t_integrated_gradients')} ({col('t_integrated_gradients_chance', '{:.2f}')}) "
            f"| {col('d_top1')} | {col('d_saliency')} ({col('d_saliency_chance', '{:.2f}')}) "
            f"| {col('d_integrated_gradients')} ({col('d_integrated_gradients_chance', '{:.2f}')}) |"
        )
    return "\n".join(lines + int8_notes(results)) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("compression_results.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1-2 epochs, fewer sparsity levels")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--student-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--preserve-weight", type=float, default=1.0)
    parser.add_argument("--int8-mode", choices=["weight_only", "dynamic"], default="weight_only")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_epochs, args.student_epochs, args.finetune_epochs = args.seeds[:1], 2, 1, 2
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory():
        results = [run_seed(seed, args) for seed in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(results, len(args.seeds)))
    print(args.out.read_text())
    return args.out


if __name__ == "__main__":
    main()
