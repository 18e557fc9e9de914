"""Sections 1 and 4: ``fit`` throughput of kdlight against a hand-written PyTorch loop over the
training tensors in memory (the baseline) and over the data module's DataLoader.

Section 4 (``--device cuda`` only) rides with section 1: bf16-mixed against 32-true.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import CLOCK, Row, fmt_ratio, lightning_log_path, log, median, now, sync
from bench.workloads import Workload, adam, kd_module, lightning_fit, samples_per_s

VARIANTS = (
    "plain_tensors",
    "plain",
    "torchdistill",
    "torchdistill_box",
    "bare_lightning",
    "bare_manual",
    "bare_raw_optimizer",
    "kdlight",
    "kdlight_nofinite",
    "kdlight_nolog",
    "kdlight_csv50",
    "kdlight_csv10",
    "kdlight_csv10_lightning_log",
)
#: the variants of cifar and --quick runs (the others sit within noise there; --all-variants runs them)
FEW_VARIANTS = (
    "plain_tensors",
    "plain",
    "torchdistill",
    "bare_lightning",
    "bare_raw_optimizer",
    "kdlight",
    "kdlight_nolog",
    "kdlight_csv10",
)
#: torchdistill variants: timed only where torchdistill can run (see bench/torchdistill_contender.py)
TORCHDISTILL = ("torchdistill", "torchdistill_box")

_warmed = False  # whether the one-off untimed pre-pass has run in this process
_torchdistill = None  # the torchdistill contender, made on first use (it may start a worker process)


def torchdistill_contender(cfg):
    """The :class:`bench.torchdistill_contender.Contender` of this run (its ``skipped`` says why not)."""
    global _torchdistill
    if _torchdistill is None:
        from bench.torchdistill_contender import Contender

        _torchdistill = Contender(cfg)
        log(f"  {_torchdistill.skipped or _torchdistill.where}")
    return _torchdistill


def kd_step(teacher, student, optimizer, x, y, amp=None) -> None:
    """One hand-written distillation step: ``0.1 * CE + 0.9 * kd_loss(T=4)``, Adam."""
    from kdlight.functional import kd_loss

    with amp if amp is not None else contextlib.nullcontext():
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def plain_loop(cfg, wl: Workload, epochs: int, precision: str = "32-true") -> float:
    """The hand-written baseline: same models, loader, objective and optimizer as kdlight."""

    device = cfg.device
    teacher, student = wl.models()
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    optimizer = adam(student.parameters())
    loader = wl.datamodule().train_dataloader()
    n_train = len(loader.dataset)
    amp = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    stamps = []
    for _ in range(epochs):
        sync(device)
        stamps.append(now())
        for batch in loader:  # kdlight's loaders yield named batches: {"inputs", "target", "index"}
            x = batch["inputs"].to(device, non_blocking=True)
            y = batch["target"].to(device, non_blocking=True)
            kd_step(teacher, student, optimizer, x, y, amp)
    sync(device)
    stamps.append(now())
    return samples_per_s(stamps, n_train)


def tensor_loop(cfg, wl: Workload, epochs: int) -> float:
    """The baseline: the plain loop over the training tensors themselves, already on the device
    (one ``randperm`` per epoch, batches by indexing; no DataLoader, no collation)."""

    device = cfg.device
    teacher, student = wl.models()
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    optimizer = adam(student.parameters())
    x_all, y_all = (t.to(device) for t in wl.datamodule().split_tensors("train"))
    n_train = len(y_all)
    generator = torch.Generator().manual_seed(0)
    stamps = []
    for _ in range(epochs):
        sync(device)
        stamps.append(now())
        order = torch.randperm(n_train, generator=generator).to(device)
        for rows in order.split(wl.batch_size):
            kd_step(teacher, student, optimizer, x_all[rows], y_all[rows])
    sync(device)
    stamps.append(now())
    return samples_per_s(stamps, n_train)


def bare_module_cls():
    import lightning as L

    from kdlight.functional import kd_loss

    class BareKD(L.LightningModule):
        """The plain loop's maths inside Lightning: no logging, no metrics, no checks."""

        def __init__(self, teacher, student) -> None:
            super().__init__()
            self.teacher = teacher.eval().requires_grad_(False)
            self.student = student

        def train(self, mode: bool = True):
            super().train(mode)
            self.teacher.eval()
            return self

        def training_step(self, batch, batch_idx):
            x, y = batch["inputs"], batch["target"]
            with torch.no_grad():
                t_logits = self.teacher(x)
            s_logits = self.student(x)
            return 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)

        def configure_optimizers(self):
            return adam(self.student.parameters())

    return BareKD


def manual_module_cls(raw: bool):
    """The bare module with manual optimisation: ``manual_backward`` and ``LightningOptimizer.step``,
    or (``raw``) ``loss.backward()`` and the torch optimizer's own ``step`` (no precision plugin, no
    optimizer hooks). Lightning's per-batch loop around ``training_step`` is all that is left."""
    bare = bare_module_cls()

    class ManualKD(bare):
        def __init__(self, teacher, student) -> None:
            super().__init__(teacher, student)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            if raw:
                optimizer = optimizer.optimizer
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward() if raw else self.manual_backward(loss)
            optimizer.step()

    return ManualKD


