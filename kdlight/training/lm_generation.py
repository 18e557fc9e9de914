"""Sampling continuations from a causal LM, for sequence-level KD and on-policy distillation (GKD).

Any model of the LM convention works (``model(ids [B, T]) -> next-token logits [B, T, V]``,
right padding with ``pad_id``), kdlight's :class:`~kdlight.models.CausalTransformer` and
:class:`~kdlight.models.HFCausalLM` alike. Decoding has no key/value cache: each new token costs
one full forward of the sequence so far, which is fine for the small models kdlight trains.
Temperature, top-k and top-p are ``transformers``' own logits warpers, applied in the order
``generate`` applies them, so the semantics are Hugging Face's.

    >>> settings = GenerationSettings(prompt_length=16, max_new_tokens=16, top_p=0.9)
    >>> ids, labels = generated_batch(teacher, batch["inputs"], settings, pad_id=0, eos_id=2)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdlight.data.lm import IGNORE_INDEX
from kdlight.explain.attribution.context import eval_mode

__all__ = ["GenerationSettings", "generated_batch", "prompt_rows", "sample_continuations"]


@dataclass
class GenerationSettings:
    """How continuations are generated (the ``generation:`` block of a YAML config).

    Args:
        prompt_length: tokens of each data sequence kept as the prompt.
        max_new_tokens: tokens generated after the prompt (fewer count when a row emits ``eos``).
        temperature: divides the logits before sampling (ignored when greedy).
        top_k: sample among the ``top_k`` most likely tokens only (``None``: all).
        top_p: nucleus sampling: the smallest set of tokens whose probability sums to at least
            ``top_p`` (``1.0``: all).
        do_sample: sample (``True``) or take the most likely token (``False``, greedy).
    """

    prompt_length: int = 32
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.prompt_length < 1:
            raise ValueError(f"generation prompt_length must be >= 1 token, got {self.prompt_length}")
        if self.max_new_tokens < 1:
            raise ValueError(f"generation max_new_tokens must be >= 1 token, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(
                f"generation temperature must be > 0, got {self.temperature}; use do_sample=false for greedy"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"generation top_k must be >= 1 (or null for no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation top_p must be in (0, 1] (1.0: no nucleus cut), got {self.top_p}")

    @property
    def total_length(self) -> int:
        """Length of a generated sequence: prompt plus new tokens."""
        return self.prompt_length + self.max_new_tokens


def logits_warpers(settings: GenerationSettings) -> list:
    """``transformers``' temperature, top-k and top-p warpers for ``settings`` (in ``generate``'s order)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list = []
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k is not None:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(settings.top_p))
    return warpers


def check_prompts(model: nn.Module, prompts: Tensor, settings: GenerationSettings, pad_id: int) -> None:
    """One-line ValueErrors for prompts that are not ``[B, P]`` ids without padding, or too long for ``model``."""
    if prompts.dim() != 2 or prompts.is_floating_point() or prompts.dtype == torch.bool:
        raise ValueError(f"prompts must be token ids [B, P] (int64), got {prompts.dtype} {list(prompts.shape)}")
    if (prompts == pad_id).any():
        raise ValueError(
            f"prompts contain the padding id {pad_id}; give full-length prompts (generated_batch drops padded rows)"
        )
    limit = getattr(model, "max_length", None)
    total = prompts.shape[1] + settings.max_new_tokens
    if limit is not None and total > limit:
        raise ValueError(
            f"{type(model).__name__} accepts at most max_length={limit} tokens but prompt {prompts.shape[1]} + "
            f"max_new_tokens {settings.max_new_tokens} = {total}; lower generation.prompt_length/max_new_tokens"
        )


