"""Forward hooks that capture the outputs of named submodules."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdlight.core.layers import resolve_module


class FeatureTaps:
    """Capture outputs of the named submodules of ``model`` on every forward.

    ``taps.features`` holds the latest output of each name. Use as a context manager or call
    :meth:`remove` to detach the hooks. An unknown name is a one-line ValueError listing the valid
    names (:func:`kdlight.core.layers.resolve_module`).
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

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
