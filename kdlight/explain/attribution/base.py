"""The ``Method`` base class: an attribution method's metadata and how it is computed.

A method is one subclass, declared once in the file that implements it, with its metadata as class
attributes. Built-in methods are registered by name (:func:`kdlight.explain.attribution.registry.register`);
any subclass can also be named by its class path (``my_package.module.MyMethod``), e.g. in YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor, nn

from kdlight.core.modality import Modality

if TYPE_CHECKING:
    from kdlight.explain.attribution.config import AttributionConfig

__all__ = ["Method", "CaptumMethod"]


class Method:
    """An attribution method. Subclasses set the metadata and implement :meth:`attribute`.

    Metadata (class attributes):

    * ``name`` -- the registry name (class-path methods: their class path).
    * ``takes_baseline`` -- compares the input with a baseline (``AttributionConfig.baseline``:
      zeros or the training mean); ``False``: the baseline settings are ignored.
    * ``baseline_distribution`` -- averages over a sample of training inputs: ``baseline="sample"``
      is allowed and ``"auto"`` picks it when training inputs are given (SHAP).
    * ``random`` -- draws random numbers (seeded from ``config.seed`` in a forked RNG).
    * ``hooks`` -- registers hooks on (or otherwise touches) the model while it runs.
    * ``pure`` -- neither ``random`` nor ``hooks`` (derived): the call leaves RNGs, warning filters
      and modules alone, so it may run on another thread beside training.
    * ``local`` -- a local sensitivity map (no input factor, e.g. a gradient): infidelity perturbs
      by additive noise; ``False`` (global maps: contributions relative to a baseline): the noise is
      scaled by ``x - baseline`` (``multiply_by_inputs``).
    * ``perturbation`` -- perturbs groups of features (``patch_size`` sets the groups; see
      :meth:`kdlight.core.modality.Modality.feature_mask`).
    * ``noise_tunnel`` -- may be wrapped by Captum's ``NoiseTunnel`` (``AttributionConfig.noise_tunnel``).
    * ``explains_layer`` -- reads ``AttributionConfig.layer`` (Grad-CAM).
    * ``modalities`` -- names of the input modalities it supports (``None``: all).
    * ``layer_variant`` -- the ``captum.attr`` layer method that computes it for token ids at the
      model's embedding layer (``get_input_embeddings()``), e.g. ``"LayerIntegratedGradients"``;
      ``None``: a gradient method that cannot explain tokens (see
      :mod:`kdlight.explain.attribution.tokens`).
    * ``training_map`` -- a differentiable map for training-time matching,
      ``fn(model, x, target, *, create_graph, layer, n_steps, baseline, modality) -> Tensor``,
      or ``None``.
    """

    name: ClassVar[str] = ""
    takes_baseline: ClassVar[bool] = False
    baseline_distribution: ClassVar[bool] = False
    random: ClassVar[bool] = False
    hooks: ClassVar[bool] = False
    pure: ClassVar[bool] = True
    local: ClassVar[bool] = False
    perturbation: ClassVar[bool] = False
    noise_tunnel: ClassVar[bool] = False
    explains_layer: ClassVar[bool] = False
    modalities: ClassVar[frozenset[str] | None] = None
    layer_variant: ClassVar[str | None] = None
    training_map: ClassVar[Callable[..., Tensor] | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.pure = not cls.random and not cls.hooks

    @classmethod
    def supports(cls, modality: Modality) -> bool:
        """Whether the method explains inputs of ``modality``: those it declares, else all except
        token ids, which need a ``layer_variant`` (at the embeddings) or token replacement."""
        if cls.modalities is not None:
            return modality.name in cls.modalities
        return modality.name != "text" or cls.layer_variant is not None or cls.perturbation

    def attribute(
        self,
        model: nn.Module,
        inputs: Tensor,
        target: Tensor,
        config: AttributionConfig,
        *,
        baselines: Tensor | None,
        modality: Modality,
    ) -> Tensor:
        """Attributions ``[N, ...]`` (``inputs``' shape) of ``model`` for ``target`` ([N] long).

        Called inside the attribution context (eval mode, gradients on, no autocast, seeded RNG
        for random methods) with ``inputs`` on the model's device and dtype; ``baselines`` are
        ``[1 or B, ...]`` for methods that take them, else ``None``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement attribute()")


class CaptumMethod(Method):
    """A method computed by one Captum ``Attribution`` on inputs that require grad (gradient
    methods), optionally wrapped by ``NoiseTunnel``. Subclasses implement :meth:`explainer`; token
    ids (text) go to the ``layer_variant`` at the embedding layer instead."""

    def explainer(
        self, model: nn.Module, inputs: Tensor, config: AttributionConfig, baselines: Tensor | None
    ) -> tuple[object, dict]:
        """The Captum attribution object and its ``attribute`` keyword arguments."""
        raise NotImplementedError

    def finish(self, result: Tensor, inputs: Tensor, modality: Modality) -> Tensor:
        """Turn Captum's result into a map of ``inputs``' shape (default: as is)."""
        return result

    def attribute(self, model, inputs, target, config, *, baselines, modality) -> Tensor:
        if not inputs.is_floating_point():
            if modality.name == "text":
                from kdlight.explain.attribution.tokens import layer_attributions

                return layer_attributions(self, model, inputs, target, config, baselines=baselines, modality=modality)
            raise ValueError(
                f"{self.name or type(self).__name__} differentiates the model with respect to its inputs, which needs floating "
                f"inputs; these are {inputs.dtype}"
            )
        explainer, kwargs = self.explainer(model, inputs, config, baselines)
        _use_one_backward_seed(explainer)
        x = inputs.clone().requires_grad_(True)
        if config.noise_tunnel is not None:
            from captum.attr import NoiseTunnel

            nt_kwargs = {
                "nt_type": config.noise_tunnel,
                "nt_samples": config.nt_samples,
                "stdevs": float(config.nt_stdevs),
            }
            if config.internal_batch_size is not None:
                nt_kwargs["nt_samples_batch_size"] = max(
                    1, min(config.nt_samples, config.internal_batch_size // inputs.shape[0])
                )
            result = NoiseTunnel(explainer).attribute(x, target=target, **nt_kwargs, **kwargs)
        else:
            result = explainer.attribute(x, target=target, **kwargs)
        return self.finish(result, inputs, modality)


def _summed_gradients(forward_fn, inputs, target_ind=None, additional_forward_args=None):
    """Captum's ``compute_gradients`` with one backward seed for all outputs.

    Captum differentiates ``unbind(outputs)``: one scalar, and one ``ones_like`` seed built in
    Python, per sample and step. ``grad(outputs, inputs, ones_like(outputs))`` is the same sum of
    gradients in one call; for a small model it halves the time of integrated gradients.
    """
    import torch
    from captum._utils.common import _run_forward

    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ValueError("attribution needs a target class: the model returns several outputs per sample")
        return torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))


def _use_one_backward_seed(explainer: object) -> None:
    """Swap Captum's default gradient function for :func:`_summed_gradients` (same values)."""
    from captum._utils.gradient import compute_gradients

    if getattr(explainer, "gradient_func", None) is compute_gradients:
        explainer.gradient_func = _summed_gradients
