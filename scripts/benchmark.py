"""Benchmark kdlight against baselines measured in the same run; print one table of ratios.

Sections (every figure is a ratio against a baseline timed or measured in this same run):

1. ``fit`` throughput (training samples/s over N epochs after one warm-up epoch) of
   ``kdlight.DistillationModule`` against a hand-written PyTorch loop doing the same work: the
   digits CNN2d teacher ([32, 64], hidden 128, frozen, eval, no grad), an MLP student, the same
   ``DigitsDataModule`` loader and batch size, ``0.1 * CE + 0.9 * kd_loss(T=4)``, Adam(lr=3e-3).
   Extra rows take the work apart: a bare LightningModule with the same maths (Lightning's own
   cost), kdlight with ``check_finite=False`` (the per-step host sync), kdlight without its
   per-step ``self.log`` / train-metric updates (a subclass made here, kdlight is not changed),
   and kdlight with a ``CSVLogger`` (what logging to files costs).
2. Share of ``fit`` wall time taken by ``ExplanationAgreement`` at the settings of
   ``configs/digits/kd.yaml`` (integrated_gradients + saliency, every 5 epochs, 128 probes, 20
   epochs, validation on, CSVLogger, ModelCheckpoint), the same without figures and faithfulness,
   and at ``every_n_epochs=1``; plus where the callback's time goes (attribution, chance level,
   faithfulness, artifacts, surrogate).
3. Peak memory of integrated gradients (``kdlight.explain.attribute``) as ``n_steps`` grows, with
   ``internal_batch_size=64`` and with ``None`` (all steps in one forward): CUDA
   ``max_memory_allocated``; on CPU the peak RSS growth (VmHWM after reset, or ru_maxrss) in a
   fresh subprocess per setting.
4. ``--device cuda`` only: bf16-mixed vs 32-true throughput of the same kdlight fit.

Run ``python scripts/benchmark.py`` (about 3.5 minutes on 2 idle CPU cores, longer when they are
busy; about 4.5 on an H100 machine with ``--device cuda``), ``--quick`` (about 1-1.5 minutes), ``--out table.md`` to also write
the table to a file. Results and their reading: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# environment


def quiet() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import lightning  # noqa: F401  (creates its loggers, so their levels can be set)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: str) -> str:
    import lightning

    parts = [
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores visible)",
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        f"lightning {lightning.__version__}",
        f"python {platform.python_version()}",
    ]
    try:
        import captum

        parts.append(f"captum {captum.__version__}")
    except ImportError:
        pass
    if device == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


# --------------------------------------------------------------------------------------------
# shared models / data


TEACHER_ARGS = dict(in_channels=1, num_classes=10, channels=[32, 64], hidden=128)


def build_models(student_hidden: list[int]):
    from kdlight.models import CNN2d, MLP

    torch.manual_seed(0)
    teacher = CNN2d(**TEACHER_ARGS)  # random weights: the cost of a step does not depend on them
    student = MLP(in_features=64, num_classes=10, hidden=list(student_hidden))
    return teacher, student


def datamodule(batch_size: int):
    from kdlight.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=batch_size, seed=0)
    dm.setup("fit")
    return dm


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


# --------------------------------------------------------------------------------------------
# section 1: throughput


def epoch_timer(device: str):
    import lightning as L

    class EpochTimer(L.Callback):
        """Time stamps at every train-epoch start and at the end of training."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def _stamp(self) -> None:
            sync(device)
            self.stamps.append(time.perf_counter())

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._stamp()

        def on_train_end(self, trainer, pl_module) -> None:
            self._stamp()

    return EpochTimer()


def samples_per_s(stamps: list[float], n_train: int) -> float:
    """Throughput over every epoch but the first (warm-up): stamps[1] .. stamps[-1]."""
    timed_epochs = len(stamps) - 2
    return n_train * timed_epochs / (stamps[-1] - stamps[1])


