import pytest
import torch

from kdlight.models import FastText


def test_logits_ignore_padding_and_equal_mean_of_token_embeddings():
    torch.manual_seed(0)
    model = FastText(vocab_size=20, num_classes=3, embed_dim=8, pad_token_id=0)
    ids = torch.tensor([[5, 7, 9, 0, 0]])
    shorter = ids[:, :3]
    torch.testing.assert_close(model(ids), model(shorter))
    pooled = model.embeddings.weight[[5, 7, 9]].mean(0, keepdim=True)
    torch.testing.assert_close(model(ids), model.classifier(pooled))
    assert model.get_input_embeddings() is model.embeddings


def test_float_inputs_are_refused():
    with pytest.raises(ValueError, match="token ids"):
        FastText(vocab_size=5)(torch.zeros(1, 3))
