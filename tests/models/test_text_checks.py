"""check_text_models: models that do not fit the data's tokenizer are one clear line each."""

from __future__ import annotations

import pytest
from torch import nn

from kdlight.core.modality import Text
from kdlight.models import MLP, FastText, TransformerClassifier, check_text_models

DATA = Text(vocab_size=50, pad_id=0, max_length=16)


def test_matching_models_pass() -> None:
    check_text_models(
        DATA, teacher=TransformerClassifier(50, max_length=16), student=FastText(50), third=FastText(50, hidden=4)
    )


class EmbeddingBag(nn.Module):
    vocab_size, pad_token_id = 50, 0

    def get_input_embeddings(self) -> nn.Module:
        return nn.Linear(3, 3)


@pytest.mark.parametrize(
    ("models", "match"),
    [
        (dict(student=MLP()), r"student \(MLP\) is not a text model: .*get_input_embeddings\(\), vocab_size"),
        (dict(student=EmbeddingBag()), "returned Linear, not an nn.Embedding"),
        (
            dict(teacher=FastText(50), student=FastText(80)),
            r"teacher and student have different vocabularies \(50 vs 80 tokens\); both must use the data "
            r"module's tokenizer \(vocab_size=50\)",
        ),
        (dict(teacher=FastText(80), student=FastText(80)), "teacher has 80 token embeddings .* vocab_size=50"),
        (dict(student=FastText(50, pad_token_id=1)), "pad_token_id=1 but the data pads with pad_id=0"),
        (dict(teacher=TransformerClassifier(50, max_length=8)), "at most max_length=8 tokens .* up to 16"),
    ],
)
def test_misfits_are_one_line_errors(models: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        check_text_models(DATA, **models)
    assert "\n" not in str(error.value)


def test_vocabulary_is_read_from_the_embedding_rows() -> None:
    model = FastText(50)
    model.vocab_size = 999  # the attribute lies; the embedding decides
    check_text_models(DATA, student=model)


def test_needs_a_text_modality() -> None:
    from kdlight.core.modality import Image

    with pytest.raises(ValueError, match="modality is Text, got Image"):
        check_text_models(Image(), student=FastText(50))
