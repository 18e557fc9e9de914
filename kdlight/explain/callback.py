"""ExplanationAgreement: does the student explain its decisions the way the teacher does?"""
from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from kdlight.reporting.artifacts import log_image, log_table
from kdlight.training.teacher_cache import data_fingerprint, teacher_fingerprint
from kdlight.explain.background import lowest_cpu_priority, unhooked_copy
from kdlight.explain.faithfulness import deletion_insertion_auc, infidelity_score
from kdlight.explain.methods import (
    MAX_FEATURES_WITHOUT_PATCHES,
    AttributionConfig,
    attribute,
    baseline_kind,
    conv_layer_names,
    feature_mask_for,
    grad_cam_layer_name,
    is_pure,
    layer_output_shape,
    method_names,
)
from kdlight.explain.metrics import AgreementCollection, PerClassAgreement
from kdlight.explain.plots import explanation_image
from kdlight.explain.surrogate import fit_surrogate
from kdlight.training.reinit import reinitialized

TARGETS = ("teacher", "label", "student")
LOCAL_METHODS = frozenset({"saliency", "grad_cam"})
CHANCE_METRICS = ("cosine", "rank_correlation", "feature_agreement")
FAITHFULNESS_SCORES = ("deletion_auc", "insertion_auc", "infidelity")
#: part of every teacher_cache_dir key: bump it when how maps or faithfulness are computed changes
TEACHER_CACHE_VERSION = "1"
_CONFIG_FIELDS = {f.name for f in fields(AttributionConfig)} - {"method", "seed"}
_LAYER_OPTIONS = ("layer", "teacher_layer", "student_layer")
_PERTURBATION_METHODS = ("kernel_shap", "shapley_value_sampling")
log = logging.getLogger(__name__)