def no_training_logs_cls():
    """kdlight's DistillationModule with its public ``record_training`` as a no-op (a subclass
    made here; kdlight is not changed): no train loss/weight logs, no train acc/F1 confusion
    matrix, and so also no finite-loss check (that runs on logging steps inside it)."""
    from kdlight import DistillationModule

    class NoTrainingLogs(DistillationModule):
        def record_training(self, *args, **kwargs) -> None:
            return None

    return NoTrainingLogs


def csv10_lightning_log(cfg, wl: Workload, epochs: int) -> float:
    with lightning_log_path():
        return lightning_fit(cfg, wl, kd_module(wl), epochs, logger="csv", log_every_n_steps=10)


def variants(cfg, wl: Workload) -> dict[str, Callable[[int], float]]:
    """name -> fn(epochs) returning train samples/s."""
    found = {
        "plain_tensors": lambda e: tensor_loop(cfg, wl, e),
        "plain": lambda e: plain_loop(cfg, wl, e),
        "bare_lightning": lambda e: lightning_fit(cfg, wl, bare_module_cls()(*wl.models()), e),
        "bare_manual": lambda e: lightning_fit(cfg, wl, manual_module_cls(raw=False)(*wl.models()), e),
        "bare_raw_optimizer": lambda e: lightning_fit(cfg, wl, manual_module_cls(raw=True)(*wl.models()), e),
        "kdlight": lambda e: lightning_fit(cfg, wl, kd_module(wl), e),
        "kdlight_nofinite": lambda e: lightning_fit(cfg, wl, kd_module(wl, check_finite=False), e),
        "kdlight_nolog": lambda e: lightning_fit(cfg, wl, kd_module(wl, cls=no_training_logs_cls()), e),
        "kdlight_csv50": lambda e: lightning_fit(cfg, wl, kd_module(wl), e, logger="csv", log_every_n_steps=50),
        "kdlight_csv10": lambda e: lightning_fit(cfg, wl, kd_module(wl), e, logger="csv", log_every_n_steps=10),
        "kdlight_csv10_lightning_log": lambda e: csv10_lightning_log(cfg, wl, e),
    }
    if any(v in wl.variants for v in TORCHDISTILL) and not torchdistill_contender(cfg).skipped:
        td = torchdistill_contender(cfg)
        found = {
            **{k: found[k] for k in ("plain_tensors", "plain")},
            **{v: functools.partial(td.fit, wl, v) for v in TORCHDISTILL},
            **found,
        }
    found = {k: v for k, v in found.items() if k in wl.variants}
    if cfg.device == "cuda":
        found["kdlight_bf16"] = lambda e: lightning_fit(cfg, wl, kd_module(wl), e, precision="bf16-mixed")
        found["plain_bf16"] = lambda e: plain_loop(cfg, wl, e, precision="bf16-mixed")
    return found


def run(cfg, wl: Workload) -> dict[str, list[float]]:
    """Train samples/s of every variant, ``wl.repeats`` fits each, interleaved."""
    global _warmed
    fits = variants(cfg, wl)
    results: dict[str, list[float]] = {name: [] for name in fits}
    for name, fn in fits.items():  # one untimed 2-epoch pass (imports, caches, CUDA init)
        if cfg.device == "cuda" or (name in ("plain_tensors", "plain", "kdlight", *TORCHDISTILL) and not _warmed):
            fn(2)
    _warmed = True
    for r in range(wl.repeats):  # interleaved, so drifting background load hits all alike
        for name, fn in fits.items():
            results[name].append(fn(wl.epochs + 1))  # + the warm-up epoch
        log(
            f"  [{wl.name}] throughput repeat {r + 1}/{wl.repeats}: "
            + ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items())
        )
    return results


