"""Per-probe cost of kdlight's attributions against Captum's own calls on the same model and probes.

Run: ``python scripts/bench/captum_parity.py [--repeats 30] [--methods grad_cam,integrated_gradients]``
(1 torch thread by default). Workloads: the callback's teachers with random weights, in eval mode:
CNN2d on 64 digits-shaped probes ``[1, 8, 8]`` and CNN1d on 128 MNIST-1D-shaped probes ``[1, 40]``.
kdlight: :func:`kdlight.explain.attribute` (its whole call: context, placement, method, finish).
Captum: the method's class called directly on ``inputs.clone().requires_grad_()``; Grad-CAM is
``LayerGradCam`` + ``LayerAttribution.interpolate`` (bilinear / linear) broadcast over channels,
as kdlight's map. Calls are interleaved; the table gives medians (ms per call, us per probe) and
the ratio kdlight / Captum (below 1: kdlight is faster).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kdlight.core.modality import Image, Modality, Signal  # noqa: E402
from kdlight.explain.attribution import AttributionConfig, attribute  # noqa: E402
from kdlight.models import CNN1d, CNN2d  # noqa: E402

#: name -> (model factory, probe shape, probes, modality)
WORKLOADS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int, Modality]] = {
    "digits CNN2d": (lambda: CNN2d(1, 10), (1, 8, 8), 64, Image()),
    "mnist1d CNN1d": (lambda: CNN1d(1, 10), (1, 40), 128, Signal()),
}
METHODS = ("grad_cam", "integrated_gradients", "gradient_shap")


def captum_call(method: str, model: nn.Module, x: Tensor, target: Tensor, modality: Modality) -> Tensor:
    """Captum's own call for ``method`` on ``model`` (already in eval mode)."""
    from captum.attr import GradientShap, IntegratedGradients, LayerAttribution, LayerGradCam

    inputs = x.clone().requires_grad_(True)
    if method == "grad_cam":
        layer = model.get_submodule(model.gradcam_layer)
        cam = LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=modality.interpolation)
        return cam.expand(-1, x.shape[1], *x.shape[2:])
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(
            inputs, baselines=torch.zeros_like(x), target=target, n_steps=16, internal_batch_size=256
        )
    if method == "gradient_shap":
        torch.manual_seed(0)
        return GradientShap(model).attribute(inputs, baselines=torch.zeros_like(x[:1]), target=target, n_samples=8)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def kdlight_config(method: str) -> AttributionConfig:
    """kdlight's settings matching :func:`captum_call`."""
    extra = {"integrated_gradients": {"n_steps": 16}, "gradient_shap": {"n_samples": 8, "baseline": "zeros"}}
    return AttributionConfig(method=method, **extra.get(method, {}))


def median_ms(fn: Callable[[], object], repeats: int) -> list[float]:
    """``repeats`` wall times of ``fn`` in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(
    workload: str, method: str, repeats: int, rounds: int = 5, probes: int | None = None
) -> tuple[float, float, int]:
    """Median ms per call of kdlight and Captum (``probes`` per call, default the workload's),
    interleaved in ``rounds`` blocks; returns them and the probe count."""
    factory, shape, n, modality = WORKLOADS[workload]
    n = probes or n
    torch.manual_seed(0)
    model = factory().eval().requires_grad_(False)  # a frozen teacher, as the callback explains it
    x = torch.randn(n, *shape)
    target = model(x).argmax(-1).detach()
    config = kdlight_config(method)
    ours = lambda: attribute(model, x, target, config, modality=modality)  # noqa: E731
    theirs = lambda: captum_call(method, model, x, target, modality)  # noqa: E731
    for fn in (ours, theirs, ours, theirs):  # warm-up
        fn()
    a, b = [], []
    for _ in range(rounds):
        a += median_ms(ours, max(1, repeats // rounds))
        b += median_ms(theirs, max(1, repeats // rounds))
    return statistics.median(a), statistics.median(b), n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30, help="timed calls per side (interleaved in 5 blocks)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--probes", default=None, help="comma-separated probe counts per call (default: 64 digits, 128 MNIST-1D)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.probes.split(",")] if args.probes else [None]
    print("| workload | method | kdlight ms (us/probe) | Captum ms (us/probe) | kdlight / Captum |")
    print("|---|---|---|---|---|")
    for workload, count, method in itertools.product(WORKLOADS, counts, args.methods.split(",")):
        ours, theirs, n = measure(workload, method, args.repeats, probes=count)
        print(
            f"| {workload}, {n} probes | {method} | {ours:.2f} ({1e3 * ours / n:.1f}) | "
            f"{theirs:.2f} ({1e3 * theirs / n:.1f}) | {ours / theirs:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