def plain_loop(cfg, epochs: int, precision: str = "32-true") -> float:
    """The hand-written baseline: same models, loader, objective and optimizer as kdlight."""
    from kdlight.functional import kd_loss

    device = cfg.device
    teacher, student = build_models(cfg.student_hidden)
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    optimizer = adam(student.parameters())
    dm = datamodule(cfg.batch_size)
    loader = dm.train_dataloader()
    n_train = len(loader.dataset)
    amp = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    stamps = []
    for _ in range(epochs):
        sync(device)
        stamps.append(time.perf_counter())
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with amp:
                with torch.no_grad():
                    t_logits = teacher(x)
                s_logits = student(x)
                loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    sync(device)
    stamps.append(time.perf_counter())
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
            x, y = batch
            with torch.no_grad():
                t_logits = self.teacher(x)
            s_logits = self.student(x)
            return 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)

        def configure_optimizers(self):
            return adam(self.student.parameters())

    return BareKD


def trimmed_module_cls(log_losses: bool, train_metrics: bool):
    """kdlight's DistillationModule with parts of its training_step switched off (a subclass made
    here to measure what they cost; kdlight itself is not changed)."""
    from kdlight import DistillationModule
    from kdlight.errors import check_finite_loss
    from kdlight.step import total_loss

    class TrimmedDistillation(DistillationModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            step, terms = self.distill_step(x, y)
            loss = total_loss(terms)
            if self.check_finite:
                check_finite_loss({t.name: t.value for t in terms}, self.current_epoch, self.global_step)
            if log_losses:
                for term in terms:
                    self.log(f"train/loss_{term.name}", term.value.detach(), on_step=True, on_epoch=True)
                self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True)
            if train_metrics:
                self.train_metrics.update(step.student_logits.detach(), y)
                self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
            return loss

    return TrimmedDistillation


def kd_module(cfg, cls=None, **kwargs):
    from kdlight import DistillationModule
    from kdlight.objectives import KD

    cls = cls or DistillationModule
    teacher, student = build_models(cfg.student_hidden)
    return cls(teacher, student, objective=KD(temperature=4.0, alpha=0.9), optimizer=adam, **kwargs)


def on_device(module, device: str):
    """Work-around for a kdlight bug on CUDA: Lightning calls ``setup`` before it moves the module
    (``self.device`` already reads cuda), so ``DistillationModule.setup`` sends its shape probe to
    cuda while the weights are still on the CPU and fails. Moving the module first avoids it."""
    return module.to(device) if device == "cuda" else module


def lightning_fit(cfg, module, epochs: int, logger=False, precision: str = "32-true", log_every_n_steps: int = 50) -> float:
    import lightning as L

    timer = epoch_timer(cfg.device)
    with tempfile.TemporaryDirectory() as tmp:
        if logger == "csv":
            from lightning.pytorch.loggers import CSVLogger

            logger = CSVLogger(tmp, name="", version="")
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if cfg.device == "cuda" else "cpu",
            devices=1,
            logger=logger,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            precision=precision,
            log_every_n_steps=log_every_n_steps,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        dm = datamodule(cfg.batch_size)
        trainer.fit(on_device(module, cfg.device), datamodule=dm)
        n_train = len(dm.train_dataloader().dataset)
    return samples_per_s(timer.stamps, n_train)


def throughput_variants(cfg) -> dict[str, callable]:
    epochs = cfg.epochs + 1  # + the warm-up epoch
    variants = {
        "plain": lambda: plain_loop(cfg, epochs),
        "bare_lightning": lambda: lightning_fit(cfg, bare_module_cls()(*build_models(cfg.student_hidden)), epochs),
        "kdlight": lambda: lightning_fit(cfg, kd_module(cfg), epochs),
        "kdlight_nofinite": lambda: lightning_fit(cfg, kd_module(cfg, check_finite=False), epochs),
        "kdlight_nometrics": lambda: lightning_fit(cfg, kd_module(cfg, cls=trimmed_module_cls(True, False)), epochs),
        "kdlight_nolog": lambda: lightning_fit(cfg, kd_module(cfg, cls=trimmed_module_cls(False, False)), epochs),
        "kdlight_nolog_nofinite": lambda: lightning_fit(
            cfg, kd_module(cfg, cls=trimmed_module_cls(False, False), check_finite=False), epochs
        ),
        "kdlight_csv50": lambda: lightning_fit(cfg, kd_module(cfg), epochs, logger="csv", log_every_n_steps=50),
        "kdlight_csv10": lambda: lightning_fit(cfg, kd_module(cfg), epochs, logger="csv", log_every_n_steps=10),
    }
    if cfg.quick:
        keep = ("plain", "bare_lightning", "kdlight", "kdlight_nofinite", "kdlight_nolog", "kdlight_csv50")
        variants = {k: v for k, v in variants.items() if k in keep}
    if cfg.device == "cuda":
        variants["kdlight_bf16"] = lambda: lightning_fit(cfg, kd_module(cfg), epochs, precision="bf16-mixed")
        variants["plain_bf16"] = lambda: plain_loop(cfg, epochs, precision="bf16-mixed")
    return variants


