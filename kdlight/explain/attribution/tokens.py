"""Token inputs (the ``text`` modality): attributions of token ids at the embedding layer, token
replacement for the perturbation methods, and differentiable token maps for training.

A text model takes ids ``[N, T]``, builds its own attention mask (``ids != pad_token_id``) and
exposes ``get_input_embeddings()``: the ``nn.Embedding`` whose output token attributions explain.

* Gradient methods name a Captum layer method in their ``layer_variant`` metadata and run at the
  embedding output; each token's vector is summed over the hidden dimension -> ``[N, T]``, except
  for ``saliency`` (``local``: the gradient, ``LayerGradientXActivation`` without the activation
  factor), whose map is the gradient's L2 norm per token: the sum of a gradient arriving through a
  LayerNorm is 0 up to rounding. ``input_x_gradient``: gradient x embedding; ``integrated_gradients``:
  ``LayerIntegratedGradients`` from the reference sequence; ``gradient_shap``: expected gradients
  between the embeddings of the baselines and of the input (computed here, because Captum's
  ``LayerGradientShap`` interpolates the inputs themselves, which are integer ids).
* The reference sequence is the input with every real token replaced by the baseline's token (the
  modality's ``reference_id``); padding stays padding, so padded positions never differ from the
  reference, and every map is exactly 0 there.
* Perturbation methods run one sequence at a time on its real tokens only: Captum sees the
  ``[1, M]`` real ids and a forward function that puts them back between the padding, so padding is
  never a feature; feature groups are ``patch_size`` consecutive real tokens (a sequence of fewer
  real tokens is one group), removed by replacing
  them with the reference token (Captum keeps integer inputs integer: its ablation
  ``x * (1 - mask) + baseline * mask`` runs in the inputs' dtype).
* Refused in one line, naming the methods that work: methods with neither a layer variant nor
  perturbations (DeepLift(SHAP): its rules do not cover attention's products; LRP; Grad-CAM: no
  spatial positions) and NoiseTunnel (Gaussian noise on token ids has no meaning).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kdlight.core.modality import Modality, Text
from kdlight.explain.attribution.context import target_score
from kdlight.explain.attribution.registry import METHODS

if TYPE_CHECKING:
    from kdlight.explain.attribution.base import Method
    from kdlight.explain.attribution.config import AttributionConfig

__all__ = [
    "TOKEN_MAP_KINDS",
    "is_token_input",
    "explains_tokens",
    "token_method_names",
    "check_token_method",
    "embedding_layer",
    "gradient_at_embeddings",
    "layer_attributions",
    "per_sequence",
    "token_map",
    "token_vector_maps",
]

#: what a differentiable token map multiplies the embedding-output gradient by
TOKEN_MAP_KINDS: tuple[str, ...] = ("gradient", "gradient_x_embedding", "integrated_gradients")


def is_token_input(inputs: Tensor, modality: Modality | None) -> bool:
    """Whether ``inputs`` are token ids of the text modality."""
    return modality is not None and modality.name == "text" and not inputs.is_floating_point()


def explains_tokens(method: type[Method]) -> bool:
    """Whether a method explains token ids: it has a ``layer_variant``, perturbs feature groups,
    or declares the text modality itself."""
    return method.supports(Text(vocab_size=2))


def token_method_names() -> list[str]:
    """The registered methods that explain token ids."""
    return [name for name, method in METHODS.items() if explains_tokens(method)]


def check_token_method(method: type[Method], config: AttributionConfig) -> None:
    """Refuse, in one line, a method or setting that cannot explain token ids."""
    if not explains_tokens(method):
        raise ValueError(
            f"{config.method} cannot explain token ids; methods that work for text: {', '.join(token_method_names())}"
        )
    if config.noise_tunnel is not None:
        raise ValueError(
            f"noise_tunnel adds Gaussian noise to the inputs, which are token ids here; set noise_tunnel=None "
            f"for text ({config.method} works without it)"
        )


def embedding_layer(model: nn.Module) -> nn.Module:
    """``model.get_input_embeddings()``: the layer token attributions are taken at."""
    get = getattr(model, "get_input_embeddings", None)
    layer = get() if callable(get) else None
    if not isinstance(layer, nn.Module):
        raise ValueError(
            f"token attributions are taken at the embedding layer: {type(model).__name__} needs "
            f"get_input_embeddings() returning its nn.Embedding (Hugging Face models have it)"
        )
    return layer


def gradient_at_embeddings(
    model: nn.Module, ids: Tensor, embedded: Tensor, target: Tensor, *, create_graph: bool
) -> Tensor:
    """``d sum_i logit_{target_i} / d embedded`` of ``model(ids)`` run with its embedding output
    replaced by ``embedded`` ``[N, T, D]`` (which must require grad). With ``create_graph`` the
    model's attention runs on the math kernel, so a loss on the gradient can be trained through."""
    calls: list[int] = []

    def replace(_module, _args, _output):
        calls.append(1)
        return embedded

    handle = embedding_layer(model).register_forward_hook(replace)
    try:
        with _differentiable_attention(create_graph):
            logits = model(ids)
    finally:
        handle.remove()
    if len(calls) != 1:
        raise ValueError(
            f"the embedding layer ran {len(calls)} times in {type(model).__name__}'s forward; token attributions "
            f"need get_input_embeddings() to run exactly once"
        )
    (grad,) = torch.autograd.grad(target_score(logits, target), embedded, create_graph=create_graph)
    return grad


