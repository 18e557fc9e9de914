"""kdlight.core.datamodule: the data-module protocol and the one reader of any data module."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from kdlight.core.datamodule import KDLightDataModule, data_capabilities
from kdlight.data import BreastCancerDataModule, DigitsDataModule, MNIST1DDataModule, ShortcutDigitsDataModule

X, Y = torch.arange(40 * 3, dtype=torch.float32).view(40, 3), torch.arange(40) % 4


class LoadersOnly(LightningDataModule):
    """A user's data module: loaders of positional batches and nothing else."""

    def __init__(self, with_transfer: bool = False, labeled: bool = True) -> None:
        super().__init__()
        self.with_transfer, self.labeled, self.setups = with_transfer, labeled, []

    def setup(self, stage: str) -> None:
        self.setups.append(stage)

    def _loader(self) -> DataLoader:
        return DataLoader(TensorDataset(X, Y) if self.labeled else TensorDataset(X), batch_size=16)

    def train_dataloader(self):
        if self.with_transfer:
            return {"labeled": self._loader(), "transfer": DataLoader(TensorDataset(X), batch_size=16)}
        return self._loader()

    val_dataloader = test_dataloader = _loader


@pytest.mark.parametrize(
    "make", [DigitsDataModule, MNIST1DDataModule, BreastCancerDataModule, ShortcutDigitsDataModule]
)
def test_kdlight_data_modules_implement_the_protocol(make):
    assert isinstance(make(), KDLightDataModule)
    assert not isinstance(LoadersOnly(), KDLightDataModule)


def test_capabilities_of_a_kdlight_data_module_are_its_own():
    dm = DigitsDataModule(seed=1)
    data = data_capabilities(dm)
    assert (data.num_classes, data.input_shape, data.class_names) == (10, (1, 8, 8), [str(d) for d in range(10)])
    assert data.feature_names is None and data.augmented is False and data.indexed_batches is True
    assert data.has_train_inputs and torch.equal(data.train_inputs(), dm.train_inputs())
    assert torch.equal(data.example_input(3), dm.example_input(3))
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(data.split_tensors(split), dm.split_tensors(split)))
        assert torch.equal(data.split_hashes(split), dm.split_hashes(split))
    assert data.data_record() is dm.data_record() and data.transfer_dataset() is None
    assert len(data_capabilities(DigitsDataModule(transfer_size=20)).transfer_dataset()) == 20


def test_capabilities_of_a_data_module_with_loaders_only():
    dm = LoadersOnly()
    data = data_capabilities(dm)
    assert data.num_classes is data.input_shape is data.class_names is data.feature_names is data.modality is None
    assert data.augmented is data.indexed_batches is data.has_train_inputs is False
    assert data.train_inputs() is data.data_record() is data.split_hashes("val") is data.transfer_dataset() is None
    # fallbacks on the loaders: the first training batch, the whole split (after setup)
    assert torch.equal(data.example_input(2), X[:2])
    x, y = data.split_tensors("test")
    assert torch.equal(x, X) and torch.equal(y, Y) and dm.setups == ["test"]
    with_transfer = data_capabilities(LoadersOnly(with_transfer=True))
    assert torch.equal(with_transfer.split_tensors("train")[0], X) and torch.equal(
        with_transfer.example_input(1), X[:1]
    )


def test_capabilities_refuse_what_cannot_be_read():
    with pytest.raises(ValueError, match="unknown split 'dev'; valid splits are: train, val, test"):
        data_capabilities(LoadersOnly()).split_tensors("dev")
    with pytest.raises(ValueError, match="the val loader of LoadersOnly yields batches without targets"):
        data_capabilities(LoadersOnly(labeled=False)).split_tensors("val")
    with pytest.raises(ValueError, match="no data module: kdlight needs one with a train_dataloader"):
        data_capabilities(None).example_input()
    assert data_capabilities(None).num_classes is None and data_capabilities(None).indexed_batches is False


def test_declared_attributes_are_read_live():
    dm = DigitsDataModule()
    data = data_capabilities(dm)
    dm.augmented = True
    assert data.augmented is True
