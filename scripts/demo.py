"""Train a digits teacher, a scratch student and a distilled student; print how they compare.

Run through ``bash scripts/demo.sh`` (installs everything) or directly with
``python scripts/demo.py [--epochs N]``. Each run lands in ``runs/digits/<config>/version_<n>/``
and the table in ``runs/digits/demo/version_<n>/results.md``. Torch runs on one thread, so the
numbers are the same on every machine (they change with the thread count: float sums are ordered
differently).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kdlight.analysis.compare import compare_models, format_table, load_network
from kdlight.cli import main as kdlight
from kdlight.reporting.runs import next_version
from kdlight.training.reinit import reinitialized

REPO = Path(__file__).resolve().parents[1]
RUNS = [  # (row label, config, role of the network in its checkpoint)
    ("teacher (CNN)", "configs/digits/teacher.yaml"),
    ("student from scratch (MLP)", "configs/digits/scratch.yaml"),
    ("student distilled, KD (MLP)", "configs/digits/kd.yaml"),
    ("student distilled, KD + explanation matching (MLP)", "configs/digits/kd_explain.yaml"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs of every run")
    args = parser.parse_args()
    extra = [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    torch.set_num_threads(1)  # reproducible numbers (and fastest for these small models)
    networks = {}
    for label, config in RUNS:
        start = time.perf_counter()
        print(f"\n=== {label}: kdlight fit -c {config} ===", flush=True)
        cli = kdlight(
            [
                "fit",
                "-c",
                str(REPO / config),
                "--trainer.enable_model_summary=false",
                "--trainer.enable_progress_bar=false",
                *extra,
            ]
        )
        best = cli.trainer.checkpoint_callback.best_model_path
        networks[label] = load_network(cli.model, best)
        if label.startswith("student from scratch"):
            networks["untrained student (chance level)"] = reinitialized(networks[label])
        print(f"--- {label}: best checkpoint {best} ({time.perf_counter() - start:.0f} s)")
    datamodule = cli.datamodule
    datamodule.setup("test")
    x, y = datamodule.split_tensors("test")
    rows = compare_models(
        networks,
        teacher=RUNS[0][0],
        inputs=x,
        labels=y,
        train_inputs=datamodule.train_inputs(),
        modality=datamodule.modality,
    )
    rows.sort(key=lambda r: r["model"].startswith("untrained"))
    table = format_table(rows, title=f"Digits test set ({len(y)} samples)")
    out = next_version(REPO / "runs" / "digits" / "demo") / "results.md"
    out.parent.mkdir(parents=True)
    out.write_text(table + "\n")
    print("\n" + table + f"\n(saved to {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