def rows(wl_name: str, tp: dict[str, list[float]]) -> list[Row]:
    found: list[Row] = []
    med = {k: median(v) for k, v in tp.items()}
    base_key = "plain_tensors" if "plain_tensors" in med else "plain"
    base = med[base_key]
    unit = "train samples/s"
    tag = f"[{wl_name}] "
    base_name = "tensor loop" if base_key == "plain_tensors" else "plain loop"

    def tp_row(key, label, baseline_key=base_key, baseline_label=None, goal=""):
        if key not in med or baseline_key not in med:
            return
        b = med[baseline_key]
        found.append(
            (
                "1",
                tag + label,
                f"{med[key]:,.0f} {unit} ({min(tp[key]):,.0f}-{max(tp[key]):,.0f})",
                baseline_label or f"{base_name} {b:,.0f}",
                fmt_ratio(med[key] / b),
                goal,
            )
        )

    found.append(
        (
            "1",
            tag + f"hand-written loop over {'in-memory tensors' if base_key == 'plain_tensors' else 'the DataLoader'} "
            "(baseline)",
            f"{base:,.0f} {unit} ({min(tp[base_key]):,.0f}-{max(tp[base_key]):,.0f})",
            "itself",
            "1.00",
            "",
        )
    )
    if base_key != "plain":
        tp_row("plain", "hand-written loop over the data module's DataLoader")
    tp_row("torchdistill", "torchdistill DistillationBox + KDLoss, its example's train loop")
    tp_row("torchdistill_box", "torchdistill DistillationBox + KDLoss, box calls only")
    tp_row("bare_lightning", "bare LightningModule, same maths, no log/metrics")
    tp_row("bare_manual", "bare LightningModule, manual optimisation (manual_backward, LightningOptimizer)")
    tp_row("bare_raw_optimizer", "bare LightningModule, manual optimisation stepping the torch optimizer itself")
    k = med["kdlight"] / base
    goal = 0.90 if wl_name == "digits" else 0.97
    tp_row(
        "kdlight", "kdlight fit, logger=False (defaults)", goal=f">= {goal:.2f}: {'met' if k >= goal else 'NOT met'}"
    )
    if "torchdistill" in med:
        ahead = med["kdlight"] / med["torchdistill"]
        tp_row(
            "kdlight",
            "kdlight fit vs torchdistill (its example's train loop)",
            "torchdistill",
            f"torchdistill {med['torchdistill']:,.0f}",
            goal=f"> 1.00: {'met' if ahead > 1 else 'NOT met'}",
        )
    tp_row("kdlight_nofinite", "kdlight fit, check_finite=False")
    tp_row("kdlight_nolog", "kdlight fit without training logs (record_training no-op)")
    tp_row("kdlight_csv50", "kdlight fit + CSVLogger (log_every_n_steps=50)")
    tp_row("kdlight_csv10", "kdlight fit + CSVLogger (log_every_n_steps=10, kd.yaml)")
    tp_row(
        "kdlight_csv10_lightning_log",
        "kdlight fit + CSVLogger(10), Lightning's own self.log path (no fast_log)",
    )
    tp_row(
        "kdlight_csv10",
        "fast_log gain: kdlight+CSV(10) vs the same with Lightning's own self.log path",
        "kdlight_csv10_lightning_log",
        f"Lightning's log path {med.get('kdlight_csv10_lightning_log', float('nan')):,.0f}",
    )
    if "kdlight_nolog" in med:
        tp_row(
            "kdlight",
            "kdlight's training-log cost: kdlight defaults vs without training logs",
            "kdlight_nolog",
            f"kdlight no training logs {med['kdlight_nolog']:,.0f}",
        )
    for key, n in (("kdlight_csv50", 50), ("kdlight_csv10", 10)):
        tp_row(
            key,
            f"CSVLogger cost: kdlight+CSV({n}) vs kdlight logger=False",
            "kdlight",
            f"kdlight logger=False {med['kdlight']:,.0f}",
        )
    if "kdlight_bf16" in med:
        tp_row(
            "kdlight_bf16",
            "bf16-mixed vs 32-true, kdlight fit (logger=False)",
            "kdlight",
            f"kdlight 32-true {med['kdlight']:,.0f}",
        )
        tp_row("plain_bf16", "bf16 autocast vs fp32, plain loop", "plain", f"plain fp32 {med['plain']:,.0f}")
    return found


def notes(cfg) -> list[str]:
    skipped = TORCHDISTILL if torchdistill_contender(cfg).skipped else ()
    per = "; ".join(
        f"{wl.name}: median of {wl.repeats} fits per variant, each 1 warm-up + {wl.epochs} timed epoch(s), "
        f"variants {', '.join(v for v in VARIANTS if v in wl.variants and v not in skipped)}"
        for wl in cfg.workloads.values()
    )
    return [
        f"Section 1: {per}. Fits interleaved; Trainer logger=False (unless CSVLogger), no checkpointing/"
        "progress bar/summary, num_sanity_val_steps=0, limit_val_batches=0. Baseline: a hand-written loop over "
        "the training tensors on the device (one randperm per epoch, batches by indexing); 'DataLoader' loop: the "
        "same over the data module's train_dataloader, with the same models and objective. "
        "'without training logs' = DistillationModule subclass whose record_training does nothing (no "
        "train loss/acc logs, and so no finite check). "
        f"Clock: {'process CPU time (KDLIGHT_BENCH_CLOCK=cpu)' if CLOCK == 'cpu' else 'wall time'}.",
        torchdistill_note(cfg),
    ]


def torchdistill_note(cfg) -> str:
    td = torchdistill_contender(cfg)
    if td.skipped:
        return td.skipped + "."
    return (
        f"torchdistill: {td.where}; the same teacher (eval, frozen), student, training tensors and Adam(3e-3), "
        "its DistillationBox built from a YAML train config (RandomSampler over an in-memory TensorDataset, batch "
        "size as above, WeightedSumLoss of KDLoss(T=4, alpha=0.1) = 0.1 CE + 0.9 KD); 'its example's train loop' = "
        "train_one_epoch of torchdistill's examples/torchvision/image_classification.py (MetricLogger, loss.item(), "
        "NaN check), 'box calls only' = forward_process + post_forward_process per batch."
    )
