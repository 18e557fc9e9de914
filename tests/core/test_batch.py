"""kdlight.core.batch: one parser for every batch form, named fields that Lightning can move."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.data import extract_batch_size

from kdlight.core.batch import ACCEPTED_FORMS, Batch, as_batch, collate

X, Y, INDEX = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.tensor([7, 2, 5, 0])
MASK = torch.tensor([[1, 1, 0]] * 4)


def fields(batch: Batch) -> tuple:
    return batch.inputs, batch.target, batch.index, batch.attention_mask


@pytest.mark.parametrize(
    "raw, expected",
    [
        (X, (X, None, None, None)),
        ((X,), (X, None, None, None)),
        ((X, Y), (X, Y, None, None)),
        ([X, Y, INDEX], (X, Y, INDEX, None)),
        ({"inputs": X, "target": Y, "index": INDEX, "attention_mask": MASK}, (X, Y, INDEX, MASK)),
        ({"x": X, "y": Y}, (X, Y, None, None)),  # the keys of kdlight before named batches
        ({"inputs": X}, (X, None, None, None)),
    ],
    ids=["tensor", "(x,)", "(x, y)", "[x, y, index]", "named dict", "x/y dict", "inputs only"],
)
def test_every_accepted_form_reads_as_named_fields(raw, expected):
    batch = as_batch(raw)
    assert all(a is b for a, b in zip(fields(batch), expected)) and batch.extras == {} and batch.transfer is None
    assert len(batch) == 4


def test_a_batch_is_returned_as_it_is_and_extra_keys_are_kept():
    batch = Batch(X, Y)
    assert as_batch(batch) is batch
    extra = as_batch({"inputs": X, "target": Y, "token_type_ids": MASK})
    assert extra.extras == {"token_type_ids": MASK} and extra.attention_mask is None


def test_transfer_form_keeps_both_streams():
    x_u = torch.randn(6, 3)
    batch = as_batch({"labeled": {"inputs": X, "target": Y, "index": INDEX}, "transfer": {"inputs": x_u}})
    assert fields(batch)[:3] == (X, Y, INDEX) and batch.transfer.inputs is x_u and batch.transfer.target is None
    assert as_batch({"labeled": (X, Y), "transfer": (x_u,)}).transfer.inputs is x_u
    assert as_batch({"labeled": (X, Y)}).transfer is None


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "a NoneType"),
        ((), "a tuple of 0 items"),
        ((X, Y, INDEX, MASK), "a tuple of 4 items"),
        ("inputs", "a str"),
    ],
)
def test_unknown_forms_are_one_line_listing_the_accepted_ones(raw, message):
    with pytest.raises(ValueError) as error:
        as_batch(raw)
    text = str(error.value)
    assert text == f"cannot read a batch from {message}; the accepted forms are {ACCEPTED_FORMS}" and "\n" not in text


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"image": X, "label": Y}, r"needs 'inputs' \(or 'x'\), but has keys \['image', 'label'\]"),
        ({"x": X, "inputs": X}, "names its inputs twice"),
        ({"labeled": (X, Y), "other": (X,)}, r"may only add 'transfer', but it has \['other'\]"),
    ],
)
def test_malformed_dicts_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        as_batch(raw)


def test_to_dict_reads_back_to_the_same_fields():
    batch = Batch(X, Y, INDEX, MASK, extras={"lengths": INDEX})
    assert sorted(batch.to_dict()) == ["attention_mask", "index", "inputs", "lengths", "target"]
    again = as_batch(batch.to_dict())
    assert fields(again) == fields(batch) and again.extras == batch.extras
    with_transfer = Batch(X, Y, transfer=Batch(X[:2]))
    assert as_batch(with_transfer.to_dict()).transfer.inputs is with_transfer.transfer.inputs


def test_collate_names_tuple_and_dict_samples_alike():
    tuples = collate([(X[i], Y[i], int(INDEX[i])) for i in range(4)])
    dicts = collate([{"inputs": X[i], "target": Y[i], "index": int(INDEX[i])} for i in range(4)])
    for out in (tuples, dicts):
        assert sorted(out) == ["index", "inputs", "target"]
        assert torch.equal(out["inputs"], X) and torch.equal(out["target"], Y) and torch.equal(out["index"], INDEX)
    assert collate([(X[i],) for i in range(4)]).keys() == {"inputs"}


def test_lightning_moves_a_batch_to_the_device_as_a_batch():
    batch = Batch(X, Y, INDEX, MASK, extras={"lengths": INDEX}, transfer=Batch(X[:2]))
    for moved in (
        move_data_to_device(batch, torch.device("meta")),
        LightningModule().transfer_batch_to_device(batch, torch.device("meta"), 0),
    ):
        assert isinstance(moved, Batch) and isinstance(moved.transfer, Batch)
        tensors = [*fields(moved), moved.extras["lengths"], moved.transfer.inputs]
        assert all(t.device.type == "meta" for t in tensors)
        assert moved.inputs.shape == X.shape and moved.transfer.target is None
    assert batch.inputs.device.type == "cpu"  # the original is left alone


def test_lightning_reads_the_batch_size_of_a_named_dict_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extract_batch_size(Batch(X, Y, INDEX).to_dict()) == 4


def test_collate_passes_a_ready_batch_through_with_its_fields_named():
    """A dataset's ``__getitems__`` may build the whole batch: collate only names it."""
    ready = {"x": X[:4], "y": Y[:4], "index": INDEX[:4], "note": "kept"}
    batch = collate(ready)
    assert batch.keys() == {"inputs", "target", "index", "note"}
    assert batch["inputs"] is ready["x"] and batch["target"] is ready["y"] and batch["note"] == "kept"