def generate(
    model: nn.Module,
    prompts: Tensor,
    settings: GenerationSettings,
    pad_id: int,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Continuations ``[B, P + N]`` and the number of generated tokens that count per row ``[B]``.

    A row counts its tokens up to and including ``eos_id``; a generated ``pad_id`` (not ``eos``)
    also ends the row but does not count, since padding never counts.
    """
    check_prompts(model, prompts, settings, pad_id)
    warpers = logits_warpers(settings) if settings.do_sample else []
    batch = prompts.shape[0]
    sequence = prompts.clone()
    counted = torch.zeros(batch, dtype=torch.long, device=prompts.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompts.device)
    with eval_mode(model), torch.no_grad():
        for _ in range(settings.max_new_tokens):
            if finished.all():
                break
            scores = model(sequence)[:, -1, :].float()
            for warper in warpers:
                scores = warper(sequence, scores)
            if settings.do_sample:
                token = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
            else:
                token = scores.argmax(-1)
            token = token.masked_fill(finished, pad_id)
            ends = token == pad_id if eos_id is None else (token == pad_id) | (token == eos_id)
            counted += (~finished & (token != pad_id)).long()
            if eos_id is not None and eos_id == pad_id:  # an eos that is also the padding id counts
                counted += (~finished & (token == eos_id)).long()
            finished |= ends
            sequence = torch.cat([sequence, token[:, None]], dim=1)
    missing = prompts.shape[1] + settings.max_new_tokens - sequence.shape[1]
    if missing:
        sequence = torch.cat([sequence, sequence.new_full((batch, missing), pad_id)], dim=1)
    return sequence, counted


def sample_continuations(
    model: nn.Module,
    prompts: Tensor,
    settings: GenerationSettings,
    pad_id: int,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``prompts`` ``[B, P]`` followed by ``settings.max_new_tokens`` tokens decoded by ``model``: ``[B, P + N]``.

    Temperature, top-k then top-p when ``settings.do_sample``, else greedy. After a row emits
    ``eos_id`` (or ``pad_id``) the rest of it is ``pad_id``. Runs without gradients, with ``model``
    in eval mode, and restores every submodule's training mode. ``generator`` (on the prompts'
    device) makes the draws reproducible. Refuses ``P + N > model.max_length``.
    """
    return generate(model, prompts, settings, pad_id, eos_id, generator)[0]


def prompt_rows(ids: Tensor, prompt_length: int, pad_id: int) -> Tensor:
    """``[B]`` bool: the rows of ``ids`` whose first ``prompt_length`` tokens are all real (none if ``T`` is shorter)."""
    if ids.shape[1] < prompt_length:
        return ids.new_zeros(len(ids), dtype=torch.bool)
    return (ids[:, :prompt_length] != pad_id).all(dim=1)


def generated_batch(
    model: nn.Module,
    ids: Tensor,
    settings: GenerationSettings,
    pad_id: int,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A training batch of ``model``'s continuations of the first ``prompt_length`` tokens of ``ids``.

    Rows shorter than the prompt (padding inside it) are dropped. Returns ``(new_ids, labels)``,
    both ``[B', P + N]``, with ``labels[:, t] = new_ids[:, t + 1]`` (the convention of
    :func:`kdlight.data.lm.next_token_labels`) for the generated tokens only, ``eos`` included and
    nothing after it, and ``-100`` at every other position (the prompt's own tokens do not count).
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must be token ids [B, T], got {list(ids.shape)}")
    length = settings.prompt_length
    full = prompt_rows(ids, length, pad_id)
    if not full.any():
        longest = int((ids != pad_id).sum(dim=1).max()) if ids.numel() else 0
        raise ValueError(
            f"generation.prompt_length={length} is longer than every sequence of the batch (longest {longest} "
            f"tokens); set generation.prompt_length <= {longest}"
        )
    new_ids, counted = generate(model, ids[full, :length], settings, pad_id, eos_id, generator)
    offset = torch.arange(settings.max_new_tokens, device=ids.device)
    keep = offset[None, :] < counted[:, None]
    labels = torch.full_like(new_ids, IGNORE_INDEX)
    labels[:, length - 1 : length - 1 + settings.max_new_tokens] = torch.where(
        keep, new_ids[:, length:], torch.full_like(new_ids[:, length:], IGNORE_INDEX)
    )
    return new_ids, labels
