"""Forward hooks that capture the outputs of named submodules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdlight.core.layers import resolve_module


def first_tensor(output: Any) -> Any:
    """What a tap keeps of a module's output: a tensor as is; of a tuple / list the first tensor,
    of a dict or ``transformers`` ``ModelOutput`` the first tensor value (a Hugging Face layer's
    hidden states); anything else unchanged."""
    if isinstance(output, Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else None
    if items is None:
        return output
    return next((item for item in items if isinstance(item, Tensor)), output)


def resolve_tap(model: nn.Module, name: str, role: str) -> nn.Module:
    """``model``'s submodule ``name``; an index past the end of a list of modules (``hidden_states.5``
    of a 2-layer model) names the valid range, anything else unknown lists the valid names."""
    parent_name, _, index = name.rpartition(".")
    if parent_name and index.isdigit():
        try:
            parent = model.get_submodule(parent_name)
        except AttributeError:
            parent = None
        if isinstance(parent, (nn.ModuleList, nn.Sequential)) and int(index) >= len(parent):
            raise ValueError(
                f"{role} has no submodule {name!r}: {type(model).__name__} has {parent_name}.0 to "
                f"{parent_name}.{len(parent) - 1}; pick layer indices in that range"
            )
    return resolve_module(model, name, role)


class FeatureTaps:
    """Capture outputs of the named submodules of ``model`` on every forward.

    ``taps.features`` holds the latest output of each name: a tensor; of a module that returns a
    tuple, a dict or a ``ModelOutput`` (Hugging Face layers) the first tensor in it (see
    :func:`first_tensor`). Use as a context manager or call :meth:`remove` to detach the hooks.
    An unknown name is a one-line ValueError listing the valid names
    (:func:`kdlight.core.layers.resolve_module`), an index out of range the valid range.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name in dict.fromkeys(names):
            module = resolve_tap(model, name, role)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs, output) -> None:
            self.features[name] = first_tensor(output)

        return store

    def pop(self) -> dict[str, Tensor]:
        """Return the captured features and forget them (so no graph is kept alive)."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
