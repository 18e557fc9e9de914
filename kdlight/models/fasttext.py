"""A bag-of-embeddings text classifier (fastText-style): the smallest student for token inputs."""

from __future__ import annotations

from torch import Tensor, nn


class FastText(nn.Module):
    """Token ids ``[B, T]`` -> mean of the unpadded tokens' embeddings -> (hidden layer) -> logits.

    Padding (``pad_token_id``) is excluded from the mean, so a sequence's logits do not depend on
    how much padding follows it. ``embeddings`` is the token embedding (what token attributions
    explain, see :meth:`get_input_embeddings`); ``embedding`` is the ``[B, D]`` pooled vector fed
    to the classifier, as in every kdlight model.

    Args:
        vocab_size: number of token ids.
        num_classes: number of output logits.
        embed_dim: width of the token embeddings.
        hidden: width of an optional ReLU layer after pooling (0: none).
        pad_token_id: the padding id.
    """

    gradcam_layer: str | None = None  # no convolution: no Grad-CAM

    def __init__(
        self, vocab_size: int, num_classes: int = 2, embed_dim: int = 64, hidden: int = 0, pad_token_id: int = 0
    ) -> None:
        super().__init__()
        self.vocab_size, self.num_classes, self.pad_token_id = vocab_size, num_classes, pad_token_id
        self.max_length: int | None = None  # any length
        self.embeddings = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_token_id)
        self.hidden = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        self.embedding = nn.Identity()
        self.classifier = nn.Linear(hidden if hidden > 0 else embed_dim, num_classes)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding layer (the Hugging Face name, so the same code explains both)."""
        return self.embeddings

    def forward(self, ids: Tensor) -> Tensor:
        if ids.is_floating_point():
            raise ValueError(f"FastText takes token ids (integers), got dtype {ids.dtype}")
        valid = (ids != self.pad_token_id).unsqueeze(-1)
        vectors = self.embeddings(ids) * valid
        pooled = vectors.sum(1) / valid.sum(1).clamp(min=1)
        return self.classifier(self.embedding(self.hidden(pooled)))
