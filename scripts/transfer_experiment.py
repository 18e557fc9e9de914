"""MNIST-1D beyond the labels: teacher, scratch, KD, KD + transfer set (issue 6 numbers).

Each seed trains its own teacher, then the students from ``configs/mnist1d/<name>.yaml`` with that
teacher, and evaluates the best checkpoint (by val/acc) on the 1000 official test samples::

    python scripts/transfer_experiment.py --seeds 0 1 2 \\
        --configs teacher scratch kd kd_transfer scratch_cnn kd_cnn kd_transfer_cnn

Prints one line per run and a mean ± std table at the end. Torch runs on one thread.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from kdlight.cli import main as kdlight

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import run_overrides  # noqa: E402  (the shared per-seed overrides)


def run(config: str, seed: int, root: str) -> dict[str, float]:
    """Fit ``configs/mnist1d/<config>.yaml`` for one seed (scripts/results.py's overrides, the seed's
    own teacher) and return the test metrics of the best checkpoint."""
    run_dir = Path(root) / config
    teacher = None if config == "teacher" else Path(root) / "teacher" / "best.ckpt"
    cli = kdlight(run_overrides(Path(f"configs/mnist1d/{config}.yaml"), run_dir, seed, teacher_checkpoint=teacher))
    return cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["teacher", "scratch", "kd", "kd_transfer"])
    parser.add_argument("--root", default="runs/transfer_experiment")
    args = parser.parse_args()
    if "teacher" not in args.configs:
        parser.error("--configs must include teacher (every seed distils from its own teacher)")
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {c: [] for c in args.configs}
    for seed in args.seeds:
        for config in ["teacher", *[c for c in args.configs if c != "teacher"]]:
            start = time.perf_counter()
            metrics = run(config, seed, f"{args.root}/s{seed}")
            results[config].append(100 * metrics["test/acc"])
            print(
                f"seed {seed} {config}: test acc {metrics['test/acc']:.4f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print("\n| config | test acc (mean ± std) |\n|---|---|")
    for config, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {config} | {statistics.mean(values):.1f} ± {std:.1f} % |")


if __name__ == "__main__":
    main()
