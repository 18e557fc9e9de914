"""Causal language models on token ids: kdlight's own small decoder and any ``transformers`` causal LM.

THE LM CONVENTION: ``model(ids)`` takes token ids ``[B, T]`` (int64, right-padded with
``pad_token_id``) and returns next-token logits ``[B, T, V]`` (position ``t`` predicts token
``t + 1``). The model builds its own attention mask (``ids != pad_token_id``, plus causal), so a
position's logits never depend on later tokens, nor on the padding after a sequence. Both models
expose ``get_input_embeddings()``, ``vocab_size``, ``pad_token_id`` and ``max_length``, and the tap
points ``hidden_states.<i>`` / ``attentions.<i>`` of :class:`~kdlight.models.TransformerClassifier`.
``transformers`` is imported when an :class:`HFCausalLM` is built, never at import time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlight.core.modality import Text
from kdlight.models.hf import HFTokenModel
from kdlight.models.text_checks import check_text_models
from kdlight.models.transformer import EncoderLayer, SelfAttention, check_token_ids, has_hooks

__all__ = ["CausalTransformer", "HFCausalLM", "causal_lm_types", "check_lm_models"]


def blocked_keys(ids: Tensor, pad_token_id: int) -> Tensor:
    """``[B, 1, T, T]`` bool, True where query ``t`` may not see key ``s``: a later token or padding."""
    t = ids.shape[1]
    later = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
    return later[None, None] | (ids == pad_token_id)[:, None, None, :]


class CausalSelfAttention(SelfAttention):
    """:class:`SelfAttention` (same weights and maths) under a ``[B, 1, T, T]`` mask of blocked keys."""

    def forward(self, x: Tensor, blocked: Tensor, need_probs: bool = True) -> tuple[Tensor, Tensor | None]:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # the dtype's lowest value, not -inf: a query that sees only padding gets uniform weights, not NaN
        lowest = torch.finfo(q.dtype).min
        if not need_probs:
            bias = torch.zeros(blocked.shape, dtype=q.dtype, device=q.device).masked_fill(blocked, lowest)
            p = self.dropout.p if self.training else 0.0
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
            return self.out(mixed.transpose(1, 2).reshape(n, t, d)), None
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = scores.masked_fill(blocked, lowest).softmax(-1)
        mixed = (self.dropout(probs) @ v).transpose(1, 2).reshape(n, t, d)
        return self.out(mixed), probs


class DecoderLayer(EncoderLayer):
    """The pre-LN block of :class:`EncoderLayer` with causal attention; ``forward(x, blocked, need_probs)``."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__(d_model, heads, ff_dim, dropout)
        self.attention = CausalSelfAttention(d_model, heads, dropout)


