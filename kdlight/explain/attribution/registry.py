"""The attribution-method registry: names -> :class:`~kdlight.explain.attribution.base.Method`.

Built-in methods register themselves where they are implemented (``@register``); a method can
also be named by the class path of any ``Method`` subclass (``my_package.module.MyMethod``), which
is imported on first use, so user methods work from YAML without touching kdlight.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from kdlight.explain.attribution.base import Method

if TYPE_CHECKING:
    from kdlight.explain.attribution.config import AttributionConfig

__all__ = ["METHODS", "register", "get_method", "method_names", "is_pure", "baseline_kind"]

#: registered methods by name, in registration order
METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a ``Method`` subclass to :data:`METHODS` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise TypeError(f"register takes a Method subclass with a name, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(
            f"an attribution method named {cls.name!r} is already registered ({METHODS[cls.name].__qualname__})"
        )
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """The registered method names, in a stable order (class paths are accepted too)."""
    return list(METHODS)


def get_method(name: str) -> type[Method]:
    """The method called ``name``: a registered name or the class path of a ``Method`` subclass.
    An unknown name is a one-line ValueError listing the valid names."""
    if not isinstance(name, str):
        raise ValueError(f"an attribution method is named by a string, got {type(name).__name__}")
    if name in METHODS:
        return METHODS[name]
    if "." in name:
        return _import_method(name)
    close = difflib.get_close_matches(name, METHODS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown attribution method {name!r}{hint}; valid methods are: {', '.join(METHODS)}, "
        f"or the class path of a kdlight.explain.attribution.Method subclass"
    )


_IMPORTED: dict[str, type[Method]] = {}


def _import_method(path: str) -> type[Method]:
    if path in _IMPORTED:
        return _IMPORTED[path]
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"cannot import attribution method {path!r} ({err}); valid methods are: {', '.join(METHODS)}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"{path!r} is not a subclass of kdlight.explain.attribution.Method")
    _IMPORTED[path] = cls
    return cls


def is_pure(config: AttributionConfig) -> bool:
    """Whether a call draws no random numbers and registers no hooks on the model (the method is
    ``pure`` and no noise tunnel wraps it): it may run on another thread beside training."""
    return get_method(config.method).pure and config.noise_tunnel is None


def baseline_kind(config: AttributionConfig, has_train_inputs: bool) -> str | None:
    """The baseline a call will use (``zeros``, ``mean`` or ``sample``; ``None`` for methods that
    take none); ``auto`` resolves to ``sample`` for methods that average over a baseline
    distribution (SHAP) when training data are given, else ``zeros``."""
    method = get_method(config.method)
    if not method.takes_baseline:
        return None
    if config.baseline == "auto":
        return "sample" if method.baseline_distribution and has_train_inputs else "zeros"
    return config.baseline