def _differentiable_attention(create_graph: bool) -> AbstractContextManager:
    """With ``create_graph``: ``scaled_dot_product_attention`` on its math kernel, the one whose
    backward can itself be differentiated (the fused CPU / CUDA kernels' backward cannot)."""
    if not create_graph:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _keep_padding(ids: Tensor, valid: Tensor, baselines: Tensor) -> Tensor:
    """Baseline ids ``[1 or N, T]`` -> ``[N, T]`` with the input's padded positions kept as padding."""
    return torch.where(valid, baselines.expand_as(ids), ids)


def token_vector_maps(vectors: Tensor, valid: Tensor, magnitude: bool = False) -> Tensor:
    """Per-token vectors ``[N, T, D]`` -> maps ``[N, T]``, 0 at padding: summed over the hidden
    dimension (contributions: gradient x embedding, IG), or, with ``magnitude``, its L2 norm (a bare
    gradient: its sum is about 0 whenever a LayerNorm reads the embeddings, as in every transformer)."""
    reduced = vectors.square().sum(-1).add(1e-24).sqrt() if magnitude else vectors.sum(-1)
    return reduced.masked_fill(~valid, 0.0)


# ------------------------------------------------------------------------------------------
# evaluation-time gradient methods
# ------------------------------------------------------------------------------------------
def layer_attributions(
    method: Method,
    model: nn.Module,
    ids: Tensor,
    target: Tensor,
    config: AttributionConfig,
    *,
    baselines: Tensor | None,
    modality: Modality,
) -> Tensor:
    """Token maps ``[N, T]`` of a gradient method with a ``layer_variant`` (see the module notes)."""
    import captum.attr

    check_token_method(type(method), config)
    variant = method.layer_variant
    if variant is None:
        raise ValueError(
            f"{config.method} has no layer_variant to explain token ids; methods that work for text: "
            f"{', '.join(token_method_names())}"
        )
    valid, layer = modality.valid(ids), embedding_layer(model)
    if variant == "LayerGradientShap":
        return token_vector_maps(_expected_gradients(model, layer, ids, valid, target, baselines, config), valid)
    captum_class = getattr(captum.attr, variant, None)
    if captum_class is None:
        raise ValueError(f"{config.method}'s layer_variant {variant!r} is not a class of captum.attr")
    kwargs: dict[str, object] = {}
    if method.takes_baseline:
        kwargs["baselines"] = _keep_padding(ids, valid, baselines)
    if variant == "LayerIntegratedGradients":
        kwargs["n_steps"] = config.n_steps
        if config.internal_batch_size is not None:
            kwargs["internal_batch_size"] = max(config.internal_batch_size, ids.shape[0])
    explainer = captum_class(model, layer, multiply_by_inputs=not method.local)
    return token_vector_maps(explainer.attribute(ids, target=target, **kwargs), valid, magnitude=method.local)


def _expected_gradients(
    model: nn.Module,
    layer: nn.Module,
    ids: Tensor,
    valid: Tensor,
    target: Tensor,
    baselines: Tensor,
    config: AttributionConfig,
) -> Tensor:
    """GradientSHAP at the embedding output: the mean over ``n_samples`` draws of
    ``grad(e_b + a (e_x + eps - e_b)) * (e_x + eps - e_b)`` with a baseline row ``b``, ``a ~ U(0, 1)``
    and Gaussian ``eps`` (std ``stdevs``, real tokens only), as Captum's GradientShap draws them."""
    n, draws = ids.shape[0], config.n_samples
    rows = torch.randint(baselines.shape[0], (draws * n,), device=ids.device)
    alphas = torch.rand(draws * n, device=ids.device)
    ids_rep, valid_rep = ids.repeat(draws, 1), valid.repeat(draws, 1)
    with torch.no_grad():
        e_x = layer(ids_rep)
        e_b = layer(_keep_padding(ids_rep, valid_rep, baselines[rows]))
        noise = torch.randn_like(e_x) * float(config.stdevs) * valid_rep.unsqueeze(-1)
        diff = e_x + noise - e_b
        point = e_b + alphas.view(-1, 1, 1).to(diff) * diff
    grad = gradient_at_embeddings(model, ids_rep, point.requires_grad_(True), target.repeat(draws), create_graph=False)
    return (grad * diff).view(draws, n, *e_x.shape[1:]).mean(0)


