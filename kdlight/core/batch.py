"""The batch contract: named fields, and the one parser that reads every batch form kdlight accepts.

kdlight's data modules yield dicts with the field names (``{"inputs", "target", "index"}``): every
tool on the way (``default_collate``, ``pin_memory``, DataLoader workers, Lightning's device
transfer and batch-size inference) handles dicts natively. Steps read any batch with
:func:`as_batch`, which returns a :class:`Batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.utils.data import default_collate

#: the named fields, in the order a positional ``(inputs, target, index)`` tuple lists the first three
FIELDS = ("inputs", "target", "index", "attention_mask")
#: older key names, read as the named field
ALIASES = {"x": "inputs", "y": "target"}
ACCEPTED_FORMS = (
    "a Batch, a tensor of inputs, (inputs,), (inputs, target), (inputs, target, index), "
    "a dict with 'inputs' (or 'x') and optional 'target' (or 'y'), 'index', 'attention_mask' and extra keys, "
    "or {'labeled': <batch>, 'transfer': <batch of unlabeled inputs>}"
)


@dataclass
class Batch:
    """One batch, by name.

    ``target``: class labels (``None``: unlabeled); ``index``: each sample's row in its split
    (what the teacher cache is keyed on); ``attention_mask``: which positions of a token sequence
    are real; ``extras``: any further named tensors; ``transfer``: unlabeled inputs that ride along
    with a labeled batch (a data module's transfer set).
    """

    inputs: Tensor
    target: Tensor | None = None
    index: Tensor | None = None
    attention_mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    transfer: Batch | None = None

    def __len__(self) -> int:
        """The number of samples (of the labeled part)."""
        return len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as the dict a kdlight data module yields (:func:`as_batch` reads it back)."""
        named = {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}
        if self.transfer is not None:
            return {"labeled": {**named, **self.extras}, "transfer": self.transfer.to_dict()}
        return {**named, **self.extras}


def as_batch(raw: Any) -> Batch:
    """Read a batch in any accepted form (see :data:`ACCEPTED_FORMS`) as a :class:`Batch`."""
    if isinstance(raw, Batch):
        return raw
    if isinstance(raw, Tensor):
        return Batch(inputs=raw)
    if isinstance(raw, Mapping):
        return _from_mapping(raw)
    if isinstance(raw, (list, tuple)) and 1 <= len(raw) <= 3:
        return Batch(*raw)
    raise ValueError(f"cannot read a batch from {_describe(raw)}; the accepted forms are {ACCEPTED_FORMS}")


def collate(samples: list[Any] | Mapping[str, Any]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` of kdlight's data modules: ``default_collate``, then the named dict
    (samples may be ``(inputs, target[, index])`` tuples or dicts with the field names). A dict is
    a batch a dataset's ``__getitems__`` already built: only named."""
    if isinstance(samples, Mapping):
        return as_batch(samples).to_dict()
    return as_batch(default_collate(samples)).to_dict()


def _from_mapping(raw: Mapping) -> Batch:
    if "labeled" in raw:
        unknown = sorted(set(raw) - {"labeled", "transfer"})
        if unknown:
            raise ValueError(
                f"a batch with 'labeled' may only add 'transfer', but it has {unknown}; the accepted forms are {ACCEPTED_FORMS}"
            )
        labeled = as_batch(raw["labeled"])
        transfer = raw.get("transfer")
        if transfer is None:
            return labeled
        return Batch(
            labeled.inputs, labeled.target, labeled.index, labeled.attention_mask, labeled.extras, as_batch(transfer)
        )
    named: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        if name in named:
            raise ValueError(f"a batch dict names its {name} twice ({name!r} and its alias); keep one of the two keys")
        (named if name in FIELDS else extras)[name] = value
    if "inputs" not in named:
        raise ValueError(
            f"a batch dict needs 'inputs' (or 'x'), but has keys {sorted(map(str, raw))}; the accepted forms are {ACCEPTED_FORMS}"
        )
    return Batch(**named, extras=extras)


def _describe(raw: Any) -> str:
    if isinstance(raw, (list, tuple)):
        return f"a {type(raw).__name__} of {len(raw)} items"
    return f"a {type(raw).__name__}"
