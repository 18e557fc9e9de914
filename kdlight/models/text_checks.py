"""Checks that text models fit the data's tokenizer and each other (one clear line each)."""

from __future__ import annotations

from torch import nn

from kdlight.core.modality import Text

__all__ = ["check_text_models", "text_vocab_size"]

CONVENTION = (
    "kdlight's text models take token ids [N, T] and expose get_input_embeddings(), vocab_size, pad_token_id and "
    "max_length (see kdlight.models.FastText, TransformerClassifier, HFClassifier)"
)


def text_vocab_size(model: nn.Module, role: str = "model") -> int:
    """The number of rows of ``model``'s token embedding (authoritative over ``model.vocab_size``)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if not callable(get_embeddings) or not hasattr(model, "vocab_size") or not hasattr(model, "pad_token_id"):
        raise ValueError(f"{role} ({type(model).__name__}) is not a text model: {CONVENTION}")
    embeddings = get_embeddings()
    size = getattr(embeddings, "num_embeddings", None)
    if size is None:
        raise ValueError(
            f"{role} ({type(model).__name__}).get_input_embeddings() returned {type(embeddings).__name__}, not an "
            f"nn.Embedding; {CONVENTION}"
        )
    return int(size)


def check_text_models(modality: Text, **models: nn.Module) -> None:
    """Refuse models (by role, e.g. ``teacher=..., student=...``) that do not fit the data.

    One-line ValueErrors for: a model that is not a text model, vocabularies that differ between
    the models or from the data's, a padding id other than the data's ``pad_id``, and a
    ``max_length`` shorter than the data's.
    """
    if not isinstance(modality, Text):
        raise ValueError(f"text models need a data module whose modality is Text, got {type(modality).__name__}")
    sizes = {role: text_vocab_size(model, role) for role, model in models.items()}
    roles = list(sizes)
    for i, first in enumerate(roles):
        for second in roles[i + 1 :]:
            if sizes[first] != sizes[second]:
                raise ValueError(
                    f"{first} and {second} have different vocabularies ({sizes[first]} vs {sizes[second]} tokens); "
                    f"both must use the data module's tokenizer (vocab_size={modality.vocab_size})"
                )
    for role, model in models.items():
        if sizes[role] != modality.vocab_size:
            raise ValueError(
                f"{role} has {sizes[role]} token embeddings but the data's tokenizer has {modality.vocab_size} tokens; "
                f"build it with vocab_size={modality.vocab_size}"
            )
        if model.pad_token_id != modality.pad_id:
            raise ValueError(
                f"{role} pads with pad_token_id={model.pad_token_id} but the data pads with pad_id={modality.pad_id}; "
                f"build it with pad_token_id={modality.pad_id}"
            )
        longest = getattr(model, "max_length", None)
        if longest is not None and modality.max_length is not None and longest < modality.max_length:
            raise ValueError(
                f"{role} accepts at most max_length={longest} tokens but the data yields up to {modality.max_length}; "
                f"build it with max_length >= {modality.max_length} or shorten the data's max_length"
            )
