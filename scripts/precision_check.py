"""Distil the same student under fp32, bf16-mixed and 16-mixed; print metrics side by side.

Checks on real hardware that mixed precision trains, that the explanation callback still gets
float32 attributions, and what each precision costs:

    python scripts/precision_check.py --accelerator gpu --epochs 5
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning.pytorch import Trainer, seed_everything

from kdlight import ClassifierModule, DistillationModule
from kdlight.data import MNIST1DDataModule
from kdlight.explain import ExplanationAgreement
from kdlight.models import MLP, CNN1d
from kdlight.objectives import KD, Composite, ExplanationMatching


def trainer(args, precision: str, callbacks=()) -> Trainer:
    return Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed", "16-mixed"])
    args = parser.parse_args()
    data = MNIST1DDataModule(batch_size=128)
    seed_everything(0, verbose=False)
    teacher = ClassifierModule(CNN1d(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer(args, "32-true").fit(teacher, datamodule=data)
    state = teacher.model.state_dict()
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}")
    print("| precision | s/epoch | val acc | agreement | IG rank corr. | saliency cosine | nonfinite attributions |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions:
        seed_everything(0, verbose=False)
        t = CNN1d()
        t.load_state_dict(state)
        module = DistillationModule(
            t,
            MLP(in_features=40, hidden=[100, 100]),
            objective=Composite([KD(), ExplanationMatching("saliency", weight=1.0)]),
            optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
            teacher_as_given=True,
        )
        callback = ExplanationAgreement(
            methods=["integrated_gradients", "saliency"], every_n_epochs=args.epochs, num_probes=128, log_images=False
        )
        run = trainer(args, precision, [callback])
        start = time.perf_counter()
        try:
            run.fit(module, datamodule=data)
        except Exception as err:  # report, keep going with the other precisions
            print(f"| {precision} | failed: {type(err).__name__}: {str(err).splitlines()[0]} |")
            continue
        seconds = (time.perf_counter() - start) / args.epochs
        m, r = run.callback_metrics, callback.last_results
        nonfinite = sum(v for k, v in r.items() if k.endswith("/nonfinite"))
        print(
            f"| {precision} | {seconds:.2f} | {float(m['val/acc']):.3f} | {float(m['val/agreement']):.3f} | "
            f"{r['val/explain/integrated_gradients/rank_correlation']:.3f} | {r['val/explain/saliency/cosine']:.3f} | {nonfinite:.0f} |"
        )


if __name__ == "__main__":
    main()
