"""Int8 quantisation of a student with torchao: post-training, and quantisation-aware distillation.

Schemes (torchao 0.18, eager CPU):

- ``"dynamic"``: ``Int8DynamicActivationInt8WeightConfig``: int8 weights (symmetric, one scale per
  output channel) and activations quantised to int8 on the fly per row (asymmetric: the inputs of
  most layers follow a ReLU, so a symmetric range would waste half of it). Input gradients do not
  flow through the quantised activations: gradient attributions (Captum saliency, IG) of such a
  model fail ("differentiated Tensor ... not used in the graph"); perturbation methods work, and
  gradient methods work on its fake-quantised twin (:mod:`kdlight.compression.twin`).
- ``"weight_only"``: ``Int8WeightOnlyConfig``: the same int8 weights, float activations; gradients
  flow.

torchao's int8 configs quantise ``nn.Linear`` only. ``Conv1d``/``Conv2d`` stay float (forcing them
fails: ``Int8Tensor`` implements no ``aten.convolution``), as do embeddings and norms.

Quantisation-aware training (:class:`QuantizationAwareTraining`) fake-quantises the student's
Linear layers with the same scheme (torchao ``QATConfig`` prepare), trains through them (straight-
through estimator), then converts: the fake-quantised layers go back to ``nn.Linear`` and the
post-training config above is applied, so the converted model computes what the fake-quantised one
did (to float rounding). torchao 0.18's ``QATConfig(base_config=...)`` cannot infer fake
quantisation for ``Int8DynamicActivationInt8WeightConfig`` and has no symmetric per-token fake
quantiser, hence the explicit asymmetric per-token / symmetric per-channel ``IntxFakeQuantizeConfig``.

Speed: in eager mode on CPU torchao's int8 path is slower than float32 for MLP students (it
quantises activations in Python-dispatched ops every call; its fast kernels come with
``torch.compile``); what int8 buys here is size (about a quarter). See ``scripts/bench/compression.py``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from kdlight.core.batch import as_batch

#: the post-training schemes, by name
INT8_MODES = ("dynamic", "weight_only")
#: what the quantisation-aware callback gives validate/test/predict outside a fit
EVALUATE_AS = ("int8", "fake_quant", None)
#: nn.Module attributes that hold forward/backward hooks; a module swap carries them to the new module
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _torchao():
    """Import torchao quietly: on a CPU-only install it logs that its CUDA kernels did not load."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as quantization
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return quantization


def _check_mode(mode: str) -> None:
    if mode not in INT8_MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; choose one of {list(INT8_MODES)}")


def int8_config(mode: str = "dynamic"):
    """The torchao post-training config of ``mode`` (see the module docstring)."""
    _check_mode(mode)
    tq = _torchao()
    if mode == "dynamic":
        return tq.Int8DynamicActivationInt8WeightConfig(
            act_mapping_type=tq.MappingType.ASYMMETRIC, set_inductor_config=False
        )
    return tq.Int8WeightOnlyConfig(set_inductor_config=False)


def fake_quantize_configs(mode: str = "dynamic") -> tuple[Any, Any]:
    """``(activation, weight)`` torchao fake-quantisation configs that simulate ``int8_config(mode)``."""
    _check_mode(mode)
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False) if mode == "dynamic" else None
    return activation, weight


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers torchao's int8 configs quantise on CPU: the ``nn.Linear`` modules."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _require_linear(model: nn.Module, what: str) -> None:
    if not quantizable_layers(model):
        kinds = sorted({type(m).__name__ for m in model.modules() if not list(m.children())})
        raise ValueError(
            f"{what}: {type(model).__name__} has no nn.Linear layer, the only kind torchao's int8 configs quantise on "
            f"CPU (its layers: {', '.join(kinds) or 'none'}); give the student a Linear head or leave it float"
        )


def _swap(model: nn.Module, config) -> nn.Module:
    """``torchao.quantize_(model, config)``, carrying each replaced module's hooks (feature taps,
    explanation hooks) over to its replacement, so hooks registered before the swap keep firing."""
    before = dict(model.named_modules())
    _torchao().quantize_(model, config)
    for name, module in model.named_modules():
        old = before.get(name)
        if old is not None and old is not module:
            for attr in _HOOK_DICTS:
                if attr in old.__dict__:
                    object.__setattr__(module, attr, old.__dict__[attr])
    return model


def _is_quantized(model: nn.Module) -> bool:
    return any(type(p) is not nn.Parameter for p in model.parameters())


