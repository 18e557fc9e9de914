"""Which context tokens a causal LM's next-token prediction rests on: token attributions at one position.

A causal LM (kdlight's LM convention, :mod:`kdlight.models.causal_lm`) maps ids ``[N, T]`` to
next-token logits ``[N, T, V]``; position ``p`` predicts token ``p + 1`` from tokens ``0..p``.
:func:`context_attributions` explains, for each row, the score of one token ``targets[i]`` at one
position ``positions[i]`` by the row's tokens, at the embedding layer (``get_input_embeddings()``).

Decisions
---------
* The score explained is the **log-probability** ``log_softmax(logits[i, p])[target]`` (``score=
  "log_prob"``), the attribution target of Captum 0.9's ``LLMGradientAttribution`` (its forward
  takes ``log_softmax`` of the last position's logits and picks the target token; ``LLMAttribution``'s
  ``attr_target`` also defaults to ``"log_prob"``); ``score="logit"`` explains the raw logit instead.
* Methods (:data:`CONTEXT_METHODS`), run by Captum on the embedding output, summed over the hidden
  dimension as :mod:`kdlight.explain.attribution.tokens` does for classifiers:
  ``integrated_gradients`` (``LayerIntegratedGradients``, ``n_steps`` Gauss-Legendre points),
  ``input_x_gradient`` (``LayerGradientXActivation``: embedding x gradient) and ``saliency`` (its
  gradient alone, as the L2 norm per token: the sum of a gradient entering a LayerNorm is about 0).
* Baseline (integrated gradients): every real token replaced by ``reference_id`` (default the
  model's ``pad_token_id``), padding kept. As in Captum's layer IG the model then runs on the input
  ids with the reference *embeddings*, so with ``reference_id = pad`` the path ends at the padding
  embeddings under the input's attention mask, not at an all-padding sequence; completeness
  (sum of the map = score(input) - score(path end)) holds against that end point.
* Tokens after the position (and padding) get exactly 0. A causal model cannot see later tokens, so
  their raw attributions are already 0; one that is not 0 means the model reads the future and is
  refused in one line.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlight.explain.attribution.context import Placement, attribution_context
from kdlight.explain.attribution.tokens import embedding_layer, token_vector_maps

__all__ = [
    "CONTEXT_METHODS",
    "SCORES",
    "check_context_method",
    "context_mask",
    "next_token_score",
    "context_attributions",
]

#: method -> (Captum layer class, multiply_by_inputs)
CONTEXT_METHODS: dict[str, tuple[str, bool]] = {
    "integrated_gradients": ("LayerIntegratedGradients", True),
    "input_x_gradient": ("LayerGradientXActivation", True),
    "saliency": ("LayerGradientXActivation", False),
}
#: what is explained at the position: the target's log-probability (Captum's LLM default) or its logit
SCORES: tuple[str, ...] = ("log_prob", "logit")
#: an attribution after the position larger than this share of the row's largest one: not causal
_CAUSAL_TOLERANCE = 1e-5


def check_context_method(method: str) -> None:
    """Refuse, in one line, a method that context attribution does not run."""
    if method not in CONTEXT_METHODS:
        raise ValueError(
            f"method {method!r} is not supported for context attribution; valid methods: {', '.join(CONTEXT_METHODS)}"
        )


def context_mask(ids: Tensor, positions: Tensor, pad_id: int) -> Tensor:
    """``[N, T]`` True at each row's context: the real tokens at or before its position."""
    columns = torch.arange(ids.shape[1], device=ids.device)
    return (columns <= positions.to(ids.device).view(-1, 1)) & (ids != pad_id)


def next_token_score(logits: Tensor, positions: Tensor, targets: Tensor, score: str = "log_prob") -> Tensor:
    """``[N]``: each row's ``score`` (``log_prob`` or ``logit``) of ``targets[i]`` at ``positions[i]``
    of next-token logits ``[N, T, V]``."""
    if logits.dim() != 3:
        raise ValueError(f"a causal LM must return next-token logits [N, T, V], got shape {list(logits.shape)}")
    at = logits[torch.arange(len(logits), device=logits.device), positions].float()
    if score == "log_prob":
        at = at.log_softmax(-1)
    return at.gather(1, targets.view(-1, 1)).squeeze(1)


