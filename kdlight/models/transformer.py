"""A small pre-LN transformer encoder classifier for token ids, written with plain modules.

Its own attention makes the attention probabilities ``[N, heads, T, T]`` visible to forward hooks;
the tap points share their names with :class:`kdlight.models.hf.HFClassifier`, so hidden-state and
attention objectives (:mod:`kdlight.objectives.text`) work on both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("mean", "cls")


def has_hooks(modules) -> bool:
    """Whether any of ``modules`` has a forward (pre-)hook: someone reads its output."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def check_token_ids(owner: str, ids: Tensor, max_length: int | None) -> None:
    """One-line ValueErrors for inputs that are not ``[N, T]`` integer token ids of at most ``max_length``."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{owner} takes token ids (integers), got dtype {ids.dtype}; do not cast token ids to float")
    if ids.dim() != 2:
        raise ValueError(f"{owner} takes token ids of shape [N, T], got {list(ids.shape)}")
    if max_length is not None and ids.shape[1] > max_length:
        raise ValueError(
            f"{owner} accepts at most max_length={max_length} tokens, got {ids.shape[1]}; "
            f"truncate the data or build the model with max_length >= {ids.shape[1]}"
        )


class SelfAttention(nn.Module):
    """Multi-head self-attention whose padded keys get no weight; returns (output, probabilities)."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be a multiple of heads={heads}")
        self.heads, self.head_dim = heads, d_model // heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor, need_probs: bool = True) -> tuple[Tensor, Tensor | None]:
        """``need_probs=False`` runs PyTorch's fused attention (the same maths) and returns no probabilities."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # the dtype's lowest value, not -inf: a sequence of padding only gets uniform weights, not NaN
        lowest = torch.finfo(q.dtype).min
        if not need_probs:
            bias = torch.zeros(n, 1, 1, t, dtype=q.dtype, device=q.device).masked_fill(
                padding[:, None, None, :], lowest
            )
            p = self.dropout.p if self.training else 0.0
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
            return self.out(mixed.transpose(1, 2).reshape(n, t, d)), None
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = scores.masked_fill(padding[:, None, None, :], lowest).softmax(-1)
        mixed = (self.dropout(probs) @ v).transpose(1, 2).reshape(n, t, d)
        return self.out(mixed), probs


class EncoderLayer(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + ff(LN(x))``; returns (hidden, attention probabilities)."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, heads, dropout)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor, need_probs: bool = True) -> tuple[Tensor, Tensor | None]:
        mixed, probs = self.attention(self.norm1(x), padding, need_probs)
        x = x + self.dropout1(mixed)
        return x + self.dropout2(self.feed_forward(self.norm2(x))), probs


class TransformerClassifier(nn.Module):
    """Token ids ``[N, T]`` -> pre-LN transformer encoder -> pooled ``[N, D]`` -> logits.

    The attention mask is ``ids != pad_token_id``, built here: padded positions are masked as keys
    and left out of mean pooling, so the logits of a sequence do not depend on how much padding
    follows it. ``pooling="mean"`` (default) averages the real tokens; ``"cls"`` reads position 0,
    which needs data that starts every sequence with a CLS token (kdlight's data modules add none).

    Named submodules: ``embeddings`` (token embedding; :meth:`get_input_embeddings`),
    ``position_embeddings``, ``layers.<i>``, ``norm`` (final LayerNorm), ``embedding`` (identity on
    the pooled vector) and ``classifier``. Identity tap points, shared with
    :class:`~kdlight.models.hf.HFClassifier`: ``hidden_states.<i>`` sees ``[N, T, D]`` (``0``: the
    embedding output; ``i``: layer ``i``'s output; ``depth``: the last layer after ``norm``) and
    ``attentions.<i>`` sees layer ``i``'s attention probabilities ``[N, heads, T, T]`` (before
    attention dropout; each row sums to 1 over the real keys). They are computed explicitly only
    while a forward hook sits on that tap; otherwise the layer runs PyTorch's fused
    ``scaled_dot_product_attention`` (the same maths, faster).

    Args:
        vocab_size: number of token ids (the tokenizer's vocabulary).
        num_classes: number of logits.
        d_model: width of the hidden states.
        depth: number of encoder layers.
        heads: attention heads per layer (``d_model`` must be a multiple).
        ff_dim: width of the feed-forward layers (``None``: ``4 * d_model``).
        max_length: longest sequence accepted (the number of position embeddings).
        dropout: dropout on embeddings, attention probabilities and residual branches.
        pad_token_id: the padding id.
        pooling: ``"mean"`` or ``"cls"``.
    """

    gradcam_layer: str | None = None  # no convolution: no Grad-CAM

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        d_model: int = 64,
        depth: int = 2,
        heads: int = 4,
        ff_dim: int | None = None,
        max_length: int = 128,
        dropout: float = 0.1,
        pad_token_id: int = 0,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 encoder layer, got {depth}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id={pad_token_id} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size, self.num_classes, self.pad_token_id = vocab_size, num_classes, pad_token_id
        self.max_length, self.depth, self.heads, self.pooling = max_length, depth, heads, pooling
        self.embeddings = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_length, d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, ff_dim or 4 * d_model, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.hidden_states = nn.ModuleList(nn.Identity() for _ in range(depth + 1))
        self.attentions = nn.ModuleList(nn.Identity() for _ in range(depth))
        self.embedding = nn.Identity()
        self.classifier = nn.Linear(d_model, num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding layer (the Hugging Face name, so the same code explains both)."""
        return self.embeddings

    def forward(self, ids: Tensor) -> Tensor:
        check_token_ids(type(self).__name__, ids, self.max_length)
        padding = ids == self.pad_token_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embedding_dropout(self.embeddings(ids) + self.position_embeddings(positions))
        x = self.hidden_states[0](x)
        for i, layer in enumerate(self.layers):
            tapped = has_hooks([self.attentions[i]])
            x, probs = layer(x, padding, need_probs=tapped)
            if tapped:
                self.attentions[i](probs)
            if i < self.depth - 1:
                x = self.hidden_states[i + 1](x)
        x = self.hidden_states[self.depth](self.norm(x))
        if self.pooling == "cls":
            pooled = x[:, 0]
        else:
            valid = (~padding).unsqueeze(-1).to(x.dtype)
            pooled = (x * valid).sum(1) / valid.sum(1).clamp(min=1)
        return self.classifier(self.embedding(pooled))