def run_throughput(cfg) -> dict[str, list[float]]:
    variants = throughput_variants(cfg)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():  # one untimed pass of each (imports, caches, CUDA init)
        if cfg.device == "cuda" or name in ("plain", "kdlight"):
            fn()
    for r in range(cfg.repeats):  # interleaved, so drifting background load hits all alike
        for name, fn in variants.items():
            results[name].append(fn())
        log(f"  throughput repeat {r + 1}/{cfg.repeats}: "
            + ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items()))
    return results


# --------------------------------------------------------------------------------------------
# section 2: explanation callback share of fit


class CallbackProfiler:
    """Wall time of the callback's parts, by wrapping its bound methods (kdlight is unchanged)."""

    PARTS = ("run", "explain", "chance", "faithfulness", "artifacts", "surrogate")

    def __init__(self, callback, device: str) -> None:
        import kdlight.explain.callback as cb_module

        self.totals = {p: 0.0 for p in self.PARTS}
        self.calls = 0
        self._in_chance = False
        self.device = device
        self._module = cb_module
        self._orig_surrogate = cb_module.fit_surrogate
        callback.run = self._wrap(callback.run, "run")
        callback._explain = self._wrap(callback._explain, "explain")
        callback._chance_level = self._wrap(callback._chance_level, "chance")
        callback._faithfulness = self._wrap(callback._faithfulness, "faithfulness")
        callback._log_artifacts = self._wrap(callback._log_artifacts, "artifacts")
        cb_module.fit_surrogate = self._wrap(self._orig_surrogate, "surrogate")

    def restore(self) -> None:
        self._module.fit_surrogate = self._orig_surrogate

    def _wrap(self, fn, part):
        def timed(*args, **kwargs):
            if part == "explain" and self._in_chance:
                return fn(*args, **kwargs)  # counted in "chance"
            if part == "chance":
                self._in_chance = True
            if part == "run":
                self.calls += 1
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.totals[part] += time.perf_counter() - start
                if part == "chance":
                    self._in_chance = False

        return timed


