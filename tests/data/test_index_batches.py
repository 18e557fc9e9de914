"""kdlight.data.base: whole batches served by indexing in-memory tensors."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from kdlight.core.batch import collate
from kdlight.data.base import EpochShuffleSampler, IndexedDataset

X = torch.randn(50, 3, 4)
Y = torch.arange(50) % 7


def per_sample(dataset: IndexedDataset, rows: list[int]) -> dict[str, torch.Tensor]:
    """The batch the per-sample route builds: one item at a time, then collated."""
    return collate([dataset[i] for i in rows])


def assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_a_tensor_dataset_serves_the_batch_the_samples_would_collate_to():
    dataset = IndexedDataset(TensorDataset(X, Y))
    rows = [7, 0, 49, 7, 13]
    batch = collate(dataset.__getitems__(rows))
    assert_same_batch(batch, per_sample(dataset, rows))
    assert_same_batch(batch, {"inputs": X[rows], "target": Y[rows], "index": torch.tensor(rows)})


class DictSamples(Dataset):
    """A dataset of dict samples (no tensor fast path)."""

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": X[i] * 2, "y": Y[i]}


def test_other_datasets_still_go_sample_by_sample():
    dataset = IndexedDataset(DictSamples())
    batch = collate(dataset.__getitems__([3, 1]))
    assert_same_batch(batch, {"inputs": X[[3, 1]] * 2, "target": Y[[3, 1]], "index": torch.tensor([3, 1])})


def test_a_loader_over_the_shuffled_sampler_serves_every_row_in_its_order():
    dataset = IndexedDataset(TensorDataset(X, Y))
    sampler = EpochShuffleSampler(len(X), seed=5)
    sampler.set_epoch(3)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(5 * 1_000_003 + 3))
    loader = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [16, 16, 16, 2]
    served = torch.cat([b["index"] for b in batches])
    assert torch.equal(served, order)
    assert torch.equal(torch.cat([b["inputs"] for b in batches]), X[order])


def test_a_distributed_sampler_shards_whole_batches_as_before():
    """Lightning swaps in a DistributedSampler under DDP: each rank gets the rows it names."""
    dataset = IndexedDataset(TensorDataset(X, Y))
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)
        rows = list(sampler)
        batches = list(DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=collate))
        assert torch.equal(torch.cat([b["index"] for b in batches]), torch.tensor(rows))
        assert torch.equal(torch.cat([b["target"] for b in batches]), Y[rows])
