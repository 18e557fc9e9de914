"""``AttributionConfig``: which method explains a model, and its knobs (validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass

from kdlight.explain.attribution.registry import METHODS, get_method

__all__ = ["AttributionConfig", "BASELINE_KINDS", "NOISE_TUNNEL_TYPES"]

BASELINE_KINDS: tuple[str, ...] = ("auto", "zeros", "mean", "sample")
NOISE_TUNNEL_TYPES: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttributionConfig:
    """How to explain a model: the method and its knobs (validated on construction).

    ``method``: a registered name (:func:`kdlight.explain.attribution.method_names`) or the class
    path of a :class:`kdlight.explain.attribution.Method` subclass. ``n_steps``: integration steps
    of integrated_gradients. ``internal_batch_size``: path points per forward pass for
    integrated_gradients (at least one point per input, so a forward holds
    ``max(internal_batch_size, N)`` examples; memory stays flat as ``n_steps`` grows) and the
    perturbation batch of the perturbation methods; ``None`` means all at once. ``n_samples``:
    random samples of gradient_shap, KernelShap / LIME surrogate samples, ShapleyValueSampling
    permutations. ``stdevs``: gradient_shap input noise. ``baseline`` / ``n_baselines``: see
    :mod:`kdlight.explain.attribution`. ``layer``: Grad-CAM layer (``None`` = the model's
    ``gradcam_layer``, else its last conv). ``noise_tunnel`` / ``nt_samples`` / ``nt_stdevs``:
    optional SmoothGrad-style wrapper. ``patch_size``: feature-group size of the perturbation
    methods (square patches of images, segments of signals, consecutive real tokens of text). ``seed``: seeds every random choice
    of the call.
    """

    method: str
    n_steps: int = 32
    internal_batch_size: int | None = 256
    n_samples: int = 16
    stdevs: float = 0.1
    baseline: str = "auto"
    n_baselines: int = 16
    layer: str | None = None
    noise_tunnel: str | None = None
    nt_samples: int = 8
    nt_stdevs: float = 0.1
    patch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        method = get_method(self.method)
        for name in ("n_steps", "n_samples", "n_baselines", "nt_samples"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"AttributionConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("internal_batch_size", "patch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"AttributionConfig.{name} must be None or an integer >= 1, got {value!r}")
        if not _is_number(self.stdevs) or self.stdevs < 0:
            raise ValueError(f"AttributionConfig.stdevs must be a number >= 0, got {self.stdevs!r}")
        if not _is_number(self.nt_stdevs) or self.nt_stdevs <= 0:
            raise ValueError(f"AttributionConfig.nt_stdevs must be a number > 0, got {self.nt_stdevs!r}")
        if self.baseline not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline {self.baseline!r}; valid baselines are: {', '.join(BASELINE_KINDS)}")
        if self.baseline == "sample" and not method.baseline_distribution:
            users = sorted(name for name, m in METHODS.items() if m.baseline_distribution)
            raise ValueError(
                f"baseline='sample' (a distribution of baselines) is only used by {', '.join(users)}; "
                f"use 'zeros' or 'mean' for {self.method}"
            )
        if self.noise_tunnel is not None:
            if self.noise_tunnel not in NOISE_TUNNEL_TYPES:
                raise ValueError(
                    f"unknown noise_tunnel {self.noise_tunnel!r}; valid values are None, {', '.join(NOISE_TUNNEL_TYPES)}"
                )
            if not method.noise_tunnel:
                wrapped = [name for name, m in METHODS.items() if m.noise_tunnel]
                raise ValueError(f"noise_tunnel is not supported for {self.method}; it wraps: {', '.join(wrapped)}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"AttributionConfig.layer must be None or a submodule path, got {self.layer!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"AttributionConfig.seed must be an integer in [0, 2**32), got {self.seed!r}")