def _check(model: nn.Module, ids: Tensor, positions: Tensor, targets: Tensor, pad_id: int, n_steps: int) -> None:
    if ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must be integer token ids [N, T], got {ids.dtype} {list(ids.shape)}")
    n, length = ids.shape
    for name, values in (("positions", positions), ("targets", targets)):
        if values.shape != (n,) or values.is_floating_point() or values.dtype == torch.bool:
            raise ValueError(
                f"{name} must be integers [N] = [{n}] (one per row), got {values.dtype} {list(values.shape)}"
            )
    outside = (positions < 0) | (positions >= length)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise ValueError(
            f"position {int(positions[i])} of row {i} is outside the sequence (0..{length - 1}); "
            "give each row the index of the token that predicts"
        )
    at_pad = ids.gather(1, positions.view(-1, 1)).squeeze(1) == pad_id
    if at_pad.any():
        i = int(at_pad.nonzero()[0])
        raise ValueError(f"position {int(positions[i])} of row {i} is padding (id {pad_id}); choose a real token")
    vocab = getattr(model, "vocab_size", None)
    if targets.numel() and (int(targets.min()) < 0 or (vocab is not None and int(targets.max()) >= vocab)):
        raise ValueError(f"targets must be token ids in [0, {vocab}), got {targets.min()}..{targets.max()}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")


def _pad_id(model: nn.Module) -> int:
    pad = getattr(model, "pad_token_id", None)
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise ValueError(f"{type(model).__name__} needs an integer pad_token_id (kdlight's LM convention)")
    return pad


def context_attributions(
    model: nn.Module,
    ids: Tensor,
    positions: Tensor,
    targets: Tensor,
    method: str = "integrated_gradients",
    n_steps: int = 16,
    reference_id: int | None = None,
    *,
    score: str = "log_prob",
    internal_batch_size: int | None = None,
) -> Tensor:
    """Attribution ``[N, T]`` (float32) of each row's ``score`` of ``targets[i]`` at ``positions[i]``
    to the row's tokens, at the embedding layer (see the module notes); 0 after the position and
    at padding.

    Args:
        model: a causal LM: ``model(ids)`` -> ``[N, T, V]``, with ``get_input_embeddings()`` and ``pad_token_id``.
        ids: token ids ``[N, T]``, right-padded with the model's ``pad_token_id``.
        positions: ``[N]``, the index of the predicting token in each row (a real token).
        targets: ``[N]``, the token id whose score is explained (e.g. the teacher's prediction).
        method: a key of :data:`CONTEXT_METHODS`.
        n_steps: integration points of integrated gradients.
        reference_id: the token of the IG baseline (default the model's ``pad_token_id``).
        score: ``"log_prob"`` (Captum's LLM default) or ``"logit"``.
        internal_batch_size: IG sequences per forward (default all ``N * n_steps`` at once).
    """
    import captum.attr

    check_context_method(method)
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid scores: {', '.join(SCORES)}")
    pad_id = _pad_id(model)
    positions, targets = torch.as_tensor(positions), torch.as_tensor(targets)
    _check(model, ids, positions, targets, pad_id, n_steps)
    reference_id = pad_id if reference_id is None else int(reference_id)
    place = Placement.of(model, ids.device)
    with attribution_context(model, [ids.device, place.device], grad=True):
        ids, positions, targets = place.put(ids), place.put(positions).long(), place.put(targets).long()
        valid = ids != pad_id
        layer_class, multiply = CONTEXT_METHODS[method]

        def forward(batch_ids: Tensor, at: Tensor, target: Tensor) -> Tensor:
            return next_token_score(model(batch_ids), at, target, score)

        explainer = getattr(captum.attr, layer_class)(forward, embedding_layer(model), multiply_by_inputs=multiply)
        kwargs: dict[str, object] = {"additional_forward_args": (positions, targets)}
        if method == "integrated_gradients":
            kwargs |= {"baselines": ids.masked_fill(valid, reference_id), "n_steps": n_steps}
            if internal_batch_size is not None:
                kwargs["internal_batch_size"] = max(internal_batch_size, len(ids))
        vectors = explainer.attribute(ids, **kwargs).float()
    maps = token_vector_maps(vectors, valid, magnitude=not multiply)
    context = context_mask(ids, positions, pad_id)
    _check_causal(model, maps, context, positions)
    return maps.masked_fill(~context, 0.0).detach()


def _check_causal(model: nn.Module, maps: Tensor, context: Tensor, positions: Tensor) -> None:
    """Refuse a model whose score at a position depends on later tokens (their attribution is not 0)."""
    scale = maps.abs().amax(1, keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
    leak = (maps.abs() / scale).masked_fill(context, 0.0).amax(1)
    if bool((leak > _CAUSAL_TOLERANCE).any()):
        i = int(leak.argmax())
        raise ValueError(
            f"{type(model).__name__}'s score at position {int(positions[i])} of row {i} depends on later tokens "
            f"(relative attribution {float(leak[i]):.2g} after it); context attribution needs a causal LM"
        )
