"""Forward hooks that capture the outputs of named submodules."""
from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def module_names(model: nn.Module) -> list[str]:
    """Paths of every named submodule, as accepted by ``get_submodule``."""
    return [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """Return ``model.get_submodule(name)`` or raise a ValueError listing the valid names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = module_names(model)
        raise ValueError(
            f"{role} has no submodule {name!r}; valid names are: {', '.join(names)}"
        ) from None


class FeatureTaps:
    """Capture outputs of the named submodules of ``model`` on every forward.

    ``taps.features`` holds the latest output of each name. Use as a context manager or call
    :meth:`remove` to detach the hooks.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name in dict.fromkeys(names):
            module = resolve_module(model, name, role)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs, output) -> None:
            self.features[name] = output[0] if isinstance(output, (tuple, list)) else output

        return store

    def pop(self) -> dict[str, Tensor]:
        """Return the captured features and forget them (so no graph is kept alive)."""
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
