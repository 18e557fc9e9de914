"""Benchmark kdlight against baselines measured in the same run; print one table of ratios.

Sections (every figure is a ratio against a baseline timed or measured in this same run):

1. ``fit`` throughput (training samples/s over N epochs after one warm-up epoch) of
   ``kdlight.DistillationModule`` against a hand-written PyTorch loop doing the same work: same
   frozen teacher (eval, no grad), student, loader object kind and batch size,
   ``0.1 * CE + 0.9 * kd_loss(T=4)``, Adam(lr=3e-3). Two workloads (``--workload``):
   ``digits`` (sklearn 8x8 digits from ``DigitsDataModule``, 1167 training images, CNN2d
   [32, 64] hidden 128 teacher, MLP student, batch 64) and ``cifar`` (CIFAR-shaped synthetic
   data: ``--cifar-train-size`` random 3x32x32 images with 100 classes from an ``ArrayDataModule``
   made here, resnet20 teacher, resnet8 student = ``CifarResNet(8, [16, 16, 32, 64])``, batch
   64; about 2 s per 512-sample epoch on one core, the teacher ~45 % of a step; a resnet8x4
   teacher would take ~3.5 s per epoch). Extra rows take the work apart: a bare LightningModule with the same maths (Lightning's
   own cost), kdlight with ``check_finite=False``, kdlight with its ``record_training`` replaced
   by a no-op (a subclass made here; kdlight's own training-log cost), and kdlight with a
   ``CSVLogger`` at ``log_every_n_steps`` 50 and 10 (what logging to files costs); the cifar
   workload (compute-bound steps) and ``--quick`` skip the ``check_finite`` and CSV(50) rows
   (``--all-variants`` runs them).
2. Share of ``fit`` wall time taken by ``ExplanationAgreement`` at the settings shipped in
   ``configs/digits/kd.yaml`` (read from the file: the callback's init_args, the trainer's
   max_epochs / log_every_n_steps / deterministic, CSVLogger, ModelCheckpoint, the model, data
   and optimizer), the same with ``log_images=False``, and at ``every_n_epochs=1`` (against its
   own shorter baseline), with ``teacher_in_background=False`` and with a warm ``teacher_cache_dir``
   (a later student of the teacher); plus where the callback's time on the training thread goes
   (attribution, chance level, faithfulness, surrogate per run; per-class tables and figures once
   per fit) and how long the background job for the teacher's side took.
3. Peak memory of integrated gradients (``kdlight.explain.attribute``) as ``n_steps`` grows, with
   ``internal_batch_size=64`` and with ``None`` (all steps in one forward): CUDA
   ``max_memory_allocated``; on CPU the peak RSS growth (VmHWM after reset, or ru_maxrss) in a
   fresh subprocess per setting.
4. ``--device cuda`` only (rides with section 1): bf16-mixed vs 32-true throughput of the same
   kdlight fit, and bf16 autocast vs fp32 for the plain loop.
5. Teacher cache: epoch wall time (epochs 2..N; the first epoch fills the cache) of
   student-only training (``kdlight.ClassifierModule``, CE only), kdlight distillation without
   a cache, and with ``teacher_cache="memory"``, for each selected workload, with the Trainer
   settings of section 1.

Run ``python scripts/benchmark.py`` (sections 1,2,3,5 with ``--workload both``; about 8
minutes on 2 CPU cores, longer when they are busy), ``--quick`` (about 1-1.5 minutes),
``--sections 1 --workload cifar`` for one section and workload, ``--out table.md`` to also write
the table to a file. Results and their reading: BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
KD_YAML = REPO / "configs" / "digits" / "kd.yaml"


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
# workloads: models and data (sections 1 and 5)


DIGITS_TEACHER = dict(in_channels=1, num_classes=10, channels=[32, 64], hidden=128)
CIFAR_CLASSES = 100
CIFAR_STUDENT = dict(depth=8, widths=[16, 16, 32, 64])  # "resnet8": resnet20's widths, one block per stage
CIFAR_EVAL_SIZE = 128  # val/test samples of the synthetic data: 25 % of the 512 training samples (CIFAR: 20 %)


@functools.cache
def synthetic_cifar_cls():
    """An in-memory kdlight data module over random CIFAR-shaped tensors (made here, so it has
    everything kdlight's own data modules have: ``example_input``, ``train_inputs``,
    ``return_index`` for the teacher cache, the shuffled ``EpochShuffleSampler`` loader)."""
    from kdlight.data import ArrayDataModule

    class SyntheticCIFARDataModule(ArrayDataModule):
        """``train_size`` standard-normal 3x32x32 images (normalised-CIFAR scale), 100 classes."""

        def __init__(self, batch_size: int = 64, train_size: int = 512, seed: int = 0) -> None:
            super().__init__(batch_size=batch_size, seed=seed)
            self.train_size = train_size
            self.num_classes = CIFAR_CLASSES
            self.input_shape = (3, 32, 32)
            self.class_names = [str(c) for c in range(CIFAR_CLASSES)]

        def _load_splits(self):
            g = torch.Generator().manual_seed(self.seed)

            def make(n):
                return torch.randn(n, *self.input_shape, generator=g), torch.randint(0, CIFAR_CLASSES, (n,), generator=g)

            return {"train": make(self.train_size), "val": make(CIFAR_EVAL_SIZE), "test": make(CIFAR_EVAL_SIZE)}

    return SyntheticCIFARDataModule


@dataclass
class Workload:
    """One model/data pair; every variant of sections 1 and 5 builds its models and loader here."""

    name: str  # "digits" or "cifar"
    batch_size: int
    epochs: int  # timed epochs per fit, after one warm-up epoch
    repeats: int
    variants: tuple[str, ...] = ()  # section-1 variants run for this workload
    student_hidden: list[int] = field(default_factory=lambda: [32])
    train_size: int = 512  # cifar only

    def models(self):
        """(teacher, student), random init from seed 0: the cost of a step does not depend on the weights."""
        torch.manual_seed(0)
        if self.name == "digits":
            from kdlight.models import CNN2d, MLP

            return CNN2d(**DIGITS_TEACHER), MLP(in_features=64, num_classes=10, hidden=list(self.student_hidden))
        from kdlight.models import CifarResNet, ResNet20

        return ResNet20(num_classes=CIFAR_CLASSES), CifarResNet(num_classes=CIFAR_CLASSES, **CIFAR_STUDENT)

    def datamodule(self):
        if self.name == "digits":
            from kdlight.data import DigitsDataModule

            dm = DigitsDataModule(batch_size=self.batch_size, seed=0)
        else:
            dm = synthetic_cifar_cls()(batch_size=self.batch_size, train_size=self.train_size, seed=0)
        dm.setup("fit")
        return dm

    def describe(self) -> str:
        if self.name == "digits":
            return (f"digits: DigitsDataModule (1167 train images 1x8x8, 10 classes), batch {self.batch_size}; teacher "
                    f"CNN2d[32,64] hidden 128, student MLP(64, hidden={self.student_hidden})")
        return (f"cifar: synthetic N(0,1) 3x32x32 tensors, {self.train_size} train samples, 100 classes (ArrayDataModule "
                f"subclass, same loader kind as digits), batch {self.batch_size}; teacher resnet20 (0.28M params), "
                "student resnet8 = CifarResNet(8, [16,16,32,64]) (0.08M)")


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


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


def seconds_per_epoch(stamps: list[float]) -> float:
    """Mean wall time of epochs 2..N (the first one warms up / fills the teacher cache)."""
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


# --------------------------------------------------------------------------------------------
# section 1: throughput


def plain_loop(cfg, wl: Workload, epochs: int, precision: str = "32-true") -> float:
    """The hand-written baseline: same models, loader, objective and optimizer as kdlight."""
    from kdlight.functional import kd_loss

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


def no_training_logs_cls():
    """kdlight's DistillationModule with ``SupervisedBase.record_training`` as a no-op (a subclass
    made here; kdlight is not changed): no train loss/weight logs, no train acc/F1 confusion
    matrix, and so also no finite-loss check (that runs on logging steps inside it)."""
    from kdlight import DistillationModule

    class NoTrainingLogs(DistillationModule):
        def record_training(self, *args, **kwargs) -> None:
            return None

    return NoTrainingLogs


def kd_module(wl: Workload, cls=None, **kwargs):
    from kdlight import DistillationModule
    from kdlight.objectives import KD

    cls = cls or DistillationModule
    teacher, student = wl.models()
    kwargs.setdefault("teacher_as_given", True)  # timing only: the teacher's weights do not matter
    return cls(teacher, student, objective=KD(temperature=4.0, alpha=0.9), optimizer=adam, **kwargs)


def classifier_module(wl: Workload):
    from kdlight import ClassifierModule

    _, student = wl.models()
    return ClassifierModule(student, optimizer=adam)


def timed_fit(cfg, wl: Workload, module, epochs: int, logger=False, precision: str = "32-true",
              log_every_n_steps: int = 50, validate: bool = False) -> tuple[list[float], int]:
    """``trainer.fit`` with the section-1 Trainer settings (``validate``: a validation pass every
    epoch, inside the timed epochs); returns the epoch time stamps and the number of training samples."""
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
            limit_val_batches=1.0 if validate else 0,
            precision=precision,
            log_every_n_steps=log_every_n_steps,
            default_root_dir=tmp,
            callbacks=[timer],
        )
        dm = wl.datamodule()
        trainer.fit(module, datamodule=dm)
        n_train = len(dm.train_inputs())
    return timer.stamps, n_train


def lightning_fit(cfg, wl: Workload, module, epochs: int, **kwargs) -> float:
    return samples_per_s(*timed_fit(cfg, wl, module, epochs, **kwargs))


SECTION1_VARIANTS = ("plain", "bare_lightning", "kdlight", "kdlight_nofinite", "kdlight_nolog", "kdlight_csv50",
                     "kdlight_csv10")


def throughput_variants(cfg, wl: Workload) -> dict[str, callable]:
    """name -> fn(epochs) returning train samples/s."""
    variants = {
        "plain": lambda e: plain_loop(cfg, wl, e),
        "bare_lightning": lambda e: lightning_fit(cfg, wl, bare_module_cls()(*wl.models()), e),
        "kdlight": lambda e: lightning_fit(cfg, wl, kd_module(wl), e),
        "kdlight_nofinite": lambda e: lightning_fit(cfg, wl, kd_module(wl, check_finite=False), e),
        "kdlight_nolog": lambda e: lightning_fit(cfg, wl, kd_module(wl, cls=no_training_logs_cls()), e),
        "kdlight_csv50": lambda e: lightning_fit(cfg, wl, kd_module(wl), e, logger="csv", log_every_n_steps=50),
        "kdlight_csv10": lambda e: lightning_fit(cfg, wl, kd_module(wl), e, logger="csv", log_every_n_steps=10),
    }
    variants = {k: v for k, v in variants.items() if k in wl.variants}
    if cfg.device == "cuda":
        variants["kdlight_bf16"] = lambda e: lightning_fit(cfg, wl, kd_module(wl), e, precision="bf16-mixed")
        variants["plain_bf16"] = lambda e: plain_loop(cfg, wl, e, precision="bf16-mixed")
    return variants


_WARMED: set[str] = set()  # sections whose one-off untimed pre-pass has run in this process


def run_throughput(cfg, wl: Workload) -> dict[str, list[float]]:
    variants = throughput_variants(cfg, wl)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():  # one untimed 2-epoch pass (imports, caches, CUDA init)
        if cfg.device == "cuda" or (name in ("plain", "kdlight") and "1" not in _WARMED):
            fn(2)
    _WARMED.add("1")
    for r in range(wl.repeats):  # interleaved, so drifting background load hits all alike
        for name, fn in variants.items():
            results[name].append(fn(wl.epochs + 1))  # + the warm-up epoch
        log(f"  [{wl.name}] throughput repeat {r + 1}/{wl.repeats}: "
            + ", ".join(f"{k}={v[-1]:.0f}" for k, v in results.items()))
    return results


# --------------------------------------------------------------------------------------------
# section 5: teacher cache


def teacher_validation_uncached(module):
    """A cached module whose teacher still runs on every validation batch (the cache's validation
    part switched off, to show what it saves)."""
    module._validation_teacher = lambda x, split, batch_idx: module.teacher(x)
    return module


def run_cache(cfg, wl: Workload) -> dict[str, list[float]]:
    """Seconds per epoch (epochs 2..N) of student-only, uncached and cached distillation."""
    variants = {
        "student": lambda e: timed_fit(cfg, wl, classifier_module(wl), e)[0],
        "uncached": lambda e: timed_fit(cfg, wl, kd_module(wl), e)[0],
        "cached": lambda e: timed_fit(cfg, wl, kd_module(wl, teacher_cache="memory"), e)[0],
        # a whole fit epoch: training plus a validation pass (the cache also keeps the teacher's
        # validation logits); "cached_val_off" switches that part off
        "student_val": lambda e: timed_fit(cfg, wl, classifier_module(wl), e, validate=True)[0],
        "cached_val": lambda e: timed_fit(cfg, wl, kd_module(wl, teacher_cache="memory"), e, validate=True)[0],
        "cached_val_off": lambda e: timed_fit(cfg, wl, teacher_validation_uncached(kd_module(wl, teacher_cache="memory")),
                                              e, validate=True)[0],
    }
    for name, fn in variants.items():  # one untimed 2-epoch pass of each (imports, caches, CUDA init)
        if cfg.device == "cuda" or "5" not in _WARMED:
            fn(2)
    _WARMED.add("5")
    results: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(wl.repeats):
        for name, fn in variants.items():
            results[name].append(seconds_per_epoch(fn(wl.epochs + 1)))
        log(f"  [{wl.name}] cache repeat {r + 1}/{wl.repeats}: "
            + ", ".join(f"{k}={v[-1] * 1000:.0f}ms/epoch" for k, v in results.items()))
    return results


# --------------------------------------------------------------------------------------------
# section 2: explanation callback share of fit


EXPLAIN_CLASS = "kdlight.explain.ExplanationAgreement"


def import_path(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instantiate(spec, tmp: str | None = None):
    """Build ``{class_path, init_args}`` specs (recursively), as LightningCLI does; ``dirpath`` /
    ``save_dir`` arguments are sent to ``tmp``."""
    if isinstance(spec, dict) and "class_path" in spec:
        args = {k: instantiate(v, tmp) for k, v in (spec.get("init_args") or {}).items()}
        if tmp is not None:
            args.update({k: tmp for k in ("dirpath", "save_dir") if k in args})
        return import_path(spec["class_path"])(**args)
    if isinstance(spec, dict):
        return {k: instantiate(v, tmp) for k, v in spec.items()}
    if isinstance(spec, list):
        return [instantiate(v, tmp) for v in spec]
    return spec


@dataclass
class ShippedConfig:
    """What ``configs/digits/kd.yaml`` sets up."""

    seed: int
    max_epochs: int
    log_every_n_steps: int
    deterministic: bool
    logger: object
    callbacks: list  # specs of the trainer callbacks other than ExplanationAgreement
    explain_args: dict
    model: dict
    data: dict

    @classmethod
    def load(cls, path: Path = KD_YAML) -> "ShippedConfig":
        import yaml

        config = yaml.safe_load(path.read_text())
        trainer = config["trainer"]
        callbacks = trainer.get("callbacks") or []
        explain = [c for c in callbacks if c.get("class_path") == EXPLAIN_CLASS]
        if len(explain) != 1:
            raise ValueError(f"{path} has {len(explain)} {EXPLAIN_CLASS} callbacks, expected 1")
        return cls(
            seed=config.get("seed_everything", 0),
            max_epochs=trainer["max_epochs"],
            log_every_n_steps=trainer.get("log_every_n_steps", 50),
            deterministic=bool(trainer.get("deterministic", False)),
            logger=trainer.get("logger", True),
            callbacks=[c for c in callbacks if c is not explain[0]],
            explain_args=dict(explain[0].get("init_args") or {}),
            model=config["model"],
            data=config["data"],
        )

    def module(self):
        """The model of the config, with a random-init teacher (``teacher_checkpoint`` dropped)."""
        args = dict(self.model.get("init_args") or {})
        args.pop("teacher_checkpoint", None)
        for key in ("optimizer", "lr_scheduler"):  # LightningCLI hands these over as callables
            spec = args.get(key)
            if isinstance(spec, dict):
                args[key] = functools.partial(import_path(spec["class_path"]), **(spec.get("init_args") or {}))
        return instantiate({"class_path": self.model["class_path"], "init_args": args})

    def optimizer_text(self) -> str:
        spec = (self.model.get("init_args") or {}).get("optimizer") or {}
        if not isinstance(spec, dict):
            return str(spec)
        args = ", ".join(f"{k}={v}" for k, v in (spec.get("init_args") or {}).items())
        return f"{spec.get('class_path', '?').rsplit('.', 1)[-1]}({args})"


class CallbackProfiler:
    """Wall time of the callback's parts, by wrapping its bound methods (kdlight is unchanged).

    ``run`` is one callback run (a validation epoch it fires on), timed inclusively; attribution
    maps (``_explain``), chance level, faithfulness and the surrogate happen inside it and are
    timed exclusively (a part called inside another part counts as itself, not twice), so
    ``run - parts`` is the rest of a run. ``_log_artifacts`` (per-class tables and figures) is
    called from ``on_fit_end``, once per fit. Only calls on the main thread count towards these
    parts; ``_teacher_sides`` (the teacher's side, computed on a background thread during the
    first epochs) is timed whole as ``background``. Where kdlight renamed a method, the first of
    the candidate names that exists is wrapped; names that exist under none land in ``missing``.
    """

    METHODS = {
        "run": ("run",),
        "explain": ("_explain",),
        "chance": ("_chance_level",),
        "faithfulness": ("_faithfulness", "_faithfulness_scores"),
        "artifacts": ("_log_artifacts",),
        "background": ("_teacher_sides",),
    }
    PARTS = ("run", "explain", "chance", "faithfulness", "surrogate", "artifacts", "background")

    def __init__(self, callback, device: str) -> None:
        import kdlight.explain.callback as cb_module

        self.totals = {p: 0.0 for p in self.PARTS}
        self.calls = 0
        self.missing: list[str] = []
        self.wrapped: dict[str, str] = {}
        self._stack: list[float] = []  # time spent in wrapped callees of each active wrapped call
        self.device = device
        self._module = cb_module
        for part, names in self.METHODS.items():
            name = next((n for n in names if callable(getattr(callback, n, None))), None)
            if name is None:
                self.missing.append("ExplanationAgreement." + "/".join(names))
                continue
            self.wrapped[part] = name
            setattr(callback, name, self._wrap(getattr(callback, name), part))
        self._orig_surrogate = getattr(cb_module, "fit_surrogate", None)
        if self._orig_surrogate is None:
            self.missing.append("kdlight.explain.callback.fit_surrogate")
        else:
            self.wrapped["surrogate"] = "fit_surrogate"
            cb_module.fit_surrogate = self._wrap(self._orig_surrogate, "surrogate")

    def restore(self) -> None:
        if self._orig_surrogate is not None:
            self._module.fit_surrogate = self._orig_surrogate

    def _wrap(self, fn, part):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if part == "background":
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.totals[part] += time.perf_counter() - start
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)  # inside the background job: counted there
            if part == "run":
                self.calls += 1
            sync(self.device)
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                elapsed = time.perf_counter() - start
                nested = self._stack.pop()
                self.totals[part] += elapsed if part == "run" else elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed

        return timed


def config_fit(cfg, ship: ShippedConfig, explain_args: dict | None, epochs: int) -> tuple[float, dict | None]:
    """``fit`` as configs/digits/kd.yaml sets it up (progress bar and model summary off, random-init
    teacher); ``explain_args`` None runs it without ExplanationAgreement."""
    import lightning as L

    from kdlight.explain import ExplanationAgreement

    L.seed_everything(ship.seed, verbose=False)
    profiler = None
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [instantiate(spec, tmp) for spec in ship.callbacks]
        if explain_args is not None:
            explain = ExplanationAgreement(**instantiate(explain_args))
            profiler = CallbackProfiler(explain, cfg.device)
            callbacks.append(explain)
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="gpu" if cfg.device == "cuda" else "cpu",
            devices=1,
            deterministic=ship.deterministic,
            log_every_n_steps=ship.log_every_n_steps,
            default_root_dir=tmp,
            logger=instantiate(ship.logger, tmp),
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = ship.module()
        dm = instantiate(ship.data)
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            sync(cfg.device)
            start = time.perf_counter()
            trainer.fit(module, datamodule=dm)
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
        parts["missing"] = profiler.missing
        parts["wrapped"] = profiler.wrapped
    return wall, parts


def run_callback_share(cfg) -> dict:
    ship = ShippedConfig.load()
    args = ship.explain_args
    epochs = ship.max_epochs
    if cfg.quick:  # enough epochs for one callback run (kd.yaml: 10 of 20)
        epochs = min(epochs, max(int(args.get("every_n_epochs", 1)), 5))
    with tempfile.TemporaryDirectory(prefix="kdlight_bench_explain_") as warm_dir:
        # every_n_epochs=1 is paired with its own baseline over fewer epochs, to keep the run short
        settings = {
            "without": (None, epochs),
            "shipped": (args, epochs),
            "foreground": ({**args, "teacher_in_background": False}, epochs),
            "noimages": ({**args, "log_images": False}, epochs),
            "without_short": (None, cfg.every1_epochs),
            "every1": ({**args, "every_n_epochs": 1}, cfg.every1_epochs),
        }
        warmup = {**args, "every_n_epochs": 1}
        if "teacher_cache_dir" in args:
            # "auto" caches beside the teacher checkpoint; the benchmark's teacher has none, so the shipped
            # rows are a first run with this teacher. This row is a later student of the same teacher:
            # the teacher's maps and faithfulness come from a directory the warm-up fit filled.
            settings["shipped_warm"] = ({**args, "teacher_cache_dir": warm_dir}, epochs)
            warmup["teacher_cache_dir"] = warm_dir
        walls: dict[str, list[float]] = {k: [] for k in settings}
        parts: dict[str, list[dict]] = {k: [] for k in settings}
        config_fit(cfg, ship, warmup, 1)  # untimed warm-up: imports, first figure, caches
        for r in range(cfg.repeats_config):
            for name, (explain_args, n_epochs) in settings.items():
                wall, p = config_fit(cfg, ship, explain_args, n_epochs)
                walls[name].append(wall)
                if p is not None:
                    parts[name].append(p)
            log(f"  callback repeat {r + 1}/{cfg.repeats_config}: "
                + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in walls.items()))
    return {"walls": walls, "parts": parts, "settings": settings, "ship": ship, "epochs": epochs}


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


def throughput_rows(wl_name: str, tp: dict[str, list[float]]) -> list[tuple]:
    rows = []
    med = {k: median(v) for k, v in tp.items()}
    base = med["plain"]
    unit = "train samples/s"
    tag = f"[{wl_name}] "

    def tp_row(key, label, baseline_key="plain", baseline_label=None, goal=""):
        if key not in med or baseline_key not in med:
            return
        b = med[baseline_key]
        rows.append((
            "1",
            tag + label,
            f"{med[key]:,.0f} {unit} ({min(tp[key]):,.0f}-{max(tp[key]):,.0f})",
            baseline_label or f"plain loop {b:,.0f}",
            fmt_ratio(med[key] / b),
            goal,
        ))

    rows.append(("1", tag + "plain PyTorch loop (baseline)", f"{base:,.0f} {unit} ({min(tp['plain']):,.0f}-{max(tp['plain']):,.0f})", "itself",
                 "1.00", ""))
    tp_row("bare_lightning", "bare LightningModule, same maths, no log/metrics")
    k = med["kdlight"] / base
    tp_row("kdlight", "kdlight fit, logger=False (defaults)", goal=f">= 0.95: {'met' if k >= 0.95 else 'NOT met'}")
    tp_row("kdlight_nofinite", "kdlight fit, check_finite=False")
    tp_row("kdlight_nolog", "kdlight fit without training logs (record_training no-op)")
    tp_row("kdlight_csv50", "kdlight fit + CSVLogger (log_every_n_steps=50)")
    tp_row("kdlight_csv10", "kdlight fit + CSVLogger (log_every_n_steps=10, kd.yaml)")
    if "kdlight_nolog" in med:
        tp_row("kdlight", "kdlight's training-log cost: kdlight defaults vs without training logs", "kdlight_nolog",
               f"kdlight no training logs {med['kdlight_nolog']:,.0f}")
    for key, n in (("kdlight_csv50", 50), ("kdlight_csv10", 10)):
        tp_row(key, f"CSVLogger cost: kdlight+CSV({n}) vs kdlight logger=False", "kdlight",
               f"kdlight logger=False {med['kdlight']:,.0f}")
    if "kdlight_bf16" in med:
        tp_row("kdlight_bf16", "bf16-mixed vs 32-true, kdlight fit (logger=False)", "kdlight",
               f"kdlight 32-true {med['kdlight']:,.0f}")
        tp_row("plain_bf16", "bf16 autocast vs fp32, plain loop", "plain", f"plain fp32 {base:,.0f}")
    return rows


def callback_rows(cb: dict) -> list[tuple]:
    rows = []
    ship: ShippedConfig = cb["ship"]
    walls = {k: min(v) for k, v in cb["walls"].items()}
    args_text = ", ".join(f"{k}={v}" for k, v in ship.explain_args.items())
    shown: set[str] = set()
    for key, base_key, label, goal in (
        ("shipped", "without", f"shipped ({args_text})", 0.10),
        ("foreground", "without", "shipped but teacher_in_background=False (teacher's side in the first run)", None),
        ("noimages", "without", "shipped but log_images=False", None),
        ("shipped_warm", "without", "shipped but teacher_cache_dir warm (later student of the same teacher)", None),
        ("every1", "without_short", "shipped but every_n_epochs=1", None),
    ):
        if key not in walls:
            continue
        epochs = cb["settings"][key][1]
        w0 = walls[base_key]
        if base_key not in shown:
            shown.add(base_key)
            rows.append(("2", f"fit {epochs} epochs, kd.yaml trainer, no callback (baseline)",
                         f"{w0:.2f} s ({spread(cb['walls'][base_key])})", "itself", "", ""))
        share = (walls[key] - w0) / walls[key]
        paired = median([(w - b) / w for w, b in zip(cb["walls"][key], cb["walls"][base_key])])
        calls = cb["parts"][key][0]["calls"] if cb["parts"][key] else 0
        verdict = "" if goal is None else f"<= 10 %: {'met' if max(share, paired) <= goal else 'NOT met'}"
        rows.append((
            "2",
            f"fit {epochs} epochs + ExplanationAgreement {label}: callback share = (with - without)/with, "
            "of the fastest fits; in brackets the median over repeats of each repeat's share",
            f"{walls[key]:.2f} s ({spread(cb['walls'][key])}), {calls} callback run(s)",
            f"without {w0:.2f} s",
            f"{100 * share:.1f} % ({100 * paired:.1f} %)",
            verdict,
        ))
    parts = cb["parts"].get("shipped") or []
    if parts:
        fits = len(parts)
        calls = sum(p["calls"] for p in parts)
        run = sum(p["run"] for p in parts)
        artifacts = sum(p["artifacts"] for p in parts)
        total = run + artifacts
        delta = walls["shipped"] - walls["without"]
        rows.append((
            "2", "shipped settings: profiled callback time per fit (runs + end-of-fit artifacts, mean of fits); "
            "ratio = profiled / wall difference",
            f"{total / fits * 1000:.0f} ms ({calls / fits:.0f} runs x {run / max(calls, 1) * 1000:.0f} ms "
            f"+ artifacts {artifacts / fits * 1000:.0f} ms)",
            f"wall with - without {delta * 1000:.0f} ms", fmt_ratio(total / fits / delta) if delta > 0 else "n/a", "",
        ))
        named = {
            "explain": "attribution maps (student every run; teacher once per fit)",
            "chance": "chance level (re-init student, once per fit per method)",
            "faithfulness": "faithfulness (deletion/insertion AUC, infidelity; the teacher's once per fit)",
            "surrogate": "decision-tree surrogate",
        }
        accounted = 0.0
        for part, label in named.items():
            t = sum(p[part] for p in parts)
            accounted += t
            rows.append(("2", f"  part: {label}", f"{t / max(calls, 1) * 1000:.0f} ms/run", "callback time per fit",
                         f"{100 * t / total:.0f} %", ""))
        rest = run - accounted
        rows.append(("2", "  part: rest of run (probe batch, predictions, metrics, logging)",
                     f"{rest / max(calls, 1) * 1000:.0f} ms/run", "callback time per fit", f"{100 * rest / total:.0f} %", ""))
        rows.append(("2", "  part: artifacts (per-class CSV + PNG figure per method, in on_fit_end)",
                     f"{artifacts / fits * 1000:.0f} ms/fit", "callback time per fit", f"{100 * artifacts / total:.0f} %", ""))
        background = sum(p["background"] for p in parts)
        rows.append(("2", "  beside it: the teacher's maps and faithfulness on a background thread from the start of training "
                     "(overlaps the first epochs; not in the time above)",
                     f"{background / fits * 1000:.0f} ms/fit", "", "", ""))
        missing = sorted({m for p in parts for m in p.get("missing", [])})
        if missing:
            rows.append(("2", "  profiler could not wrap (renamed/removed in kdlight?)", ", ".join(missing), "", "", ""))
    return rows


def ig_rows(cfg, ig: dict) -> list[tuple]:
    rows = []
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
    return rows


def cache_rows(wl_name: str, res: dict[str, list[float]]) -> list[tuple]:
    med = {k: median(v) for k, v in res.items()}
    tag = f"[{wl_name}] "

    def value(key):
        return f"{med[key] * 1000:.0f} ms/epoch ({min(res[key]) * 1000:.0f}-{max(res[key]) * 1000:.0f})"

    c = med["cached"] / med["student"]
    return [
        ("5", tag + "student-only training (ClassifierModule, CE only; baseline)", value("student"), "itself", "1.00", ""),
        ("5", tag + "kdlight distillation, no teacher cache", value("uncached"),
         f"student-only {med['student'] * 1000:.0f} ms", fmt_ratio(med["uncached"] / med["student"]), ""),
        ("5", tag + 'kdlight distillation, teacher_cache="memory" (epochs after the filling one)', value("cached"),
         f"student-only {med['student'] * 1000:.0f} ms", fmt_ratio(c), f"<= 1.10: {'met' if c <= 1.10 else 'NOT met'}"),
        ("5", tag + "cached vs uncached distillation", f"{med['cached'] * 1000:.0f} ms/epoch",
         f"uncached {med['uncached'] * 1000:.0f} ms", fmt_ratio(med["cached"] / med["uncached"]), ""),
        ("5", tag + "with validation: student-only epoch, training + validation (baseline)", value("student_val"),
         "itself", "1.00", ""),
        ("5", tag + 'with validation: teacher_cache="memory" epoch (teacher validation logits cached too)',
         value("cached_val"), f"student-only {med['student_val'] * 1000:.0f} ms",
         fmt_ratio(med["cached_val"] / med["student_val"]), ""),
        ("5", tag + "with validation: the same, teacher run on every validation batch", value("cached_val_off"),
         f"student-only {med['student_val'] * 1000:.0f} ms", fmt_ratio(med["cached_val_off"] / med["student_val"]), ""),
    ]


def build_table(cfg, results: dict) -> list[str]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    # (section, measurement, value, baseline, ratio, goal / verdict)
    for wl_name, tp in (results.get("1") or {}).items():
        rows += throughput_rows(wl_name, tp)
    if results.get("2"):
        rows += callback_rows(results["2"])
    if results.get("3"):
        rows += ig_rows(cfg, results["3"])
    for wl_name, res in (results.get("5") or {}).items():
        rows += cache_rows(wl_name, res)
    header = ["sec", "measurement", "value (median or min, [min-max])", "baseline (same run)", "ratio", "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="about 1-1.5 minutes: fewer epochs/repeats/variants, section 2 up to the callback's first run (10 epochs), "
                        "n_steps up to 64 (None up to 32 on cpu), 256 cifar samples")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on cpu, to keep shared cores from adding noise; torch's default on cuda)")
    p.add_argument("--sections", default="1,2,3,5",
                   help="comma-separated subset of 1,2,3,5 (4 rides with 1 on cuda)")
    p.add_argument("--workload", choices=["digits", "cifar", "both"], default="both",
                   help="sections 1 and 5: digits (8x8 digits, CNN2d -> MLP), cifar (synthetic 3x32x32, "
                        "resnet20 -> resnet8) or both (default)")
    p.add_argument("--student-hidden", type=int, nargs="+", default=[32],
                   help="digits: MLP student hidden widths (kd.yaml: 32)")
    p.add_argument("--batch-size", type=int, default=64, help="sections 1 and 5, both workloads")
    p.add_argument("--cifar-train-size", type=int, default=None, help="cifar: synthetic training samples (512; --quick 256)")
    p.add_argument("--epochs", type=int, default=None,
                   help="sections 1 and 5: timed epochs per fit, after 1 warm-up epoch (digits 5, cifar 2; --quick 3 / 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="sections 1 and 5: fits per variant, interleaved (digits 5, cifar 3; --quick 3 / 2)")
    p.add_argument("--all-variants", action="store_true",
                   help="section 1: time every variant for every workload (by default cifar and --quick skip "
                        "check_finite=False and CSV(50))")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None,
                   help="cpu section 3: set glibc MALLOC_MMAP_THRESHOLD_ in the children (e.g. 131072), so freed "
                        "tensor memory goes back to the OS at once and RSS tracks live tensors")
    p.add_argument("--_ig-child", dest="ig_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q, cuda = args.quick, args.device == "cuda"
    args.cifar_train_size = args.cifar_train_size or (256 if q else 512)
    workloads = ["digits", "cifar"] if args.workload == "both" else [args.workload]
    # CUDA epochs are ~60 ms of host-bound work each: time more of them to beat the noise
    default_epochs = {"digits": 3 if q else (15 if cuda else 5), "cifar": 1 if q else (15 if cuda else 2)}
    default_repeats = {"digits": 3 if q else 5, "cifar": 2 if q else 3}
    # cifar steps are compute-bound (~0.25 s each on one core): the check_finite and CSV(50) rows sit within noise of
    # kdlight's there and would cost ~35 s, so by default only digits runs them (--all-variants: every workload)
    few = ("plain", "bare_lightning", "kdlight", "kdlight_nolog", "kdlight_csv10")
    args.workloads = {
        name: Workload(
            name=name,
            batch_size=args.batch_size,
            epochs=args.epochs or default_epochs[name],
            repeats=args.repeats or default_repeats[name],
            variants=SECTION1_VARIANTS if args.all_variants or not (q or name == "cifar") else few,
            student_hidden=args.student_hidden,
            train_size=args.cifar_train_size,
        )
        for name in workloads
    }
    args.repeats_config = 3 if q else 7
    args.every1_epochs = 2 if q else 5
    args.ig_steps = [8, 32, 64] if q else [8, 32, 128, 512]
    args.ig_none_max = 32 if (q and args.device == "cpu") else 10**9
    args.ig_repeats = 1 if args.device == "cpu" else 3
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    return args


def notes_lines(cfg, sections: set[str], results: dict) -> list[str]:
    notes = [""]
    wls = cfg.workloads
    if sections & {"1", "5"}:
        notes.append(f"Setup: device {cfg.device}, {cfg.threads} torch thread(s); KD T=4 alpha=0.9, Adam 3e-3; "
                     "models random init (seed 0).")
        for wl in wls.values():
            notes.append(f"Workload {wl.describe()}.")
    if "1" in sections:
        per = "; ".join(f"{wl.name}: median of {wl.repeats} fits per variant, each 1 warm-up + {wl.epochs} timed epoch(s), "
                        f"variants {', '.join(v for v in SECTION1_VARIANTS if v in wl.variants)}" for wl in wls.values())
        notes.append(f"Section 1: {per}. Fits interleaved; Trainer logger=False (unless CSVLogger), no checkpointing/"
                     "progress bar/summary, num_sanity_val_steps=0, limit_val_batches=0; the plain loop iterates the same "
                     "kind of DataLoader (the data module's train_dataloader) with the same models and objective. "
                     "'without training logs' = DistillationModule subclass whose record_training does nothing (no "
                     "train loss/acc logs, and so no finite check).")
    if "2" in sections:
        cb = results.get("2")
        if cb:
            ship: ShippedConfig = cb["ship"]
            ran = f" (run: {cb['epochs']})" if cb["epochs"] != ship.max_epochs else ""
            explain_text = ", ".join(f"{k}={v}" for k, v in ship.explain_args.items())
            other_callbacks = ", ".join(s["class_path"].rsplit(".", 1)[-1] for s in ship.callbacks)
            data_args = ", ".join(f"{k}={v}" for k, v in (ship.data.get("init_args") or {}).items())
            shipped_parts = cb["parts"].get("shipped") or [{}]
            wrapped = ", ".join(shipped_parts[0].get("wrapped", {}).values()) or "nothing"
            notes.append(
                f"Section 2: fastest (min) of {cfg.repeats_config} fits per setting, interleaved (shares in brackets: "
                "median over repeats of each repeat's own share); read from "
                f"{KD_YAML.relative_to(REPO)}: ExplanationAgreement({explain_text}), max_epochs={ship.max_epochs}{ran}, "
                f"log_every_n_steps={ship.log_every_n_steps}, deterministic={ship.deterministic}, seed {ship.seed}, "
                f"CSVLogger, {other_callbacks}, {ship.model['class_path'].rsplit('.', 1)[-1]} with {ship.optimizer_text()}, "
                f"{ship.data['class_path'].rsplit('.', 1)[-1]}({data_args}); "
                "teacher random init (teacher_checkpoint dropped), progress bar and model summary off, sanity check "
                f"and validation every epoch as shipped. every_n_epochs=1 runs {cfg.every1_epochs} epochs against "
                "its own baseline. teacher_cache_dir=auto resolves to memory-only here (no teacher checkpoint), "
                "so the shipped rows are a first student of this teacher; the 'warm' row (only when kd.yaml sets "
                "teacher_cache_dir) points it at a directory the untimed warm-up fit filled. Parts: mean over the "
                f"shipped-settings fits, by wrapping {wrapped} (self time on the training thread; run inclusive; "
                "_teacher_sides, the background job for the teacher's side, timed whole); artifacts are drawn once "
                "per fit (on_fit_end).")
    if "3" in sections:
        how = ("CUDA max_memory_allocated, median of 3" if cfg.device == "cuda"
               else "peak RSS growth in a fresh subprocess per setting, one run each")
        if cfg.malloc_mmap_threshold:
            how += f", MALLOC_MMAP_THRESHOLD_={cfg.malloc_mmap_threshold}"
        notes.append(f"Section 3: IG on {IG_PROBES} random {'x'.join(map(str, IG_INPUT))} probes, CNN2d{IG_MODEL['channels']} "
                     f"hidden {IG_MODEL['hidden']}; {how}.")
    if "5" in sections:
        per = "; ".join(f"{wl.name}: median of {wl.repeats} fits per variant, each {wl.epochs + 1} epochs, epochs "
                        f"2..{wl.epochs + 1} timed" for wl in wls.values())
        notes.append(f"Section 5: {per}. Fits interleaved (on cpu one untimed 2-epoch fit of each variant first, for the first workload only); Trainer settings of "
                     "section 1; same student and batch; the cached module's first epoch fills the in-memory cache "
                     "(batches carry sample indices), later epochs read the teacher logits from it. 'with validation' "
                     "rows: the same with a full validation pass every epoch (digits 270 samples, cifar "
                     f"{CIFAR_EVAL_SIZE}), timed with the training of the epoch.")
    return notes


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
    unknown = sections - {"1", "2", "3", "4", "5"}
    if unknown:
        sys.exit(f"--sections: unknown section(s) {sorted(unknown)}; choose from 1,2,3,5")
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = loadavg()
    print(f"load average at start: {load_start}")
    print(f"machine: {machine_line(cfg.device)}")
    print(f"command: {command.strip()}")
    t0 = time.perf_counter()
    results: dict[str, object] = {}
    failures: list[str] = []

    def attempt(key: str, title: str, fn, store) -> None:
        log(f"section {key}: {title}")
        try:
            store(fn())
        except Exception as exc:  # report it in the table, keep the other sections
            import traceback

            traceback.print_exc()
            failures.append(f"| {key} | {title}: section failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''} |  |  |  |  |")

    for key, title, fn in (
        ("1", "fit throughput", run_throughput),
        ("2", "explanation callback share", run_callback_share),
        ("3", "integrated-gradients peak memory", run_ig_memory),
        ("5", "teacher cache", run_cache),
    ):
        if key not in sections:
            continue
        if key in ("1", "5"):
            results[key] = {}
            for wl in cfg.workloads.values():
                attempt(key, f"{title} [{wl.name}]", functools.partial(fn, cfg, wl),
                        functools.partial(results[key].__setitem__, wl.name))
        else:
            attempt(key, title, functools.partial(fn, cfg), functools.partial(results.__setitem__, key))
    elapsed = time.perf_counter() - t0
    table = build_table(cfg, results) + failures
    notes = notes_lines(cfg, sections, results)
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