# ------------------------------------------------------------------------------------------
# evaluation-time perturbation methods
# ------------------------------------------------------------------------------------------
def _on_real_tokens(model: nn.Module, row: Tensor, positions: Tensor) -> Callable[[Tensor], Tensor]:
    """A forward function on a sequence's real tokens ``[R, M]``: puts them back between its padding."""

    def forward(real: Tensor) -> Tensor:
        full = row.expand(real.shape[0], -1).clone()
        full[:, positions] = real
        return model(full)

    return forward


def per_sequence(
    attribute_groups: Callable[..., Tensor],
    model: nn.Module,
    ids: Tensor,
    target: Tensor,
    config: AttributionConfig,
    *,
    baselines: Tensor,
    modality: Modality,
) -> Tensor:
    """Token maps ``[N, T]`` of a perturbation method, one sequence at a time on its real tokens
    (``attribute_groups(forward, real_ids, target, config, baselines=, modality=)``); 0 at padding."""
    valid = modality.valid(ids)
    reference = _keep_padding(ids, valid, baselines)
    maps = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    for i in range(ids.shape[0]):
        positions = valid[i].nonzero().squeeze(1)
        if positions.numel() == 0:
            continue
        # a sequence shorter than patch_size is one group (Captum's Occlusion refuses a window
        # longer than its input)
        fits = (
            config if (config.patch_size or 1) <= positions.numel() else replace(config, patch_size=positions.numel())
        )
        real = attribute_groups(
            _on_real_tokens(model, ids[i], positions),
            ids[i, positions].unsqueeze(0),
            target[i : i + 1],
            fits,
            baselines=reference[i, positions].unsqueeze(0),
            modality=modality,
        )
        maps[i, positions] = real.squeeze(0).float()
    return maps


# ------------------------------------------------------------------------------------------
# training-time (differentiable) maps
# ------------------------------------------------------------------------------------------
def _padding_and_reference(model: nn.Module, modality: Modality | None) -> tuple[int, int]:
    """The padding id and reference id: the text modality's, else the model's ``pad_token_id``
    (reference = padding)."""
    if modality is not None and modality.name == "text":
        return modality.pad_id, modality.reference_id
    pad = getattr(model, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(
            f"token maps need the padding id: give {type(model).__name__} a pad_token_id attribute or pass "
            f"modality=Text(...)"
        )
    return pad, pad


def token_map(
    model: nn.Module,
    ids: Tensor,
    target: Tensor,
    *,
    kind: str,
    create_graph: bool,
    n_steps: int = 8,
    baseline: Tensor | None = None,
    modality: Modality | None = None,
) -> Tensor:
    """A differentiable token map ``[N, T]`` at the embedding output, summed over the hidden
    dimension (the gradient: its L2 norm), 0 at padding.

    ``kind``: ``"gradient"`` (d logit_target / d embedding), ``"gradient_x_embedding"`` (embedding x
    gradient) or ``"integrated_gradients"`` (midpoint Riemann sum with ``n_steps`` points from the
    reference embeddings, in one batched forward). ``baseline``: reference ids ``[1 or N, T]``
    (default: every real token replaced by the modality's ``reference_id``, else the model's
    ``pad_token_id``). With ``create_graph=True`` a loss on the map trains the model (embedding
    weights included).
    """
    if kind not in TOKEN_MAP_KINDS:
        raise ValueError(f"unknown token map kind {kind!r}; valid kinds are: {', '.join(TOKEN_MAP_KINDS)}")
    pad_id, reference_id = _padding_and_reference(model, modality)
    with torch.enable_grad():
        return _token_map(model, ids, target, kind, create_graph, n_steps, baseline, pad_id, reference_id)


def _token_map(
    model: nn.Module,
    ids: Tensor,
    target: Tensor,
    kind: str,
    create_graph: bool,
    n_steps: int,
    baseline: Tensor | None,
    pad_id: int,
    reference_id: int,
) -> Tensor:
    valid, layer = ids != pad_id, embedding_layer(model)
    embedded = layer(ids)
    if kind != "integrated_gradients":
        point = embedded if embedded.requires_grad else embedded.detach().requires_grad_(True)
        grad = gradient_at_embeddings(model, ids, point, target, create_graph=create_graph)
        return (
            token_vector_maps(grad, valid, magnitude=True)
            if kind == "gradient"
            else token_vector_maps(point * grad, valid)
        )
    base = torch.full_like(ids, reference_id) if baseline is None else baseline.to(ids)
    reference = layer(_keep_padding(ids, valid, base))
    diff = embedded - reference
    alphas = (torch.arange(n_steps, device=ids.device, dtype=diff.dtype) + 0.5) / n_steps
    path = (reference.unsqueeze(0) + alphas.view(-1, 1, 1, 1) * diff.unsqueeze(0)).flatten(0, 1)
    path = path if path.requires_grad else path.requires_grad_(True)
    grad = gradient_at_embeddings(
        model, ids.repeat(n_steps, 1), path, target.repeat(n_steps), create_graph=create_graph
    )
    return token_vector_maps(diff * grad.view(n_steps, *diff.shape).mean(0), valid)
