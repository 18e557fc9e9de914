"""Parameter counts, size on disk and CPU latency of dense, pruned and quantised models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from kdlight.compression.measure import cpu_latency, parameter_counts, shipped_state_dict, size_on_disk
from kdlight.models import MLP, FastText


def test_parameter_counts_match_a_hand_count():
    model = MLP(in_features=8, num_classes=3, hidden=[5])  # 8*5 + 5 + 5*3 + 3
    assert parameter_counts(model) == (63, 63)
    with torch.no_grad():
        model.layers[0][0].weight[:2] = 0.0  # two rows of 8 weights
    assert parameter_counts(model) == (63 - 16, 63)


def test_pruned_weights_count_once_by_their_effective_value():
    model = MLP(in_features=8, num_classes=3, hidden=[5])
    prune.random_unstructured(model.layers[0][0], "weight", amount=30)  # 30 of its 40 weights
    assert parameter_counts(model) == (63 - 30, 63)  # weight_orig and weight_mask are not counted twice


class HalfZero(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(weight[:1]), weight[1:]])


def test_parametrized_weights_count_by_their_effective_value():
    layer = nn.Linear(4, 2)  # 8 weights + 2 biases
    parametrize.register_parametrization(layer, "weight", HalfZero())
    assert parameter_counts(layer) == (10 - 4, 10)
    assert set(shipped_state_dict(layer)) == {"weight", "bias"}


def test_sparse_weights_stored_densely_count_as_dense_and_only_compression_shows_sparsity():
    torch.manual_seed(0)
    dense = MLP(in_features=64, num_classes=10, hidden=[128, 128])
    sparse = MLP(in_features=64, num_classes=10, hidden=[128, 128])
    sparse.load_state_dict(dense.state_dict())
    for module in sparse.modules():
        if isinstance(module, nn.Linear):
            prune.l1_unstructured(module, "weight", amount=0.9)
    # the re-parametrisation (orig + mask) is folded: the file holds one dense weight per layer
    assert set(shipped_state_dict(sparse)) == set(dense.state_dict())
    assert abs(size_on_disk(sparse) - size_on_disk(dense)) < 0.01 * size_on_disk(dense)
    # random float weights barely compress; 90 % zeros do
    assert size_on_disk(dense, compressed=True) > 0.85 * size_on_disk(dense)
    assert size_on_disk(sparse, compressed=True) < 0.4 * size_on_disk(dense, compressed=True)


def test_int8_counts_and_size_read_through_the_quantised_weights():
    from kdlight.compression.quantization import quantize_int8

    model = MLP(in_features=64, num_classes=10, hidden=[128])
    quantized = quantize_int8(model, "weight_only")
    nonzero, total = parameter_counts(quantized)
    assert total == parameter_counts(model)[1]
    assert nonzero <= total  # weights rounding to zero become zeros
    assert size_on_disk(quantized) < size_on_disk(model)


def test_cpu_latency_reports_a_median_per_batch_size_and_restores_threads_and_mode():
    model = FastText(vocab_size=30, num_classes=2, embed_dim=8, hidden=4, pad_token_id=0).train()
    ids = torch.randint(1, 30, (5, 7))
    threads = torch.get_num_threads()
    latency = cpu_latency(model, ids, batch_sizes=(1, 16), repeats=3, warmup=1)
    assert list(latency) == [1, 16] and all(ms > 0 for ms in latency.values())
    assert torch.get_num_threads() == threads and model.training


def test_cpu_latency_rejects_bad_arguments_in_one_line():
    with pytest.raises(ValueError, match="repeats >= 1"):
        cpu_latency(nn.Linear(2, 2), torch.randn(3, 2), repeats=0)
    with pytest.raises(ValueError, match=r"N >= 1"):
        cpu_latency(nn.Linear(2, 2), torch.randn(0, 2))
