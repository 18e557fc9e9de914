"""Run a kdlight config over N seeds and tabulate mean ± std of chosen metrics.

    python -m kdlight.sweeps.seeds -c configs/digits/kd.yaml --seeds 3
    python -m kdlight.sweeps.seeds -c configs/digits/kd_explain.yaml --seeds 3 \\
        --metrics val/acc val/explain/saliency/rank_correlation --checkpoint last -- --trainer.max_epochs=10

Seed ``s`` (0 .. N-1) runs ``kdlight fit -c CONFIG ... --seed_everything=s --data.init_args.seed=s
--run_dir=<out>/seed<s> <extra overrides>`` in-process (``--data.init_args.seed`` only when the
config distils no teacher checkpoint, whose split must stay the teacher's, and only when the
config's datamodule takes a seed). A seed whose run directory has a ``latest`` link (written only
when a fit completes, :mod:`kdlight.reporting.runs`) is skipped, so the command resumes where an
interrupted one stopped; a killed seed is fitted again into a new ``version_<n>``.

Each seed's newest completed fit is read with :func:`kdlight.analysis.load_run`: the epoch-level
row at the best epoch by ``--monitor`` / ``--mode`` (``--checkpoint best``) or the last epoch
(``--checkpoint last``). The table (one row per seed, then mean ± sample std) is printed and saved
as ``<out>/seeds.md``; the per-seed rows as ``<out>/seeds.csv``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import importlib
import inspect
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from kdlight.analysis import load_run
from kdlight.analysis.tidy import metric_columns
from kdlight.reporting.runs import completed_version

PROG = "python -m kdlight.sweeps.seeds"


class SeedsError(ValueError):
    """A problem the user can fix, shown as one line with exit status 2."""


# ------------------------------------------------------------------------------------ arguments
def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A sweep command's parser with its ``-c`` configs (kdlight overrides come after ``--``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Everything after -- is passed to every `kdlight fit`, e.g. -- --trainer.max_epochs=5",
    )
    parser.add_argument("-c", "--config", action="append", required=True, type=Path, help="config file (repeatable)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (kdlight overrides come after ``--``)."""
    parser = command_parser(PROG, "Run a kdlight config over N seeds; print and save a mean ± std table of metrics.")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: 0 .. N-1 (default 3)")
    parser.add_argument("--metrics", nargs="+", default=["val/acc"], help="epoch-level metrics to tabulate")
    parser.add_argument(
        "--checkpoint", choices=["best", "last"], default="best", help="row: best epoch by --monitor, or last epoch"
    )
    parser.add_argument("--monitor", default="val/acc", help="metric that picks the best epoch (default val/acc)")
    parser.add_argument("--mode", choices=["max", "min"], default="max", help="best is max or min of --monitor")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default runs/seeds/<config stem>)")
    return parser


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command's own options; what follows ``--`` becomes ``args.extra``, the kdlight overrides."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1 :]
    return args