def dequantize_(model: nn.Module) -> nn.Module:
    """Replace every quantised parameter of ``model`` by a float ``nn.Parameter`` of its dequantised
    values, in place (so a float checkpoint can be loaded into it again); returns it."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if type(param) is not nn.Parameter:
                setattr(module, name, nn.Parameter(param.dequantize(), requires_grad=True))
    return model


def quantize_int8(model: nn.Module, mode: str = "dynamic", inplace: bool = False) -> nn.Module:
    """Post-training int8 quantisation of ``model``'s Linear layers; a copy unless ``inplace``.

    Other layers stay float. The quantised weights load back with ``torch.load(weights_only=True)``
    (see :func:`load_int8`). A model without Linear layers, or an unknown mode: one-line ValueError.
    """
    config = int8_config(mode)
    _require_linear(model, "quantize_int8")
    target = model if inplace else copy.deepcopy(model)
    return _swap(target, config)


def save_int8(model: nn.Module, path: str | Path) -> Path:
    """Save a quantised model's ``state_dict`` (int8 data and scales as torchao tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def load_int8(model: nn.Module, path: str | Path, mode: str = "dynamic") -> nn.Module:
    """Load a state_dict saved by :func:`save_int8` (weights-only) into ``model``, a freshly built
    float model of the same architecture, quantised here with ``mode`` first; returns it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    quantized = quantize_int8(model, mode, inplace=True)
    quantized.load_state_dict(state, assign=True)
    return quantized


@torch.no_grad()
def compare_predictions(reference: nn.Module, compressed: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Accuracy of ``compressed`` and of ``reference``, their top-1 agreement and the largest
    absolute difference of their logits (``max_logit_difference``) over ``batches`` (any form
    :func:`kdlight.core.batch.as_batch` reads; accuracy needs targets, else NaN).

    Both models run in eval mode on CPU (int8 kernels are CPU kernels); their modes are restored.
    """
    modes = (reference.training, compressed.training)
    reference.eval(), compressed.eval()
    agree = correct = correct_ref = seen = labeled = 0
    max_difference = 0.0
    try:
        for raw in batches:
            batch = as_batch(raw)
            x = batch.inputs.cpu()
            ref_logits, logits = reference(x), compressed(x)
            max_difference = max(max_difference, float((ref_logits - logits).abs().max()))
            ref_pred, pred = ref_logits.argmax(-1), logits.argmax(-1)
            agree += int((ref_pred == pred).sum())
            seen += len(x)
            if batch.target is not None:
                target = batch.target.cpu()
                correct += int((pred == target).sum())
                correct_ref += int((ref_pred == target).sum())
                labeled += len(target)
    finally:
        reference.train(modes[0]), compressed.train(modes[1])
    if seen == 0:
        raise ValueError("compare_predictions got no batches; pass a non-empty loader (e.g. dm.val_dataloader())")
    nan = float("nan")
    return {
        "accuracy": correct / labeled if labeled else nan,
        "reference_accuracy": correct_ref / labeled if labeled else nan,
        "agreement": agree / seen,
        "max_logit_difference": max_difference,
    }