class ExplanationAgreement(Callback):
    """Explain teacher and student on a fixed probe set of validation samples and log agreement.

    For every method in ``methods`` it logs ``{split}/explain/{method}/{metric}`` for the
    agreement metrics (cosine, rank correlation, Pearson, top-k feature/rank/sign/signed-rank
    agreement, pairwise rank agreement), the deletion/insertion AUC and infidelity of both maps
    (``faithfulness=True``), a per-class table, and a figure input | teacher | student for
    ``num_images`` probes (rank zero only; drawn once at the end of ``fit``, and in every
    ``validate``/``test``). The teacher's maps and faithfulness are computed once per split
    unless ``target="student"``: the teacher is frozen and the probes are fixed. A decision-tree surrogate of the student on the probe
    inputs logs its fidelity and size (``surrogate=True``). ``.../chance_{metric}`` is the same
    agreement for a freshly initialised copy of the student: the floor to read curves against.

    With ``teacher_cache_dir`` the teacher's maps and per-probe faithfulness are also stored on
    disk, keyed by a hash of the teacher's weights, the probe inputs, the targets and the method
    settings, so every student distilled from the same teacher reuses them (a changed teacher,
    probe set or setting gives a new key, never a stale entry).

    During ``fit`` the teacher's side is computed on a background thread from the start of
    training, so it overlaps the first epochs instead of adding to the first run
    (``teacher_in_background``); on Linux the job's thread has the lowest CPU priority, so it uses
    only CPU time training leaves idle. The job explains a copy of the teacher's modules that shares its
    weights but none of its hooks (objectives such as Hint hook the teacher) or train/eval flags. It
    runs only where that is safe: single-device and DDP strategies on CPU or CUDA, target
    ``teacher`` or ``label``, no global module hooks, and methods that draw no random numbers and
    put no hooks on the model (integrated gradients, saliency, input x gradient without a noise
    tunnel); the others are computed in the first run, as before. Training draws the same random
    numbers and gives the same weights either way. If the job fails (e.g. a kernel without a
    deterministic implementation under ``deterministic=True``: the job never relaxes that
    process-wide flag), the run computes the teacher's side instead.

    Args:
        methods: attribution methods (see :func:`kdlight.explain.method_names`).
        every_n_epochs: run on validation epochs divisible by this, and always after the last
            epoch of ``fit`` (also when it is not a multiple, or ``fit`` stops early); always in
            validate/test.
        num_probes: size of the probe set, chosen once from the validation set with ``seed``.
        batch_size: probes explained per call (internal batching bounds memory).
        k: top-k size of the Krishna et al. metrics; at most the number of input features.
        target: the class explained: ``teacher`` (its prediction), ``label`` or ``student``.
        method_args: per-method :class:`AttributionConfig` fields, e.g.
            ``{integrated_gradients: {n_steps: 64}, grad_cam: {layer: conv2}}``; a per-model
            Grad-CAM layer is given as ``{grad_cam: {teacher_layer: ..., student_layer: ...}}``.
        teacher_cache_dir: directory for the teacher's maps and faithfulness across runs;
            ``"auto"``: ``explanations/`` beside the teacher checkpoint (memory only when the
            teacher was not loaded from one); ``None``: kept in memory for this run only.
        teacher_in_background: compute the teacher's side on a background thread during
            ``fit`` (see above); ``False``: in the first run.

    Settings are checked before any work: values in ``__init__``; in ``setup`` (before the first
    training step) what needs the models or the input shape -- Grad-CAM layers of both models,
    ``k`` against the number of input features, perturbation patches, baselines that need
    training data; the probe count in ``on_train_start``. Each error is one line that names the
    option to change. ``last_epoch`` is the epoch ``last_results`` come from.
    """

    def __init__(
        self,
        methods: list[str] | None = None,
        every_n_epochs: int = 1,
        num_probes: int = 128,
        batch_size: int = 64,
        k: int = 8,
        target: str = "teacher",
        log_images: bool = True,
        num_images: int = 4,
        faithfulness: bool = True,
        surrogate: bool = True,
        method_args: dict[str, dict[str, Any]] | None = None,
        seed: int = 0,
        teacher_cache_dir: str | None = None,
        teacher_in_background: bool = True,
    ) -> None:
        super().__init__()
        self.methods = list(methods) if methods is not None else ["integrated_gradients", "saliency"]
        valid = method_names()
        unknown = [m for m in self.methods if m not in valid]
        if unknown or not self.methods:
            raise ValueError(f"unknown attribution method(s) {unknown}; valid methods are: {', '.join(valid)}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        counts = [("every_n_epochs", every_n_epochs), ("num_probes", num_probes), ("batch_size", batch_size), ("k", k)]
        for name, value in counts + ([("num_images", num_images)] if log_images else []):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ExplanationAgreement {name} must be an integer >= 1, got {value!r}")
        self.method_args = {method: dict(args or {}) for method, args in (method_args or {}).items()}
        for method, args in self.method_args.items():
            if method not in valid:  # a known method that is not selected is fine (configs stay overridable)
                raise ValueError(f"method_args names {method!r}, which is not an attribution method; valid methods are: {', '.join(valid)}")
            bad = set(args) - _CONFIG_FIELDS - set(_LAYER_OPTIONS)
            if bad:
                options = sorted((_CONFIG_FIELDS - {"layer"}) | ({"layer", "teacher_layer", "student_layer"} if method == "grad_cam" else set()))
                raise ValueError(f"unknown option(s) {sorted(bad)} for {method} in method_args; valid: {', '.join(options)}")
            layers = [name for name in _LAYER_OPTIONS if name in args]
            if layers and method != "grad_cam":
                raise ValueError(f"method_args: {{{method}: {{{layers[0]}: ...}}}} has no effect: only grad_cam explains a layer; remove it")
        self.every_n_epochs, self.num_probes, self.batch_size, self.k = every_n_epochs, num_probes, batch_size, k
        self.target, self.log_images, self.num_images = target, log_images, num_images
        self.faithfulness, self.surrogate, self.seed = faithfulness, surrogate, seed
        self.teacher_cache_dir = teacher_cache_dir
        self.teacher_in_background = teacher_in_background
        self._teacher_job: Future | None = None  # the background computation of the teacher's side
        self._cancel_job = threading.Event()  # asks the job to stop after the current method
        self._teacher_key: str | None = None
        self._cache_dir: Path | None = None
        self._probe_key = ""  # fingerprint of this run's probes and targets (set in _run)
        self._models: tuple[int, int] | None = None  # ids of the teacher and student served
        self._probe_indices: Tensor | None = None
        self._warned_nonfinite = False
        self._chance: dict[tuple, dict[str, float]] = {}
        self._teacher_cache: dict[tuple, dict[str, Tensor]] = {}
        self._metric_objects: dict[tuple, tuple[AgreementCollection, PerClassAgreement]] = {}
        self._pending: list[tuple] = []  # figures/tables drawn at the end of fit
        self._checked_shape: tuple[int, ...] | None = None  # input shape the settings were checked for
        self._train_epoch = 0  # the epoch fit is training
        self._start_step: int | None = None  # global step when fit began training
        self._explained_step: int | None = None  # global step of the last explanation in fit
        self.last_results: dict[str, float] = {}
        self.last_epoch: int | None = None
        for method in self.methods:  # every value check of AttributionConfig, now rather than at the first run
            for role in ("teacher", "student"):
                try:
                    self._config(method, role)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"ExplanationAgreement method_args for {method}: {err}") from None

    # -- probe set ---------------------------------------------------------------------------
    def probe_indices(self, dataset_size: int) -> Tensor:
        """Indices of the probe samples: drawn once with ``seed``, then fixed."""
        if self.num_probes > dataset_size:
            raise ValueError(
                f"num_probes={self.num_probes} is larger than the validation set ({dataset_size} samples); "
                f"set num_probes <= {dataset_size}"
            )
        if self._probe_indices is None:
            g = torch.Generator().manual_seed(self.seed)
            self._probe_indices = torch.randperm(dataset_size, generator=g)[: self.num_probes].sort().values
        return self._probe_indices

    def _probe_batch(self, trainer: Trainer, split: str) -> tuple[Tensor, Tensor]:
        loaders = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = loader.dataset
        indices = self.probe_indices(len(dataset))
        # each rank explains its own share; metrics are synced across ranks
        indices = indices[trainer.global_rank :: trainer.world_size]
        samples = [dataset[int(i)] for i in indices]
        x = torch.stack([torch.as_tensor(s[0]) for s in samples])
        y = torch.as_tensor([int(s[1]) for s in samples])
        return x, y

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not (hasattr(pl_module, "teacher") and hasattr(pl_module, "student")):
            raise ValueError(
                "ExplanationAgreement needs a module with a teacher and a student "
                f"(kdlight.DistillationModule), got {type(pl_module).__name__}"
            )
        self._cache_dir = self._cache_directory(pl_module)
        self._teacher_key = None  # the teacher's weights are hashed again for this stage
        models = (id(pl_module.teacher), id(pl_module.student))
        if models != self._models:  # this callback object now serves other models: forget theirs
            self._models = models
            self._teacher_cache.clear(), self._chance.clear()
        self._checked_shape = None
        self.check_settings(trainer, pl_module, _known_input_shape(trainer, pl_module))

    def check_settings(self, trainer: Trainer, pl_module: LightningModule, input_shape: tuple[int, ...] | None) -> None:
        """Refuse settings that cannot work with these models (and, when ``input_shape`` -- one
        sample's shape -- is known, these inputs), with one line naming the option to change."""
        self._check_baselines(trainer)
        if "grad_cam" in self.methods:
            for role in ("teacher", "student"):
                self._check_grad_cam_layer(role, getattr(pl_module, role), input_shape)
        if input_shape is None:
            return
        num_features = math.prod(input_shape)
        if self.k > num_features:
            raise ValueError(
                f"ExplanationAgreement k={self.k} exceeds the {num_features} features of an input of shape "
                f"{list(input_shape)}: every top-k set would hold all features and top-k agreement would be 1.0 "
                f"for any maps; set k <= {num_features} (e.g. k: {max(1, num_features // 8)})"
            )
        for method in self.methods:
            if method in _PERTURBATION_METHODS:
                patch_size = self._config(method, "teacher").patch_size
                try:
                    feature_mask_for(torch.empty((1, *input_shape)), patch_size)
                except ValueError:
                    raise ValueError(_patch_problem(method, input_shape, patch_size)) from None
        self._checked_shape = tuple(input_shape)

    def _check_baselines(self, trainer: Trainer) -> None:
        """A training-mean / sampled baseline needs a datamodule with ``train_inputs()``."""
        if hasattr(trainer.datamodule, "train_inputs"):
            return
        for method in self.methods:
            kind = self._config(method, "teacher").baseline
            if kind in ("mean", "sample"):
                where = type(trainer.datamodule).__name__ if trainer.datamodule is not None else "no datamodule"
                raise ValueError(
                    f"ExplanationAgreement {method}: baseline {kind!r} needs the training inputs, but the data "
                    f"({where}) has no train_inputs(); set method_args: {{{method}: {{baseline: zeros}}}} "
                    f"or fit with a kdlight datamodule"
                )

    def _layer_option(self, role: str) -> str:
        """Where the Grad-CAM layer of ``role`` is set (or would be)."""
        args = self.method_args.get("grad_cam", {})
        if f"{role}_layer" in args or "layer" not in args:
            return f"method_args: {{grad_cam: {{{role}_layer: <name>}}}}"
        return f"method_args: {{grad_cam: {{layer: <name>}}}} (or {role}_layer: <name> for the {role} alone)"

    def _check_grad_cam_layer(self, role: str, model, input_shape: tuple[int, ...] | None) -> None:
        """The model has the Grad-CAM layer, and (shape known) it runs and gives spatial maps."""
        layer = self._config("grad_cam", role).layer
        what = f"the {role} ({type(model).__name__})"
        option = self._layer_option(role)
        name = grad_cam_layer_name(model, layer)
        if name is None:
            missing = f"has no layer {layer!r}" if layer is not None else "has no Conv1d/Conv2d layer to default to"
            raise ValueError(f"ExplanationAgreement grad_cam: {what} {missing}; {_layer_hint(model, layer)}; set it with {option}")
        if input_shape is None:
            return
        if len(input_shape) not in (2, 3):
            raise ValueError(
                f"ExplanationAgreement grad_cam needs image [C, H, W] or 1-D signal [C, L] inputs, these are "
                f"{list(input_shape)}; remove grad_cam from methods"
            )
        if any(p.is_meta for p in model.parameters()):
            return  # not materialised yet (e.g. created in configure_model): checked at the first run
        try:
            shape = layer_output_shape(model, name, input_shape)
        except (RuntimeError, ValueError, TypeError):  # the model rejects such inputs: training will say so itself
            return
        if shape is None:
            raise ValueError(
                f"ExplanationAgreement grad_cam: layer {name!r} of {what} does not run in its forward; "
                f"{_layer_hint(model, None)}; set another with {option}"
            )
        if len(shape) != len(input_shape) + 1:
            raise ValueError(
                f"ExplanationAgreement grad_cam: layer {name!r} of {what} gives outputs of shape {list(shape[1:])}, "
                f"not maps like the inputs {list(input_shape)}; {_layer_hint(model, None)}; set a "
                f"convolutional one with {option}"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_step, self._explained_step = trainer.global_step, None
        dataset = _dataset(trainer, "val")
        if dataset is not None:  # before the first training step, not at the first explained epoch
            self.probe_indices(len(dataset))
            if self._checked_shape is None and len(dataset):
                self.check_settings(trainer, pl_module, tuple(torch.as_tensor(dataset[0][0]).shape))
        self._start_teacher_job(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Explain the final weights when the last validation epoch did not (``fit`` stopped
        early, by ``max_steps``, or the last epoch had no validation)."""
        trained = self._start_step is not None and trainer.global_step > self._start_step
        if trained and self._explained_step != trainer.global_step and _dataset(trainer, "val") is not None:
            self.run(trainer, pl_module, "val", epoch=self._train_epoch)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish_teacher_job()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._cancel_job.set()
        self._finish_teacher_job()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs and not _last_epoch(trainer):
            return
        self.run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.run(trainer, pl_module, "test")

    # -- the work ----------------------------------------------------------------------------
    def _config(self, method: str, role: str) -> AttributionConfig:
        args = dict(self.method_args.get(method, {}))
        layer = args.pop(f"{role}_layer", None)
        args.pop("teacher_layer", None), args.pop("student_layer", None)
        if layer is not None:
            args["layer"] = layer
        return AttributionConfig(method=method, seed=self.seed, **args)

    def _attribute(self, method: str, role: str, model, x: Tensor, target: Tensor, train_inputs) -> Tensor:
        config = self._config(method, role)
        maps = [attribute(model, xb, tb, config, train_inputs=train_inputs)
                for xb, tb in zip(x.split(self.batch_size), target.split(self.batch_size))]
        return torch.cat(maps)

    def _teacher_side(self, method: str, teacher, x: Tensor, target: Tensor, train_inputs, probe_key: str) -> dict[str, Tensor]:
        """The teacher's maps and per-probe faithfulness scores.

        Unless ``target="student"`` they are kept, in memory and with ``teacher_cache_dir`` on
        disk, under a hash of everything they depend on: the teacher's weights, the probe inputs,
        the targets, the method settings, the probe batch size (random methods draw per batch)
        and, for SHAP baselines, the training inputs. So they are computed once per teacher, and a
        changed teacher, probe set or setting never reads a stale entry."""
        if self.target == "student":  # the target follows the student: nothing to reuse
            return self._completed(None, method, teacher, x, target, train_inputs)
        key = self._teacher_entry_key(method, teacher, train_inputs, probe_key)
        if key not in self._teacher_cache:
            path = self._cache_dir / f"{method}_{key}.pt" if self._cache_dir is not None else None
            stored = _load_entry(path, x.device)
            entry = self._completed(stored, method, teacher, x, target, train_inputs)
            if entry is not stored:
                _save_entry(path, entry)
            self._teacher_cache[key] = entry
        return self._teacher_cache[key]

    def _completed(self, entry: dict[str, Tensor] | None, method: str, teacher, x: Tensor, target: Tensor, train_inputs) -> dict[str, Tensor]:
        """``entry`` if it holds all this run needs, else a new entry with the missing maps and/or
        faithfulness scores computed."""
        if entry is not None and (not self.faithfulness or "deletion_auc" in entry):
            return entry
        entry = dict(entry or {})
        if "maps" not in entry:
            entry["maps"] = self._attribute(method, "teacher", teacher, x, target, train_inputs)
        if self.faithfulness:
            entry.update(self._faithfulness_scores(method, teacher, x, entry["maps"], target))
        return entry

    def _cache_directory(self, pl_module: LightningModule) -> Path | None:
        if self.teacher_cache_dir != "auto":
            return None if self.teacher_cache_dir is None else Path(self.teacher_cache_dir)
        checkpoint = getattr(pl_module, "teacher_checkpoint", None)
        return Path(checkpoint).parent / "explanations" if isinstance(checkpoint, str) else None

    def _teacher_entry_key(self, method: str, teacher, train_inputs, probe_key: str) -> str:
        if self._teacher_key is None:  # reset in setup: the weights are hashed once per stage
            self._teacher_key = teacher_fingerprint(teacher)
        config = self._config(method, "teacher")
        parts = [self._teacher_key, probe_key, repr(config),
                 f"batch_size={self.batch_size}", TEACHER_CACHE_VERSION]
        if train_inputs is not None and baseline_kind(config, True) in ("mean", "sample"):
            parts.append(data_fingerprint(train_inputs))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def _explain(self, method: str, teacher, student, x: Tensor, target: Tensor, train_inputs) -> tuple[dict[str, Tensor], Tensor]:
        teacher_side = self._teacher_side(method, teacher, x, target, train_inputs, self._probe_key)
        return teacher_side, self._attribute(method, "student", student, x, target, train_inputs)

    # -- the teacher's side in the background ------------------------------------------------
    def _background_methods(self, trainer: Trainer, device: torch.device) -> list[str]:
        """The methods whose teacher side may be computed beside training (see the class doc)."""
        safe = (
            self.teacher_in_background
            and self.target != "student"
            and type(trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)  # FSDP may shard the teacher
            and device.type in ("cpu", "cuda")
        )
        return [m for m in self.methods if is_pure(self._config(m, "teacher"))] if safe else []

    def _start_teacher_job(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start computing the teacher's maps and faithfulness on a background thread."""
        methods = self._background_methods(trainer, pl_module.device)
        if not methods or not trainer.val_dataloaders or self._teacher_job is not None:  # a run comes at the end of fit at the latest
            return
        x, y = self._probe_batch(trainer, "val")
        teacher = unhooked_copy(pl_module.teacher)
        if teacher is None:
            return
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        train_inputs = self._train_inputs(trainer, pl_module.device)
        self._cancel_job.clear()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdlight-teacher")
        self._teacher_job = executor.submit(self._teacher_sides, methods, teacher, x, y, train_inputs)
        executor.shutdown(wait=False)  # the thread ends with the job

    def _teacher_sides(self, methods: list[str], teacher, x: Tensor, y: Tensor, train_inputs) -> None:
        """(Background thread.) Fill the teacher cache for ``methods``, as a run would."""
        lowest_cpu_priority()
        with torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext():
            target = self._predict(teacher, x).argmax(-1) if self.target == "teacher" else y
            for method in methods:
                if self._cancel_job.is_set():
                    return
                self._teacher_side(method, teacher, x, target, train_inputs, _probe_key(x, target))

    def _finish_teacher_job(self) -> None:
        """Wait for the background job. If it failed, the run computes what is missing itself."""
        job, self._teacher_job = self._teacher_job, None
        if job is None:
            return
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 -- the run recomputes what is missing and raises properly
            log.info("the teacher's explanations could not be computed in the background (%r); "
                     "the run computes them instead", err)

    def _train_inputs(self, trainer: Trainer, device: torch.device) -> Tensor | None:
        """The training inputs when a method's baselines use them (training mean or samples)."""
        datamodule = trainer.datamodule
        needed = any(baseline_kind(self._config(m, "teacher"), True) in ("mean", "sample") for m in self.methods)
        return datamodule.train_inputs().to(device) if needed and hasattr(datamodule, "train_inputs") else None

    def _chance_level(self, method, teacher, student, x, target, train_inputs, t_maps, ok) -> dict[str, float]:
        """Agreement of the teacher with a freshly initialised copy of the student (computed once).

        Some metrics are far from 0 for unrelated models: methods that multiply by the input
        (integrated gradients, input x gradient, SHAP) give zero attribution wherever the input
        equals the baseline, so rank correlation of |attribution| mostly measures the shared input
        support (about 0.9 for an untrained student on digits). This floor puts curves in context.
        """
        key = (method, self._probe_key)  # other probes, other floor
        if key not in self._chance:
            fresh = reinitialized(student, self.seed)
            r_maps = self._attribute(method, "student", fresh, x, target, train_inputs)
            ok = ok & torch.isfinite(r_maps.flatten(1)).all(1)
            metrics = AgreementCollection(k=self.k, names=CHANCE_METRICS).to(x.device)
            if ok.any():
                metrics.update(r_maps[ok], t_maps[ok])
            self._chance[key] = {name: float(value) for name, value in metrics.compute().items()}
        return self._chance[key]

    def _metrics(self, method: str, k: int, num_classes: int, device) -> tuple[AgreementCollection, PerClassAgreement]:
        """The method's metric objects, built once and reset for each run."""
        key = (method, k, num_classes)
        if key not in self._metric_objects:
            self._metric_objects[key] = (AgreementCollection(k=k), PerClassAgreement("rank_correlation", num_classes))
        metrics, per_class = self._metric_objects[key]
        metrics, per_class = metrics.to(device), per_class.to(device)
        metrics.reset(), per_class.reset()
        return metrics, per_class

    def _finite(self, t_maps: Tensor, s_maps: Tensor, method: str) -> Tensor:
        ok = torch.isfinite(t_maps.flatten(1)).all(1) & torch.isfinite(s_maps.flatten(1)).all(1)
        if not bool(ok.all()) and not self._warned_nonfinite:
            warnings.warn(
                f"{int((~ok).sum())} probe(s) got NaN/infinite {method} attributions and are skipped "
                "(counted in .../nonfinite); training continues",
                RuntimeWarning,
                stacklevel=2,
            )
            self._warned_nonfinite = True
        return ok

    @torch.no_grad()
    def _predict(self, model, x: Tensor) -> Tensor:
        return torch.cat([model(xb) for xb in x.split(self.batch_size)])

    def run(self, trainer: Trainer, pl_module: LightningModule, split: str, epoch: int | None = None) -> dict[str, float]:
        """Explain, measure and log; returns the logged scalars (also kept in ``last_results``).
        ``epoch``: the epoch the results are logged for (default: the trainer's current one)."""
        epoch = trainer.current_epoch if epoch is None else epoch
        teacher, student = pl_module.teacher, pl_module.student
        was_training = student.training
        student.eval()
        try:
            results = self._run(trainer, pl_module, teacher, student, split, epoch)
        finally:
            student.train(was_training)
        self.last_results, self.last_epoch = results, epoch
        if trainer.state.fn == "fit":
            self._explained_step = trainer.global_step
        return results

    def _run(self, trainer, pl_module, teacher, student, split: str, epoch: int) -> dict[str, float]:
        self._finish_teacher_job()
        device = pl_module.device
        x, y = self._probe_batch(trainer, split)
        if self._checked_shape != tuple(x.shape[1:]):  # inputs not known at setup: check before explaining
            self.check_settings(trainer, pl_module, tuple(x.shape[1:]))
        x, y = x.to(device), y.to(device)
        train_inputs = self._train_inputs(trainer, device)
        t_logits, s_logits = self._predict(teacher, x), self._predict(student, x)
        target = {"teacher": t_logits.argmax(-1), "student": s_logits.argmax(-1), "label": y}[self.target]
        self._probe_key = _probe_key(x, target)
        num_classes = t_logits.shape[-1]
        prefix = f"{split}/explain"
        results: dict[str, float] = {}
        for method in self.methods:
            teacher_side, s_maps = self._explain(method, teacher, student, x, target, train_inputs)
            t_maps = teacher_side["maps"]
            ok = self._finite(t_maps, s_maps, method)
            metrics, per_class = self._metrics(method, self.k, num_classes, device)
            if ok.any():
                metrics.update(s_maps[ok], t_maps[ok])
                per_class.update(s_maps[ok], t_maps[ok], y[ok])
            for name, value in metrics.compute().items():  # synced over ranks
                results[f"{prefix}/{method}/{name}"] = float(value)
            for name, value in self._chance_level(method, teacher, student, x, target, train_inputs, t_maps, ok).items():
                results[f"{prefix}/{method}/chance_{name}"] = value
            nonfinite = torch.tensor(float((~ok).sum()), device=device)
            results[f"{prefix}/{method}/nonfinite"] = float(trainer.strategy.reduce(nonfinite, reduce_op="sum"))
            if self.faithfulness:
                student_side = self._faithfulness_scores(method, student, x, s_maps, target)
                for role, scores in (("teacher", teacher_side), ("student", student_side)):
                    for name in FAITHFULNESS_SCORES:  # over the probes both maps are finite for
                        results[f"{prefix}/{method}/{role}_{name}"] = _global_mean(trainer, scores[name][ok])
            table = per_class.table(self._class_names(trainer))
            artifacts = (epoch, split, method, x, y, t_logits, s_logits, t_maps, s_maps, table)
            if trainer.state.fn == "fit":  # draw once, at the end of fit: figures cost more than the maps
                self._pending = [p for p in self._pending if p[2] != method] + [artifacts]
            elif trainer.is_global_zero:
                self._log_artifacts(trainer, *artifacts)
        agree = (t_logits.argmax(-1) == s_logits.argmax(-1)).float()
        results[f"{prefix}/prediction_agreement"] = _global_mean(trainer, agree)
        if self.surrogate:  # one tree on every rank's probes, in probe order (as in a single process)
            probes, predictions = _gather_probes(trainer, x.flatten(1)), _gather_probes(trainer, s_logits.argmax(-1))
            report = fit_surrogate(probes.cpu(), predictions.cpu(), seed=self.seed)
            results[f"{prefix}/surrogate/fidelity"] = report.fidelity
            results[f"{prefix}/surrogate/leaves"] = float(report.n_leaves)
        if trainer.state.fn == "fit":
            _write_scalars(trainer, results, epoch)
        else:  # through self.log, so trainer.validate()/test() return and print them
            for name, value in results.items():
                pl_module.log(name, value, sync_dist=False, rank_zero_only=False)
        return results

    def _faithfulness_scores(self, method: str, model, x: Tensor, maps: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Per-probe deletion/insertion AUC and infidelity of ``model``'s own maps (NaN where the
        map is not finite)."""
        multiply = method not in LOCAL_METHODS  # local maps (gradients) are scored against additive noise
        finite = torch.isfinite(maps.flatten(1)).all(1)
        scores = {name: torch.full((len(x),), float("nan"), device=x.device) for name in FAITHFULNESS_SCORES}
        if finite.any():
            xs, ms, ts = x[finite], maps[finite], target[finite]
            deletion, insertion = deletion_insertion_auc(model, xs, ms, ts)
            infidelity = infidelity_score(model, xs, ms, ts, seed=self.seed, multiply_by_inputs=multiply)
            for name, values in zip(FAITHFULNESS_SCORES, (deletion, insertion, infidelity)):
                scores[name][finite] = values.float()
        return scores

    @staticmethod
    def _class_names(trainer) -> list[str] | None:
        return getattr(trainer.datamodule, "class_names", None)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            for artifacts in self._pending:
                self._log_artifacts(trainer, *artifacts)
        self._pending = []

    def _log_artifacts(self, trainer, epoch, split, method, x, y, t_logits, s_logits, t_maps, s_maps, table) -> None:
        log_table(trainer, f"{split}/explain/{method}/per_class", pd.DataFrame(table), epoch)
        if not self.log_images:
            return
        n = min(self.num_images, len(x))
        labels = [f"y={int(y[i])} t={int(t_logits[i].argmax())} s={int(s_logits[i].argmax())}" for i in range(n)]
        image = explanation_image(
            x[:n].cpu(), t_maps[:n].cpu(), s_maps[:n].cpu(), labels=labels,
            feature_names=getattr(trainer.datamodule, "feature_names", None),
            title=f"{method} ({split}, epoch {epoch})",
        )
        log_image(trainer, f"{split}/explain/{method}/heatmaps", image, epoch)


def _last_epoch(trainer: Trainer) -> bool:
    """Whether fit is in its last epoch by ``max_epochs`` (an earlier stop is seen in on_train_end)."""
    return trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs


def _dataset(trainer: Trainer, split: str):
    """The dataset of the split's (first) loader; ``None`` when there is none."""
    loaders = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return getattr(loaders, "dataset", None)


def _known_input_shape(trainer: Trainer, pl_module: LightningModule) -> tuple[int, ...] | None:
    """One sample's shape where it is known before the data are loaded: a kdlight datamodule's
    ``input_shape`` or the module's ``example_input_array``; ``None`` otherwise."""
    shape = getattr(trainer.datamodule, "input_shape", None)
    if shape is not None:
        return tuple(int(n) for n in shape)
    example = getattr(pl_module, "example_input_array", None)
    return tuple(example.shape[1:]) if isinstance(example, Tensor) else None


def _patch_problem(method: str, input_shape: tuple[int, ...], patch_size: int | None) -> str:
    """One line on why ``patch_size`` does not fit inputs of ``input_shape`` ([C, L] / [C, H, W])."""
    sizes = input_shape[1:]
    fitting = next(p for p in range(1, min(sizes) + 1)
                   if math.prod(-(-n // p) for n in sizes) <= MAX_FEATURES_WITHOUT_PATCHES or p == min(sizes))
    if patch_size is None:
        reason = (f"its {math.prod(sizes)} positions are more than the {MAX_FEATURES_WITHOUT_PATCHES} features allowed "
                  f"without patches")
    else:
        reason = f"patch_size={patch_size} is larger than the input's {'x'.join(map(str, sizes))} positions"
    return (f"ExplanationAgreement {method} on inputs of shape {list(input_shape)}: {reason}; set "
            f"method_args: {{{method}: {{patch_size: {fitting}}}}} (square patches, or 1-D segments, as features)")


def _layer_hint(model, layer: str | None) -> str:
    """A few layer names to choose from: those close to ``layer``, else the conv layers."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6) if layer else []
    if close:
        return f"close names: {', '.join(close)}"
    convs = conv_layer_names(model)
    pool, what = (convs, "conv layers") if convs else (names, "layers")
    shown = ", ".join(pool[-10:]) if pool else "none"
    return f"its {what}: {'..., ' if len(pool) > 10 else ''}{shown}"


def _probe_key(x: Tensor, target: Tensor) -> str:
    """Fingerprint of the probe inputs and their targets (part of every teacher cache key)."""
    return f"{data_fingerprint(x)}|{data_fingerprint(target)}"


def _write_scalars(trainer: Trainer, results: dict[str, float], epoch: int) -> None:
    """Hand the (already synced) scalars to every logger and to ``trainer.callback_metrics``.

    This is what ``LightningModule.log`` does at epoch end, minus its per-key bookkeeping, which
    costs about a millisecond per key (some 35 keys per run); used inside ``fit``, where that cost
    counts against training. Loggers write on rank zero only.
    """
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in results.items()})
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics({**results, "epoch": epoch}, step=trainer.global_step)
            logger.save()


def _global_mean(trainer: Trainer, values: Tensor) -> float:
    """Mean of the finite ``values`` of every rank (not a mean of per-rank means); NaN if none."""
    values = values.float()
    finite = torch.isfinite(values)
    total = trainer.strategy.reduce(torch.where(finite, values, torch.zeros_like(values)).sum(), reduce_op="sum")
    count = trainer.strategy.reduce(finite.sum().float(), reduce_op="sum")
    return float(total / count) if float(count) > 0 else float("nan")


def _gather_probes(trainer: Trainer, t: Tensor) -> Tensor:
    """Every rank's share ``probes[rank::world]`` put back in probe order (shares may differ by one)."""
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return t
    parts = gather_all_tensors(t.contiguous())
    out = t.new_empty((sum(len(part) for part in parts), *t.shape[1:]))
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


def _load_entry(path: Path | None, device) -> dict[str, Tensor] | None:
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute (and overwrite) it
        warnings.warn(f"ignoring unreadable teacher explanation cache {path} ({err}); recomputing it", stacklevel=3)
        return None


def _save_entry(path: Path | None, entry: dict[str, Tensor]) -> None:
    """Write atomically (a temporary file renamed into place), so readers never see half a file."""
    if path is None:
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: value.detach().cpu() for name, value in entry.items()}, tmp)
        os.replace(tmp, path)
    except OSError as err:  # e.g. a read-only teacher directory: keep going with the in-memory copy
        warnings.warn(f"could not write the teacher explanation cache {path} ({err}); it stays in memory for this run", stacklevel=3)