def overrides_set(extra: Sequence[str], option: str) -> bool:
    """Whether the kdlight overrides ``extra`` set ``option`` (``--opt value`` or ``--opt=value``)."""
    return any(e == option or e.startswith(option + "=") for e in extra)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; bad input exits with one line and status 2."""
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    for option in ("--run_dir", "--seed_everything", "--data.init_args.seed"):
        if overrides_set(args.extra, option):
            parser.error(f"{option} is set per seed by this command; give --out for the run directories instead")
    for config in args.config:
        if not config.is_file():
            parser.error(f"config file {config} does not exist")
    if args.out is None:
        args.out = Path("runs") / "seeds" / args.config[0].stem
    return args


# ------------------------------------------------------------------------------------ running
def _init_parameters(class_path: str) -> set[str]:
    """The ``__init__`` parameter names of ``class_path`` (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return set(inspect.signature(cls).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()


def data_takes_seed(configs: Sequence[Path]) -> bool:
    """Whether the datamodule the configs name (last ``class_path`` wins) takes a ``seed``."""
    class_path, keys = None, set()
    for config in configs:
        data = (yaml.safe_load(config.read_text()) or {}).get("data")
        if not isinstance(data, dict):
            continue
        if data.get("class_path") and data["class_path"] != class_path:
            class_path, keys = data["class_path"], set()
        keys |= set(data.get("init_args") or {})
    return "seed" in keys or (class_path is not None and "seed" in _init_parameters(class_path))


def distils_a_teacher_checkpoint(configs: Sequence[Path]) -> bool:
    """Whether the configs (last one wins) distil a teacher checkpoint. Its teacher was trained on
    one data split; another split would put its training samples into val/test, which kdlight
    refuses, so then only ``--seed_everything`` changes with the seed."""
    checkpoint = None
    for config in configs:
        model = (yaml.safe_load(config.read_text()) or {}).get("model")
        init_args = model.get("init_args") if isinstance(model, dict) else None
        if isinstance(init_args, dict) and "teacher_checkpoint" in init_args:
            checkpoint = init_args["teacher_checkpoint"]
    return bool(checkpoint)


def fit_arguments(
    configs: Sequence[Path], seed: int, run_dir: Path, extra: Sequence[str], seeded_data: bool
) -> list[str]:
    """The ``kdlight fit`` arguments of one seed."""
    args = ["fit"]
    for config in configs:
        args += ["-c", str(config)]
    args.append(f"--seed_everything={seed}")
    if seeded_data:
        args.append(f"--data.init_args.seed={seed}")
    return [*args, f"--run_dir={run_dir}", *extra]


def is_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a completed fit (its ``latest`` link, written when a fit ends)."""
    return completed_version(run_dir) is not None


def fit_seed(arguments: list[str], run_dir: Path, callbacks: Sequence[Any] = ()) -> None:
    """Run one ``kdlight fit`` in-process (``callbacks`` added to its trainer); raise unless it completed."""
    from kdlight.cli import main as kdlight

    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this command's argv
    try:
        kdlight(arguments, callbacks=callbacks)
    finally:
        sys.argv = argv
    if not is_complete(run_dir):
        raise SeedsError(f"the fit in {run_dir} did not complete (no {run_dir / 'latest'} link); run again to resume")


# ------------------------------------------------------------------------------------ reading
def unknown_metric(name: str, logged: Sequence[str], where: str) -> SeedsError:
    """The one-line error for a metric ``where`` never logged, with the close names."""
    close = difflib.get_close_matches(name, logged, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"it logs: {', '.join(logged)}"
    return SeedsError(f"metric {name!r} is not an epoch-level metric of {where}; {hint}")


def chosen_row(epochs: pd.DataFrame, checkpoint: str, monitor: str, mode: str) -> pd.Series:
    """The epoch-level row of the best epoch by ``monitor`` (first such) or of the last epoch."""
    if checkpoint == "last":
        return epochs.iloc[-1]
    values = epochs[monitor]
    if values.notna().sum() == 0:
        raise SeedsError(f"{monitor!r} has no values to pick the best epoch by")
    return epochs.loc[values.idxmax() if mode == "max" else values.idxmin()]


def value_near(epochs: pd.DataFrame, metric: str, epoch: int) -> tuple[float, int | None]:
    """``metric`` at ``epoch``, else at the nearest epoch that logged it (earlier on ties)."""
    logged = epochs[epochs[metric].notna()]
    if logged.empty:
        return math.nan, None
    nearest = logged.loc[(logged["epoch"] - epoch).abs().sort_values(kind="stable").index[0]]
    return float(nearest[metric]), int(nearest["epoch"])


def read_seed(seed: int, run_dir: Path, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """One seed's row (``seed``, ``version``, ``epoch``, metrics) and notes on metrics taken
    from another epoch than the chosen one."""
    try:
        run = load_run(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise SeedsError(f"seed {seed}: {err}") from None
    epochs = run.epochs
    logged = metric_columns(epochs)
    needed = list(args.metrics) + ([args.monitor] if args.checkpoint == "best" else [])
    for name in needed:
        if name not in logged:
            raise unknown_metric(name, logged, run.name)
    row = chosen_row(epochs, args.checkpoint, args.monitor, args.mode)
    epoch = int(row["epoch"])
    out: dict[str, Any] = {"seed": seed, "version": run.path.name, "epoch": epoch}
    notes = []
    for name in args.metrics:
        out[name], used = value_near(epochs, name, epoch)
        if used is not None and used != epoch:
            notes.append(f"seed {seed}: {name} from epoch {used} (not logged at epoch {epoch})")
    return out, notes


# ------------------------------------------------------------------------------------ table
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1) of the finite values; std None for fewer than two."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return math.nan, None
    return statistics.mean(finite), (statistics.stdev(finite) if len(finite) > 1 else None)


def format_mean_std(values: Sequence[float]) -> str:
    """``"m ± s"`` (4 decimals), just ``"m"`` for one value, ``"n/a"`` for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def which_row(args: argparse.Namespace) -> str:
    """The table's statement of which epoch each row is from."""
    return f"best by {args.monitor} ({args.mode})" if args.checkpoint == "best" else "last epoch"


def markdown_table(rows: Sequence[dict[str, Any]], args: argparse.Namespace, notes: Sequence[str]) -> str:
    """The seeds table in markdown: header line, one row per seed, mean ± std, notes."""
    configs = " ".join(f"-c {c}" for c in args.config)
    lines = [
        f"Seeds of `{configs}`: {len(rows)} seed(s). Checkpoint: {which_row(args)}, in each seed's newest completed fit.",
        "",
        "| seed | run | epoch | " + " | ".join(args.metrics) + " |",
        "|---|---|---|" + "---|" * len(args.metrics),
    ]
    for row in rows:
        cells = [f"{row[m]:.4f}" if not math.isnan(row[m]) else "n/a" for m in args.metrics]
        lines.append(
            f"| {row['seed']} | seed{row['seed']}/{row['version']} | {row['epoch']} | " + " | ".join(cells) + " |"
        )
    summary = [format_mean_std([row[m] for row in rows]) for m in args.metrics]
    lines.append("| mean ± std | | | " + " | ".join(summary) + " |")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> None:
    """The per-seed rows as CSV: ``seed``, ``version``, ``epoch`` and one column per metric."""
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["seed", "version", "epoch", *metrics])
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------ command
def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Fit the missing seeds and read every seed's row (completed seeds are read first, so an
    unknown metric is reported before anything runs)."""
    seeded_data = data_takes_seed(args.config) and not distils_a_teacher_checkpoint(args.config)
    rows: dict[int, tuple[dict[str, Any], list[str]]] = {}
    run_dirs = {s: args.out / f"seed{s}" for s in range(args.seeds)}
    for seed, run_dir in run_dirs.items():
        if is_complete(run_dir):
            print(f"seed {seed}: skipped, {run_dir} already holds a completed fit", flush=True)
            rows[seed] = read_seed(seed, run_dir, args)
    for seed, run_dir in run_dirs.items():
        if seed in rows:
            continue
        arguments = fit_arguments(args.config, seed, run_dir, args.extra, seeded_data)
        print(f"seed {seed}: kdlight {' '.join(arguments)}", flush=True)
        fit_seed(arguments, run_dir)
        rows[seed] = read_seed(seed, run_dir, args)
    return [rows[s] for s in sorted(rows)]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the command; return the per-seed rows."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        results = sweep(args)
    except SeedsError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    rows = [row for row, _ in results]
    notes = [note for _, seed_notes in results for note in seed_notes]
    table = markdown_table(rows, args, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.md").write_text(table)
    write_csv(args.out / "seeds.csv", rows, args.metrics)
    print("\n" + table + f"\nsaved {args.out / 'seeds.md'} and {args.out / 'seeds.csv'}", flush=True)
    return rows


if __name__ == "__main__":
    main()