class CausalTransformer(nn.Module):
    """Token ids ``[B, T]`` -> pre-LN causal transformer decoder -> next-token logits ``[B, T, V]``.

    The blocks are :class:`~kdlight.models.TransformerClassifier`'s with a causal mask; padded keys
    get no weight. Named submodules: ``embeddings`` (:meth:`get_input_embeddings`),
    ``position_embeddings``, ``layers.<i>``, ``norm`` (final LayerNorm), ``lm_head``. Tap points:
    ``hidden_states.<i>`` (``[B, T, D]``; ``0`` the embedding output, ``depth`` after ``norm``) and
    ``attentions.<i>`` (``[B, heads, T, T]``, computed explicitly only while tapped).

    Args:
        vocab_size: number of token ids (the tokenizer's vocabulary); also the number of logits.
        d_model: width of the hidden states.
        depth: number of decoder layers.
        heads: attention heads per layer (``d_model`` must be a multiple).
        ff_dim: width of the feed-forward layers (``None``: ``4 * d_model``).
        max_length: longest sequence accepted (the number of position embeddings).
        dropout: dropout on embeddings, attention probabilities and residual branches.
        pad_token_id: the padding id.
    """

    gradcam_layer: str | None = None  # no convolution: no Grad-CAM

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        depth: int = 2,
        heads: int = 4,
        ff_dim: int | None = None,
        max_length: int = 128,
        dropout: float = 0.0,
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 decoder layer, got {depth}")
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size, self.pad_token_id, self.max_length = vocab_size, pad_token_id, max_length
        self.depth, self.heads = depth, heads
        self.embeddings = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_length, d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderLayer(d_model, heads, ff_dim or 4 * d_model, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(depth + 1))
        self.attentions = nn.ModuleList(nn.Identity() for _ in range(depth))
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding layer (the Hugging Face name, so the same code explains both)."""
        return self.embeddings

    def forward(self, ids: Tensor) -> Tensor:
        check_token_ids(type(self).__name__, ids, self.max_length)
        blocked = blocked_keys(ids, self.pad_token_id)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_dropout(self.embeddings(ids) + self.position_embeddings(positions))
        x = self.hidden_states[0](x)
        for i, layer in enumerate(self.layers):
            tapped = has_hooks([self.attentions[i]])
            x, probs = layer(x, blocked, need_probs=tapped)
            if tapped:
                self.attentions[i](probs)
            if i < self.depth - 1:
                x = self.hidden_states[i + 1](x)
        return self.lm_head(self.hidden_states[self.depth](self.norm(x)))


def causal_lm_types() -> list[str]:
    """The ``model_type`` names ``AutoModelForCausalLM`` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


class HFCausalLM(HFTokenModel):
    """A ``transformers`` causal LM of ``model_type`` with random weights; ``forward(ids)`` -> logits ``[B, T, V]``.

    Nothing is downloaded: ``AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, ...))``.
    ``forward`` passes ``attention_mask = ids != pad_token_id`` (the library adds the causal mask)
    and returns the logits only. Default special ids of a big pretrained vocabulary that fall outside
    ``vocab_size`` (GPT-2's 50256) are cleared. Tap points as :class:`~kdlight.models.HFClassifier`'s
    (``hidden_states.<i>``, ``attentions.<i>``; requested from the library only while tapped). The
    library model is the submodule ``hf``.

    Args:
        model_type: a ``transformers`` causal-LM type, e.g. ``"gpt2"`` or ``"llama"``.
        vocab_size: number of token ids (the tokenizer's vocabulary); required.
        pad_token_id: the padding id.
        max_length: longest sequence accepted (sets the position embeddings).
        hidden_size, num_hidden_layers, num_attention_heads: width, depth and heads (mapped to each
            family's own config names by ``transformers``' ``attribute_map``).
        intermediate_size: feed-forward width (``None``: ``4 * hidden_size``); ``n_inner`` for GPT-2.
        config: other config fields of that model type, as a dict (e.g. ``{resid_pdrop: 0.0}``).
    """

    library_kwargs = {"use_cache": False}  # no key/value cache: one forward per batch

    def __init__(
        self,
        model_type: str = "gpt2",
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        max_length: int = 128,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.build_library_model(
            AutoModelForCausalLM,
            causal_lm_types(),
            "a transformers causal LM",
            model_type,
            vocab_size,
            pad_token_id,
            max_length,
            {
                "hidden_size": hidden_size,
                "num_hidden_layers": num_hidden_layers,
                "num_attention_heads": num_attention_heads,
            },
            intermediate_size,
            config or {},
        )


def check_lm_models(vocab_size: int, pad_id: int, max_length: int | None = None, **models: nn.Module) -> None:
    """Refuse causal LMs (by role, e.g. ``teacher=..., student=...``) that do not fit the data or each other.

    One-line ValueErrors (those of :func:`~kdlight.models.check_text_models`) for: a model that is
    not a token model, teacher/student vocabularies that differ from each other or from the data's
    ``vocab_size``, a padding id other than ``pad_id``, and a ``max_length`` shorter than the data's.
    """
    check_text_models(Text(vocab_size, pad_id, max_length=max_length), **models)
