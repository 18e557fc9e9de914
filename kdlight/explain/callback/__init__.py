"""ExplanationAgreement: does the student explain its decisions the way the teacher does?

The callback orchestrates; its parts live beside it: :mod:`.probes` (the fixed probe set, DDP
reductions), :mod:`.teacher_side` (the teacher's maps and faithfulness, cached), :mod:`.measure`
(maps, agreement, chance level, faithfulness, localisation, stability, surrogate), :mod:`.outputs`
(scalars and artifacts to the loggers) and :mod:`.settings` (argument checks). Each part of a run
is reported to the trainer's profiler as ``kdlight.explain.<part>``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from kdlight.compression.twin import differentiable
from kdlight.core.batch import Batch, as_batch, collate
from kdlight.core.datamodule import data_capabilities
from kdlight.explain.callback.measure import Measure, faithfulness_scalars
from kdlight.explain.callback.outputs import MethodArtifacts, log_scalars
from kdlight.explain.callback.probes import Probes, ProbeSet, explained_epoch, global_mean, global_sum, split_dataset
from kdlight.explain.callback.settings import (
    check_arguments,
    check_settings,
    known_input_shape,
    metric_specs,
    stability_options,
)
from kdlight.explain.callback.teacher_side import TeacherSide, cache_directory

__all__ = ["ExplanationAgreement"]


class ExplanationAgreement(Callback):
    """Explain teacher and student on a fixed probe set of validation samples and log agreement.

    For every method in ``methods`` it logs ``{split}/explain/{method}/{metric}``: the agreement
    ``metrics`` (by default every registered metric comparing two maps: cosine, rank correlation,
    Pearson, top-k feature/rank/sign/signed-rank agreement, pairwise rank agreement),
    ``chance_{metric}`` for those with a chance level (the same for a freshly initialised student:
    the floor to read curves against), the deletion/insertion AUC and infidelity of both maps
    (``faithfulness``), ``{role}_localisation_mass`` / ``{role}_localisation_topk`` of both maps when
    the data module knows the relevant features (``ground_truth_masks(split, indices)``, e.g. the
    shortcut digits' cue), ``{role}_sensitivity_max`` / ``{role}_self_agreement`` of both models
    (``stability``), a per-class table and a figure input | teacher | student of ``num_images``
    probes (rank zero; drawn once at the end of ``fit``, and in every ``validate``/``test``); and
    a decision-tree surrogate of the student (``surrogate``; not for text). An int8 student (torchao)
    is explained by its fake-quantised twin. The teacher's maps and faithfulness
    are computed once per probe set (unless ``target="student"``); with ``explanation_cache_dir``
    also once per teacher, for every student distilled from it.

    Text (token ids, the data module's :class:`~kdlight.core.modality.Text`): maps are 0 at padding
    and every map metric (agreement, chance level, per-class table, localisation on token masks
    ``[n, T]``) sees each probe's real tokens only, top-k out of them (all of them for a probe with
    fewer than ``k``; see :mod:`.tokens`); the figure is each sentence with its tokens shaded by
    both maps, also as HTML (``.../heatmaps_html``); infidelity is NaN (token ids take no noise)
    and ``stability`` is refused.

    Args:
        methods: attribution methods: registered names (:func:`kdlight.explain.method_names`) or
            class paths of :class:`kdlight.explain.Method` subclasses.
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
        explanation_cache_dir: directory for the teacher's attribution maps and faithfulness
            across runs, keyed by its weights, the probes, the targets and the settings (not the
            teacher's logits: that is ``DistillationModule(teacher_cache=...)``); ``"auto"``:
            ``explanations/`` beside the teacher checkpoint (memory only when the teacher was not
            loaded from one); ``None``: memory only.
        metrics: the agreement metrics (registered names or import paths of metrics comparing two
            maps, see :func:`kdlight.explain.metric_names`); default: all of them.
        stability: ``None`` (off), or the settings of the stability metrics
            (:mod:`kdlight.explain.metrics.stability`): ``noise_scale``, ``n_samples``, ``seed`` (default
            ``seed``; teacher and student see the same noise), ``agreement`` (the metric of
            ``self_agreement``, default ``rank_correlation``), e.g. ``{noise_scale: 0.05, n_samples: 4}``.
            Each costs ``n_samples + 1`` more attributions per model and run.

    Settings are checked before any work, each error one line naming the option to change:
    values in ``__init__``; what needs the models or the input shape in ``setup``; the probe
    count in ``on_train_start``. ``last_epoch`` is the epoch ``last_results`` come from.
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
        explanation_cache_dir: str | None = None,
        metrics: list[str] | None = None,
        stability: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.methods = list(methods) if methods is not None else ["integrated_gradients", "saliency"]
        self.method_args = {method: dict(args or {}) for method, args in (method_args or {}).items()}
        counts = {"every_n_epochs": every_n_epochs, "num_probes": num_probes, "batch_size": batch_size, "k": k}
        check_arguments(
            self.methods, target, counts | ({"num_images": num_images} if log_images else {}), self.method_args, seed
        )
        self.every_n_epochs, self.num_probes, self.batch_size, self.k = every_n_epochs, num_probes, batch_size, k
        self.target, self.log_images, self.num_images = target, log_images, num_images
        self.faithfulness, self.surrogate, self.seed = faithfulness, surrogate, seed
        self.explanation_cache_dir = explanation_cache_dir
        specs = metric_specs(metrics)
        self.metrics, self.stability = [spec.name for spec in specs], stability
        self.probe_set = ProbeSet(num_probes, seed)  # the fixed probe samples, and each rank's share
        self._measure = Measure(self.method_args, seed, batch_size, k, specs, stability_options(stability, seed))
        self._teacher = TeacherSide(self._measure, batch_size, reuse=target != "student", faithfulness=faithfulness)
        self._models: tuple[int, int] | None = None  # ids of the teacher and student served
        self._pending: dict[str, MethodArtifacts] = {}  # drawn at the end of fit
        self._checked_shape: tuple[int, ...] | None = None  # input shape the settings were checked for
        self._train_epoch = 0  # the epoch fit is training
        self._start_step: int | None = None  # global step when fit began training
        self._explained_step: int | None = None  # global step of the last explanation in fit
        self.last_results: dict[str, float] = {}
        self.last_epoch: int | None = None

    def probe_indices(self, dataset_size: int) -> Tensor:
        """Indices of the probe samples: drawn once with ``seed``, then fixed."""
        return self.probe_set.indices(dataset_size)

    def check_settings(self, trainer: Trainer, pl_module: LightningModule, input_shape: tuple[int, ...] | None) -> None:
        """Refuse settings that cannot work with these models (and, when ``input_shape`` -- one
        sample's shape -- is known, these inputs), with one line naming the option to change."""
        stability = self.stability is not None
        check_settings(trainer, pl_module, input_shape, self.methods, self.method_args, self.k, stability)
        if input_shape is not None:
            self._checked_shape = tuple(input_shape)

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not (hasattr(pl_module, "teacher") and hasattr(pl_module, "student")):
            raise ValueError(
                "ExplanationAgreement needs a module with a teacher and a student "
                f"(kdlight.DistillationModule), got {type(pl_module).__name__}"
            )
        models = (id(pl_module.teacher), id(pl_module.student))
        changed, self._models = models != self._models, models  # another teacher or student: forget the old ones'
        self._teacher.setup(cache_directory(self.explanation_cache_dir, pl_module), models_changed=changed)
        if changed:
            self._measure.forget()
        self._checked_shape = None
        self.check_settings(trainer, pl_module, known_input_shape(trainer, pl_module))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_step, self._explained_step = trainer.global_step, None
        dataset = split_dataset(trainer, "val")
        if dataset is not None:  # before the first training step, not at the first explained epoch
            self.probe_indices(len(dataset))
            if self._checked_shape is None and len(dataset):
                self.check_settings(trainer, pl_module, tuple(as_batch(collate([dataset[0]])).inputs.shape[1:]))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_epoch = trainer.current_epoch

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Explain the final weights when the last validation epoch did not (``fit`` stopped
        early, by ``max_steps``, or the last epoch had no validation)."""
        trained = self._start_step is not None and trainer.global_step > self._start_step
        if trained and self._explained_step != trainer.global_step and split_dataset(trainer, "val") is not None:
            self.run(trainer, pl_module, "val", epoch=self._train_epoch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if explained_epoch(trainer, self.every_n_epochs):
            self.run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.run(trainer, pl_module, "test")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            for artifacts in self._pending.values():
                artifacts.log(trainer)
        self._pending = {}

    # -- the work ----------------------------------------------------------------------------
    def run(
        self, trainer: Trainer, pl_module: LightningModule, split: str, epoch: int | None = None
    ) -> dict[str, float]:
        """Explain, measure and log; returns the logged scalars (also kept in ``last_results``).
        ``epoch``: the epoch the results are logged for (default: the trainer's current one)."""
        epoch = trainer.current_epoch if epoch is None else epoch
        was_training = pl_module.student.training
        pl_module.student.eval()
        try:
            results = self._run(trainer, pl_module, split, epoch)
        finally:
            pl_module.student.train(was_training)
        log_scalars(trainer, pl_module, results, epoch)
        self.last_results, self.last_epoch = results, epoch
        if trainer.state.fn == "fit":
            self._explained_step = trainer.global_step
        return results

    def _run(self, trainer: Trainer, pl_module: LightningModule, split: str, epoch: int) -> dict[str, float]:
        batch = self.probe_set.batch(trainer, split)
        shape = tuple(batch.inputs.shape[1:])
        if self._checked_shape != shape:  # inputs not known at setup: check before explaining
            self.check_settings(trainer, pl_module, shape)
        teacher, student, device = pl_module.teacher, pl_module.student, pl_module.device
        mask = None if batch.attention_mask is None else batch.attention_mask.to(device)
        batch = Batch(batch.inputs.to(device), batch.target.to(device), batch.index, attention_mask=mask)
        probes = self._measure.probes(trainer, teacher, student, batch, self.target, self.methods, split)
        results: dict[str, float] = {}
        for method in self.methods:
            scalars, artifacts = self._explain(trainer, pl_module, probes, method, split, epoch)
            results.update({f"{split}/explain/{method}/{name}": value for name, value in scalars.items()})
            if trainer.state.fn == "fit":  # drawn once, at the end of fit: figures cost more than the maps
                self._pending.pop(method, None)
                self._pending[method] = artifacts
            elif trainer.is_global_zero:
                artifacts.log(trainer)
        agree = (probes.teacher_logits.argmax(-1) == probes.student_logits.argmax(-1)).float()
        results[f"{split}/explain/prediction_agreement"] = global_mean(trainer, agree)
        if self.surrogate and probes.modality.name != "text":  # a tree on token ids by position means little
            with trainer.profiler.profile("kdlight.explain.surrogate"):
                surrogate = self._measure.surrogate(trainer, probes)
            results.update({f"{split}/explain/surrogate/{name}": value for name, value in surrogate.items()})
        return results

    def _explain(
        self, trainer: Trainer, pl_module: LightningModule, probes: Probes, method: str, split: str, epoch: int
    ) -> tuple[dict[str, float], MethodArtifacts]:
        """One method's scalars (by metric name) and artifacts."""
        measure, teacher, student, profile = (
            self._measure,
            pl_module.teacher,
            pl_module.student,
            trainer.profiler.profile,
        )
        with profile("kdlight.explain.teacher_side"):
            teacher_side = self._teacher.get(method, teacher, probes)
        with profile("kdlight.explain.attribution"):  # an int8 student is explained by its fake-quantised twin
            t_maps, s_maps = teacher_side["maps"], measure.maps(method, "student", differentiable(student), probes)
        ok = measure.finite(method, t_maps, s_maps)
        scalars, per_class = measure.agreement(method, probes, t_maps, s_maps, ok)
        with profile("kdlight.explain.chance_level"):
            chance = measure.chance_level(method, student, probes, t_maps, ok)
        scalars.update({f"chance_{name}": value for name, value in chance.items()})
        scalars["nonfinite"] = global_sum(trainer, ~ok)
        if self.faithfulness:
            with profile("kdlight.explain.faithfulness"):
                student_side = measure.faithfulness(method, student, probes, s_maps)
            scalars.update(faithfulness_scalars(trainer, teacher_side, student_side, ok))
        if probes.masks is not None:
            with profile("kdlight.explain.metrics.localisation"):
                scalars.update(measure.localisation({"teacher": t_maps, "student": s_maps}, probes.masks, probes.valid))
        if self.stability is not None:
            with profile("kdlight.explain.metrics.stability"):
                scalars.update(measure.stability(method, {"teacher": teacher, "student": student}, probes))
        table = per_class.table(data_capabilities(trainer.datamodule).class_names)
        shown = self.num_images if self.log_images else 0
        return scalars, MethodArtifacts.of(epoch, split, method, table, probes, t_maps, s_maps, shown)