def config_fit(cfg, every_n_epochs: int | None, epochs: int, lean: bool = False) -> tuple[float, dict[str, float] | None]:
    """``fit`` as configs/digits/kd.yaml sets it up (progress bar and model summary off)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from kdlight.explain import ExplanationAgreement

    L.seed_everything(0, verbose=False)
    profiler = None
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [ModelCheckpoint(dirpath=tmp, filename="best", monitor="val/acc", mode="max", save_last=True)]
        if every_n_epochs is not None:
            explain = ExplanationAgreement(
                methods=["integrated_gradients", "saliency"], every_n_epochs=every_n_epochs, num_probes=128,
                **({"log_images": False, "faithfulness": False} if lean else {}),
            )
            profiler = CallbackProfiler(explain, cfg.device)
            callbacks.append(explain)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if cfg.device == "cuda" else "cpu",
            devices=1,
            deterministic=True,
            log_every_n_steps=10,
            default_root_dir=tmp,
            logger=CSVLogger(tmp, name="", version=""),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = kd_module(cfg)
        dm = datamodule(64)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            sync(cfg.device)
            start = time.perf_counter()
            trainer.fit(on_device(module, cfg.device), datamodule=dm)
            sync(cfg.device)
            wall = time.perf_counter() - start
        finally:
            torch.use_deterministic_algorithms(deterministic)  # Lightning leaves it switched on
            if profiler is not None:
                profiler.restore()
    parts = None
    if profiler is not None:
        parts = dict(profiler.totals)
        parts["calls"] = profiler.calls
    return wall, parts


def run_callback_share(cfg) -> dict:
    # (name, every_n_epochs, epochs): every_n_epochs=1 is paired with its own baseline over fewer
    # epochs, to keep the run short; its share is per epoch, so the epoch count barely matters
    settings = {
        "without": (None, cfg.config_epochs, False),
        "every5": (5, cfg.config_epochs, False),
        "every5_lean": (5, cfg.config_epochs, True),  # log_images=False, faithfulness=False
        "without_short": (None, cfg.every1_epochs, False),
        "every1": (1, cfg.every1_epochs, False),
    }
    if cfg.quick:
        del settings["every5_lean"]
    walls: dict[str, list[float]] = {k: [] for k in settings}
    parts: dict[str, list[dict]] = {k: [] for k in settings}
    config_fit(cfg, 1, 1)  # untimed warm-up: captum/matplotlib imports, first figure, caches
    for r in range(cfg.repeats_config):
        for name, (every, epochs, lean) in settings.items():
            wall, p = config_fit(cfg, every, epochs, lean)
            walls[name].append(wall)
            if p is not None:
                parts[name].append(p)
        log(f"  callback repeat {r + 1}/{cfg.repeats_config}: "
            + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in walls.items()))
    return {"walls": walls, "parts": parts}


# --------------------------------------------------------------------------------------------
# section 3: integrated-gradients peak memory


IG_MODEL = dict(in_channels=3, num_classes=10, channels=[16, 32], hidden=128)
IG_INPUT = (3, 32, 32)
IG_PROBES = 128


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def ig_measure(device: str, n_steps: int, internal_batch_size: int | None) -> dict:
    """One IG attribution of 128 random 3x32x32 probes; returns peak memory growth and time."""
    from kdlight.explain import AttributionConfig, attribute
    from kdlight.models import CNN2d

    torch.manual_seed(0)
    model = CNN2d(**IG_MODEL).to(device).eval()
    x = torch.rand(IG_PROBES, *IG_INPUT, device=device)
    target = torch.randint(0, 10, (IG_PROBES,), device=device)
    # warm-up on two probes: imports captum, initialises kernels and the allocator
    attribute(model, x[:2], target[:2], AttributionConfig(method="integrated_gradients", n_steps=2))
    config = AttributionConfig(method="integrated_gradients", n_steps=n_steps, internal_batch_size=internal_batch_size)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        attribute(model, x, target, config)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated"
    else:
        if _reset_peak_rss():
            base_kb = _status_kb("VmRSS")
            start = time.perf_counter()
            attribute(model, x, target, config)
            seconds = time.perf_counter() - start
            peak_kb = _status_kb("VmHWM")
            how = "VmHWM after reset - VmRSS"
        else:
            base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            attribute(model, x, target, config)
            seconds = time.perf_counter() - start
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            how = "ru_maxrss growth"
        peak = (peak_kb - base_kb) * 1024
    return {"peak_bytes": int(peak), "seconds": seconds, "how": how}


def ig_in_subprocess(cfg, n_steps: int, ibs: int | None) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--_ig-child",
        json.dumps({"n_steps": n_steps, "ibs": ibs, "device": cfg.device, "threads": cfg.threads}),
    ]
    env = dict(os.environ)
    if cfg.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(cfg.malloc_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"IG child failed ({n_steps}, {ibs}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def run_ig_memory(cfg) -> dict:
    out: dict[str, dict[int, dict | str]] = {"64": {}, "None": {}}
    if cfg.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        budget = 0.6 * free
    else:
        budget = 0.4 * mem_available_bytes()
    for key, ibs in (("64", 64), ("None", None)):
        first = None
        for n in cfg.ig_steps:
            if key == "None" and n > cfg.ig_none_max:
                out[key][n] = f"not run (--quick runs None up to n_steps={cfg.ig_none_max})"
                continue
            if first is not None and key == "None":
                predicted = first["peak_bytes"] * n / cfg.ig_steps[0]
                if predicted > budget:
                    out[key][n] = f"skipped (~{predicted / 2**30:.0f} GiB predicted)"
                    continue
            runs = []
            for _ in range(cfg.ig_repeats):
                if cfg.device == "cuda":
                    runs.append(ig_measure("cuda", n, ibs))
                else:
                    runs.append(ig_in_subprocess(cfg, n, ibs))
            result = {
                "peak_bytes": median([r["peak_bytes"] for r in runs]),
                "seconds": median([r["seconds"] for r in runs]),
                "how": runs[0]["how"],
                "runs": len(runs),
            }
            out[key][n] = result
            first = first or result
            log(f"  IG n_steps={n} internal_batch_size={ibs}: peak {result['peak_bytes'] / 2**20:.1f} MiB, "
                f"{result['seconds']:.2f} s")
    return out


# --------------------------------------------------------------------------------------------
# table


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}"


def build_table(cfg, tp: dict | None, cb: dict | None, ig: dict | None) -> list[str]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    # (id, measurement, value, baseline, ratio, goal / verdict)
    if tp:
        med = {k: median(v) for k, v in tp.items()}
        base = med["plain"]
        unit = "train samples/s"

        def tp_row(key, label, baseline_key="plain", baseline_label=None, goal=""):
            if key not in med:
                return
            b = med[baseline_key]
            rows.append((
                "1",
                label,
                f"{med[key]:,.0f} {unit} ({spread(tp[key])})",
                baseline_label or f"plain loop {b:,.0f}",
                fmt_ratio(med[key] / b),
                goal,
            ))

        rows.append(("1", "plain PyTorch loop (baseline)", f"{base:,.0f} {unit} ({spread(tp['plain'])})", "itself", "1.00", ""))
        tp_row("bare_lightning", "bare LightningModule, same maths, no log/metrics")
        k = med["kdlight"] / base
        tp_row("kdlight", "kdlight fit, logger=False (defaults)", goal=f">= 0.95: {'met' if k >= 0.95 else 'NOT met'}")
        tp_row("kdlight_nofinite", "kdlight fit, check_finite=False")
        tp_row("kdlight_nometrics", "kdlight fit, no train acc/F1 metrics (loss self.log kept)")
        tp_row("kdlight_nolog", "kdlight fit, no per-step self.log and no train metrics")
        tp_row("kdlight_nolog_nofinite", "kdlight fit, no self.log/metrics, check_finite=False")
        tp_row("kdlight_csv50", "kdlight fit + CSVLogger (log_every_n_steps=50)")
        tp_row("kdlight_csv10", "kdlight fit + CSVLogger (log_every_n_steps=10, kd.yaml)")
        tp_row("kdlight_csv50", "CSVLogger cost: kdlight+CSV(50) vs kdlight logger=False", "kdlight",
               f"kdlight logger=False {med['kdlight']:,.0f}")
        if "kdlight_bf16" in med:
            tp_row("kdlight_bf16", "bf16-mixed vs 32-true, kdlight fit (logger=False)", "kdlight",
                   f"kdlight 32-true {med['kdlight']:,.0f}")
            tp_row("plain_bf16", "bf16 autocast vs fp32, plain loop", "plain", f"plain fp32 {base:,.0f}")
    if cb:
        walls = {k: median(v) for k, v in cb["walls"].items()}
        shown: set[str] = set()
        for key, base_key, epochs, label, goal in (
            ("every5", "without", cfg.config_epochs, "every_n_epochs=5 (kd.yaml)", 0.10),
            ("every5_lean", "without", cfg.config_epochs, "every_n_epochs=5, log_images=False, faithfulness=False", None),
            ("every1", "without_short", cfg.every1_epochs, "every_n_epochs=1", None),
        ):
            if key not in walls:
                continue
            w0 = walls[base_key]
            if base_key not in shown:
                shown.add(base_key)
                rows.append(("2", f"fit {epochs} epochs, kd.yaml trainer, no callback (baseline)",
                             f"{w0:.2f} s ({spread(cb['walls'][base_key])})", "itself", "", ""))
            share = (walls[key] - w0) / walls[key]
            calls = cb["parts"][key][0]["calls"] if cb["parts"][key] else 0
            verdict = "" if goal is None else f"<= 10 %: {'met' if share <= goal else 'NOT met'}"
            rows.append((
                "2",
                f"fit {epochs} epochs + ExplanationAgreement {label}: callback share = (with - without)/with",
                f"{walls[key]:.2f} s ({spread(cb['walls'][key])}), {calls} callback runs",
                f"without {w0:.2f} s",
                f"{100 * share:.1f} %",
                verdict,
            ))
        parts = cb["parts"]["every5"] + cb["parts"]["every1"]
        if parts:
            total = sum(p["run"] for p in parts)
            calls = sum(p["calls"] for p in parts)
            rows.append(("2", "callback time per run (mean over all timed runs)", f"{total / calls * 1000:.0f} ms",
                         "", "", ""))
            named = {
                "explain": "attribution maps (IG + saliency, teacher + student)",
                "chance": "chance level (re-init student, once per fit per method)",
                "faithfulness": "faithfulness (deletion/insertion AUC, infidelity)",
                "artifacts": "artifacts (per-class CSV + PNG figure)",
                "surrogate": "decision-tree surrogate",
            }
            accounted = 0.0
            for part, label in named.items():
                t = sum(p[part] for p in parts)
                accounted += t
                rows.append(("2", f"  part: {label}", f"{t / calls * 1000:.0f} ms/run", "callback run time",
                             f"{100 * t / total:.0f} %", ""))
            rows.append(("2", "  part: rest (probe batch, metrics, logging)", f"{(total - accounted) / calls * 1000:.0f} ms/run",
                         "callback run time", f"{100 * (total - accounted) / total:.0f} %", ""))
    if ig:
        for key, label in (("64", "internal_batch_size=64"), ("None", "internal_batch_size=None")):
            first = next((v for v in ig[key].values() if isinstance(v, dict)), None)
            for n, res in ig[key].items():
                if isinstance(res, str):
                    rows.append(("3", f"IG peak memory, {label}, n_steps={n}", res, "", "", ""))
                    continue
                ratio = res["peak_bytes"] / max(first["peak_bytes"], 1)
                goal = ""
                if key == "64" and n == max(k for k, v in ig[key].items() if isinstance(v, dict)) and n != cfg.ig_steps[0]:
                    goal = f"flat (<= 1.5x for {n // cfg.ig_steps[0]}x steps): {'met' if ratio <= 1.5 else 'NOT met'}"
                rows.append((
                    "3",
                    f"IG peak memory, {label}, n_steps={n}",
                    f"{res['peak_bytes'] / 2**20:.1f} MiB, {res['seconds']:.2f} s",
                    f"n_steps={cfg.ig_steps[0]}: {first['peak_bytes'] / 2**20:.1f} MiB",
                    f"{ratio:.2f} (time {res['seconds'] / first['seconds']:.1f}x)",
                    goal,
                ))
        n0 = cfg.ig_steps[0]
        if isinstance(ig["64"].get(n0), dict) and isinstance(ig["None"].get(n0), dict):
            rows.append(("3", "IG batched vs all-at-once, n_steps=" + str(cfg.ig_steps[0]),
                         f"{ig['64'][n0]['peak_bytes'] / 2**20:.1f} MiB",
                         f"None: {ig['None'][n0]['peak_bytes'] / 2**20:.1f} MiB",
                         f"{ig['64'][n0]['peak_bytes'] / max(ig['None'][n0]['peak_bytes'], 1):.2f}", ""))
    header = ["sec", "measurement", "value (median, [min-max])", "baseline (same run)", "ratio", "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="about 1-1.5 minutes: fewer epochs/variants, n_steps up to 64 (None up to 32 on cpu)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on cpu, to keep shared cores from adding noise; torch's default on cuda)")
    p.add_argument("--sections", default="1,2,3", help="comma-separated subset of 1,2,3 (4 rides with 1 on cuda)")
    p.add_argument("--student-hidden", type=int, nargs="+", default=[32], help="MLP student hidden widths (kd.yaml: 32)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per throughput fit (after 1 warm-up)")
    p.add_argument("--repeats", type=int, default=None, help="throughput fits per variant (median)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="cpu section 3: set glibc MALLOC_MMAP_THRESHOLD_ in the children (e.g. 131072), so freed "
                        "tensor memory goes back to the OS at once and RSS tracks live tensors")
    p.add_argument("--_ig-child", dest="ig_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    # CUDA epochs are ~60 ms of host-bound work each: time more of them to beat the noise
    args.epochs = args.epochs or (3 if q else (15 if args.device == "cuda" else 5))
    args.repeats = args.repeats or (3 if q else 5)
    args.repeats_config = 3
    args.config_epochs = 5 if q else 20
    args.every1_epochs = 2 if q else 5
    args.ig_steps = [8, 32, 64] if q else [8, 32, 128, 512]
    args.ig_none_max = 32 if (q and args.device == "cpu") else 10**9
    args.ig_repeats = 1 if args.device == "cpu" else 3
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    return args


def main(argv=None) -> None:
    cfg = parse_args(argv)
    quiet()
    torch.set_num_threads(cfg.threads)
    if cfg.ig_child:
        spec = json.loads(cfg.ig_child)
        torch.set_num_threads(spec["threads"])
        print(json.dumps(ig_measure(spec["device"], spec["n_steps"], spec["ibs"])))
        return
    if cfg.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    sections = {s.strip() for s in cfg.sections.split(",")}
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = loadavg()
    print(f"load average at start: {load_start}")
    print(f"machine: {machine_line(cfg.device)}")
    print(f"command: {command.strip()}")
    t0 = time.perf_counter()
    results: dict[str, object] = {"1": None, "2": None, "3": None}
    failures: list[str] = []
    for key, title, fn in (
        ("1", "fit throughput", run_throughput),
        ("2", "explanation callback share", run_callback_share),
        ("3", "integrated-gradients peak memory", run_ig_memory),
    ):
        if key not in sections:
            continue
        log(f"section {key}: {title}")
        try:
            results[key] = fn(cfg)
        except Exception as exc:  # report it in the table, keep the other sections
            import traceback

            traceback.print_exc()
            failures.append(f"| {key} | section failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} |  |  |  |  |")
    elapsed = time.perf_counter() - t0
    table = build_table(cfg, results["1"], results["2"], results["3"]) + failures
    notes = [
        "",
        f"Setup: device {cfg.device}, {cfg.threads} torch thread(s), digits batch {cfg.batch_size}; teacher CNN2d"
        f"[32,64] hidden 128 (random init), student MLP(64, hidden={cfg.student_hidden}); KD T=4 alpha=0.9, Adam 3e-3.",
    ]
    if "1" in sections:
        notes.append(f"Section 1: median of {cfg.repeats} fits per variant (interleaved), each 1 warm-up + {cfg.epochs} "
                     "timed epochs; Trainer logger=False (unless CSVLogger), no checkpointing/progress bar/summary, "
                     "num_sanity_val_steps=0, limit_val_batches=0.")
    if "2" in sections:
        notes.append(f"Section 2: median of {cfg.repeats_config} fits per setting (interleaved; kd.yaml trainer: CSVLogger "
                     "log_every_n_steps=10, ModelCheckpoint on val/acc, deterministic, sanity check, validation every epoch).")
    if "3" in sections:
        how = ("CUDA max_memory_allocated, median of 3" if cfg.device == "cuda"
               else "peak RSS growth in a fresh subprocess per setting, one run each")
        if cfg.malloc_mmap_threshold:
            how += f", MALLOC_MMAP_THRESHOLD_={cfg.malloc_mmap_threshold}"
        notes.append(f"Section 3: IG on {IG_PROBES} random {'x'.join(map(str, IG_INPUT))} probes, CNN2d{IG_MODEL['channels']} "
                     f"hidden {IG_MODEL['hidden']}; {how}.")
    notes.append(f"load average at end: {loadavg()}; benchmark wall time {elapsed:.0f} s.")
    text = "\n".join(table + notes)
    print()
    print(text)
    if cfg.out:
        header = [
            f"load average at start: {load_start}; machine: {machine_line(cfg.device)}",
            f"command: `{command.strip()}`",
            "",
        ]
        cfg.out.write_text("\n".join(header) + "\n" + text.lstrip("\n") + "\n")


if __name__ == "__main__":
    main()
