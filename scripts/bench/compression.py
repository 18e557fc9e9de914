"""Section 6: what compression buys an MLP student on CPU: latency, size on disk, parameters.

Variants of the same trained-size student (random weights, seed 0): dense float32 (baseline),
90 % unstructured magnitude-pruned (``torch.nn.utils.prune.l1_unstructured`` per Linear, made
permanent: zeros stored densely), int8 dynamic (torchao ``Int8DynamicActivationInt8WeightConfig``)
and int8 weight-only (``Int8WeightOnlyConfig``), each via :mod:`kdlight.compression`. Latency is
:func:`kdlight.compression.measure.cpu_latency` (eager, one thread, inference mode) at batch 1 and
64; the variants are timed in interleaved rounds and the table gives the median of the round
medians with the range over rounds.

Run alone: ``python scripts/bench/compression.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench.common import Row, fmt_ratio, log, median

#: (label, MLP hidden widths): the digits student of configs/digits/kd.yaml and a wider one
STUDENTS = (("MLP 64-32-10 (digits kd.yaml student)", [32]), ("MLP 64-512-512-10", [512, 512]))
VARIANTS = ("dense", "sparse90", "int8_dynamic", "int8_weight_only")
BATCHES = (1, 64)
SPARSITY = 0.9


def variants(hidden: list[int]) -> dict[str, nn.Module]:
    """The dense student and its compressed versions."""
    from kdlight.compression.quantization import quantize_int8
    from kdlight.models import MLP

    torch.manual_seed(0)
    dense = MLP(in_features=64, num_classes=10, hidden=hidden).eval()
    sparse = copy.deepcopy(dense)
    for module in sparse.modules():
        if isinstance(module, nn.Linear):
            torch.nn.utils.prune.l1_unstructured(module, "weight", amount=SPARSITY)
            torch.nn.utils.prune.remove(module, "weight")
    return {
        "dense": dense,
        "sparse90": sparse,
        "int8_dynamic": quantize_int8(dense, "dynamic"),
        "int8_weight_only": quantize_int8(dense, "weight_only"),
    }


def run(cfg) -> dict:
    """Per student: latency rounds per variant and batch size, sizes and parameter counts."""
    from kdlight.compression.measure import cpu_latency, parameter_counts, size_on_disk

    rounds, repeats = (3, 30) if cfg.quick else (7, 100)
    example = torch.randn(64, 64)
    results = {}
    for label, hidden in STUDENTS:
        models = variants(hidden)
        times: dict[str, dict[int, list[float]]] = {v: {b: [] for b in BATCHES} for v in models}
        for r in range(rounds):
            for name, model in models.items():
                for batch, ms in cpu_latency(model, example, BATCHES, repeats=repeats, warmup=10).items():
                    times[name][batch].append(ms)
            log(
                f"  [{label}] compression round {r + 1}/{rounds}: "
                + ", ".join(f"{n}={t[1][-1]:.3f}/{t[64][-1]:.3f}ms" for n, t in times.items())
            )
        results[label] = {
            "latency": times,
            "size": {n: size_on_disk(m) for n, m in models.items()},
            "gzip": {n: size_on_disk(m, compressed=True) for n, m in models.items()},
            "params": {n: parameter_counts(m) for n, m in models.items()},
        }
    return results


def rows(results: dict) -> list[Row]:
    out: list[Row] = []
    for label, res in results.items():
        lat, size, gz, params = res["latency"], res["size"], res["gzip"], res["params"]
        for batch in BATCHES:
            base = median(lat["dense"][batch])
            for name in VARIANTS:
                values = lat[name][batch]
                med = median(values)
                out.append(
                    (
                        "6",
                        f"[{label}] {name} latency, batch {batch}",
                        f"{med:.4f} ms ({min(values):.4f}-{max(values):.4f})",
                        "dense float32" if name != "dense" else "itself",
                        fmt_ratio(med / base),
                        "",
                    )
                )
        for name in VARIANTS:
            nonzero, total = params[name]
            out.append(
                (
                    "6",
                    f"[{label}] {name} size on disk (gzip); non-zero / total parameters",
                    f"{size[name] / 1024:.1f} KiB ({gz[name] / 1024:.1f} KiB); {nonzero}/{total}",
                    f"{size['dense'] / 1024:.1f} KiB ({gz['dense'] / 1024:.1f} KiB)",
                    f"{fmt_ratio(size[name] / size['dense'])} ({fmt_ratio(gz[name] / gz['dense'])})",
                    "",
                )
            )
    return out


def notes(cfg) -> list[str]:
    return [
        "Section 6: eager PyTorch on CPU, one thread, inference mode; int8 via torchao 0.18 (Linear layers only). "
        "Ratios below 1 are faster/smaller than the dense float32 student; 'sparse90' stores its zeros densely, "
        "so only the gzip size shows the sparsity."
    ]


def main(argv: list[str] | None = None) -> None:
    from bench.common import machine_line, quiet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 30 timed calls (default 7 of 100)")
    cfg = parser.parse_args(argv)
    quiet()
    print(f"machine: {machine_line('cpu')}")
    header = ["sec", "measurement", "value (median, [min-max])", "baseline (same run)", "ratio", "goal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(run(cfg))]
    print("\n".join(lines + [""] + notes(cfg)))


if __name__ == "__main__":
    main()