class QuantizationAwareTraining(Callback):
    """Distil into a fake-quantised student, then convert it to int8 (torchao QAT).

    At the start of epoch ``start_epoch`` the student's Linear layers become torchao
    ``FakeQuantizedLinear`` modules simulating ``mode`` (see the module docstring). They keep the
    same ``nn.Parameter`` objects, so the optimizer trains on; the teacher is never touched; an
    :class:`~kdlight.objectives.ExplanationPreservation` ``dense_student`` reference is the float
    student frozen just before this swap; hooks
    (feature taps) move to the new modules; validation during the fit sees the fake-quantised
    student. After the whole fit (the ``teardown`` hook, so every ``on_fit_end``, e.g. the
    explanation callback's, still sees the differentiable fake-quantised student) the student is
    converted to the real int8 model in place.

    Checkpoints: fake quantisation adds no state, so every checkpoint of the fit holds the float
    weights under the float model's keys and loads weights-only into the unquantised student.
    ``validate``/``test``/``predict`` outside a fit quantise the student after the checkpoint is
    restored (``evaluate_as``): ``kdlight test -c <config with this callback> --ckpt_path best.ckpt``
    evaluates the int8 student. The int8 student cannot be explained by gradients (``dynamic``);
    explain it through :func:`kdlight.compression.twin.fake_quantized_twin` (its own int8 weights,
    dequantised, with torchao fake quantisation of the activations), or, with the explanation
    callback at test time, use ``evaluate_as: fake_quant`` and ``convert_at_end: false``: the
    fake-quantised student predicts what the int8 one does (to float rounding) and stays
    differentiable. Chance levels (:func:`kdlight.training.reinit.reinitialized`) of an int8 student
    are those of a freshly drawn float student of the same architecture.

    Args:
        start_epoch: first epoch trained with fake quantisation (0: the whole fit).
        mode: ``"dynamic"`` or ``"weight_only"``.
        convert_at_end: convert the student to int8 when the fit ends.
        evaluate_as: what validate/test/predict outside a fit see: ``"int8"`` (the converted
            model), ``"fake_quant"`` (its differentiable simulation) or ``None`` (the student as it is).
        attribute: the LightningModule attribute holding the model to quantise (default:
            ``student`` when the module has one, else ``model``).
    """

    def __init__(
        self,
        start_epoch: int = 0,
        mode: str = "dynamic",
        convert_at_end: bool = True,
        evaluate_as: str | None = "int8",
        attribute: str | None = None,
    ) -> None:
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"QuantizationAwareTraining start_epoch must be an integer >= 0, got {start_epoch!r}")
        _check_mode(mode)
        self.start_epoch, self.mode = start_epoch, mode
        if evaluate_as not in EVALUATE_AS:
            raise ValueError(
                f"QuantizationAwareTraining evaluate_as={evaluate_as!r} is unknown; choose one of {EVALUATE_AS}"
            )
        self.convert_at_end, self.evaluate_as = convert_at_end, evaluate_as
        self.attribute = attribute
        self.prepared = False  # the student's Linear layers are fake-quantised
        self.converted = False  # the student holds int8 weights
        self._hooked = False  # the student carries the float-checkpoint load hook

    def target(self, pl_module: LightningModule) -> nn.Module:
        """The model this callback quantises."""
        name = self.attribute or ("student" if hasattr(pl_module, "student") else "model")
        model = getattr(pl_module, name, None)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"QuantizationAwareTraining: {type(pl_module).__name__} has no module attribute {name!r}; "
                "set attribute to the name of the model to quantise"
            )
        return model

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _require_linear(self.target(pl_module), "QuantizationAwareTraining")

    def prepare(self, pl_module: LightningModule) -> nn.Module:
        """Fake-quantise the student's Linear layers in place (a no-op once prepared or converted)."""
        model = self.target(pl_module)
        if self.prepared or self.converted or _is_quantized(model):
            return model
        activation, weight = fake_quantize_configs(self.mode)
        from torchao.quantization.qat import QATConfig

        _swap(model, QATConfig(activation_config=activation, weight_config=weight, step="prepare"))
        self.prepared = True
        return model

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.prepared or self.converted:
            return
        objective, model = getattr(pl_module, "objective", None), self.target(pl_module)
        pruned = any(name.endswith("_mask") for name, _ in model.named_buffers())
        if isinstance(objective, nn.Module) and not pruned:  # preservation keeps the float student's maps
            from kdlight.objectives.preservation import capture_references

            capture_references(objective, model, refresh=True)
        if trainer.current_epoch < self.start_epoch:
            return
        model = self.prepare(pl_module)
        optimized = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in optimized]
        if trainer.optimizers and missing:
            raise RuntimeError(
                f"QuantizationAwareTraining: fake quantisation replaced parameters {missing[:3]} the optimizer does "
                "not hold; this torchao version copies weights on prepare, pin torchao 0.18 or report it"
            )

    def convert(self, pl_module: LightningModule) -> nn.Module:
        """Turn the (fake-quantised or float) student into the int8 model, in place; returns it."""
        model = self.target(pl_module)
        if self.converted or _is_quantized(model):
            self.converted = True
            return model
        # evaluation hooks run under inference mode: int8 weights made there could never enter autograd
        with torch.inference_mode(False), torch.no_grad():
            if self.prepared:
                from torchao.quantization.qat import QATConfig

                _swap(model, QATConfig(step="convert"))  # FakeQuantizedLinear -> nn.Linear, same weights
                self.prepared = False
            quantize_int8(model, self.mode, inplace=True)
        self.converted = True
        if not self._hooked:  # a float checkpoint loaded later (trainer.test(ckpt_path=...)) finds float weights
            model.register_load_state_dict_pre_hook(self._float_state_incoming)
            self._hooked = True
        return model

    def _float_state_incoming(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        """Before a load into the converted model: if the state holds float weights where the model
        holds int8 ones, make the model float again; evaluation start quantises the loaded weights."""
        params = dict(module.named_parameters())
        incoming = [k for k in params if type(params[k]) is not nn.Parameter and prefix + k in state_dict]
        if any(type(state_dict[prefix + k]) in (torch.Tensor, nn.Parameter) for k in incoming):
            dequantize_(module)
            self.converted = False

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self.convert_at_end:
            return
        if not self.prepared and not self.converted:
            rank_zero_warn(
                f"QuantizationAwareTraining: the fit ended before start_epoch={self.start_epoch}, so the student "
                "never trained with fake quantisation; it is quantised post-training instead"
            )
        self.convert(pl_module)

    def _evaluate_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" or self.evaluate_as is None:
            return
        if self.evaluate_as == "int8":
            self.convert(pl_module)
        elif _is_quantized(self.target(pl_module)):
            rank_zero_warn(
                "QuantizationAwareTraining(evaluate_as='fake_quant'): the student is already int8 (converted when the "
                "fit ended); set convert_at_end=false to keep it fake-quantised, or load a checkpoint with ckpt_path"
            )
        else:
            self.prepare(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_start(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_start(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_start(trainer, pl_module)
