"""Search a kdlight config's hyper-parameters with Optuna: single- or multi-objective.

    python -m kdlight.sweeps.search -c configs/digits/kd.yaml --space space.yaml --trials 20
    python -m kdlight.sweeps.search -c configs/digits/kd_explain.yaml --space space.yaml --trials 20 \\
        --metric val/acc:max --metric val/explain/saliency/rank_correlation:max -- --trainer.max_epochs=10

``space.yaml`` maps dotted config keys (as the kdlight CLI takes them) to a distribution::

    model.init_args.objective.init_args.temperature: {float: [1.0, 8.0]}
    model.init_args.optimizer.init_args.lr: {float: [1.0e-4, 1.0e-1], log: true}
    data.init_args.batch_size: {int: [32, 128]}
    model.init_args.objective.init_args.alpha: {categorical: [0.1, 0.5, 0.9]}

Trial ``n`` runs ``kdlight fit -c CONFIG --run_dir=<out>/trial<n> --<key>=<value> ... <extra overrides>``
in-process and reads its metrics with :func:`kdlight.analysis.load_run` at the best epoch by the
first ``--metric`` (the row :mod:`kdlight.sweeps.seeds` picks with ``--checkpoint best``).

The study is stored (default ``sqlite:///<out>/study.db``) and loaded again when it exists, so
rerunning the command resumes: ``--trials N`` is the total number of finished (complete or pruned)
trials the study should hold; only the missing ones run. The study remembers the config, space and
metrics it was made for and refuses to continue with others. Output: ``<out>/trials.csv`` (every
trial), ``<out>/best.md`` (the best trial, or the Pareto front for several metrics) and, for several
metrics, ``<out>/pareto.png``. ``--seeds-of-best N`` then fits the best trial (or every Pareto-front
trial) over N seeds into ``<out>/seeds/trial<n>/seed<s>`` (finished seeds skipped) and saves
``<out>/seeds_of_best.md`` / ``.csv`` (mean ± std per setting).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlight.analysis import load_run
from kdlight.analysis.tidy import metric_columns
from kdlight.sweeps.seeds import (
    SeedsError,
    chosen_row,
    command_parser,
    data_takes_seed,
    fit_arguments,
    fit_seed,
    format_mean_std,
    is_complete,
    overrides_set,
    parse_with_overrides,
    read_seed,
    unknown_metric,
    value_near,
)
from kdlight.sweeps.space import (
    SearchError,
    check_keys,
    check_single_device,
    overrides,
    parse_space,
    resolved_config,
    suggest,
    wandb_overrides,
)

PROG = "python -m kdlight.sweeps.search"


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (kdlight overrides come after ``--``)."""
    parser = command_parser(PROG, "Search a kdlight config's hyper-parameters with Optuna (one or several metrics).")
    parser.add_argument(
        "--space", required=True, type=Path, help="YAML search space: dotted config key -> distribution"
    )
    parser.add_argument("--trials", type=int, required=True, help="total finished trials the study should hold")
    parser.add_argument(
        "--metric",
        action="append",
        default=None,
        help="NAME:max or NAME:min, repeatable (default val/acc:max); several = multi-objective",
    )
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<out>/study.db)")
    parser.add_argument("--study-name", default=None, help="study name (default: the first config's stem)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default runs/search/<config stem>)")
    parser.add_argument("--prune", action="store_true", help="prune bad trials (single objective only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    parser.add_argument(
        "--seeds-of-best",
        type=int,
        default=0,
        metavar="N",
        help="after the trials, fit the best trial (or every Pareto-front trial) over seeds 0 .. N-1",
    )
    return parser


def parse_metric(text: str) -> tuple[str, str]:
    """``"val/acc:max"`` -> ``("val/acc", "max")``."""
    name, _, direction = text.rpartition(":")
    if not name or direction not in ("max", "min"):
        raise SearchError(f"--metric {text!r} must be NAME:max or NAME:min, e.g. val/acc:max")
    return name, direction


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; bad input exits with one line and status 2."""
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    if args.trials < 1:
        parser.error(f"--trials must be at least 1, got {args.trials}")
    try:
        args.metrics = [parse_metric(m) for m in args.metric or ["val/acc:max"]]
    except SearchError as err:
        parser.error(str(err))
    if len({name for name, _ in args.metrics}) != len(args.metrics):
        parser.error("each --metric may be given once")
    if args.prune and len(args.metrics) > 1:
        parser.error("--prune works with a single --metric only (Optuna cannot prune multi-objective trials)")
    if overrides_set(args.extra, "--run_dir"):
        parser.error("--run_dir is set per trial by this command; give --out for the run directories instead")
    if args.seeds_of_best < 0:
        parser.error(f"--seeds-of-best must be at least 1 (or 0: none), got {args.seeds_of_best}")
    for option in ("--seed_everything", "--data.init_args.seed"):
        if args.seeds_of_best and overrides_set(args.extra, option):
            parser.error(f"{option} is set per seed by --seeds-of-best; leave it out of the overrides after --")
    for path in [*args.config, args.space]:
        if not path.is_file():
            parser.error(f"file {path} does not exist")
    stem = args.config[0].stem
    args.out = args.out or Path("runs") / "search" / stem
    args.study_name = args.study_name or stem
    args.storage = args.storage or f"sqlite:///{args.out / 'study.db'}"
    return args


# ------------------------------------------------------------------------------------ trials
def chance_name(metric: str) -> str | None:
    """``val/explain/<method>/<name>`` -> its chance twin ``val/explain/<method>/chance_<name>``."""
    parts = metric.split("/")
    if len(parts) >= 4 and parts[1] == "explain" and not parts[-1].startswith("chance_"):
        return "/".join([*parts[:-1], "chance_" + parts[-1]])
    return None


def read_trial(run_dir: Path, metrics: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The trial's metric values at the best epoch by the first metric, that epoch, and the chance
    twins of explanation metrics when the run logged them."""
    try:
        run = load_run(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise SearchError(f"{run_dir}: {err}") from None
    epochs = run.epochs
    logged = metric_columns(epochs)
    for name, _ in metrics:
        if name not in logged:
            raise unknown_metric(name, logged, run.name)
    first, mode = metrics[0]
    row = chosen_row(epochs, "best", first, mode)
    epoch = int(row["epoch"])
    values, notes = {}, []
    for name, _ in metrics:
        values[name], used = value_near(epochs, name, epoch)
        if used is not None and used != epoch:
            notes.append(f"{name} from epoch {used} (not logged at epoch {epoch})")
    chance = {}
    for name, _ in metrics:
        twin = chance_name(name)
        if twin in logged:
            chance[name] = value_near(epochs, twin, epoch)[0]
    return {"values": values, "epoch": epoch, "run": str(run.path), "chance": chance, "notes": notes}


def identity(args: argparse.Namespace, space: dict[str, Any]) -> dict[str, Any]:
    """What a study is made for: compared when a stored study is loaded again."""
    return {
        "config": [str(c.resolve()) for c in args.config],
        "space": json.loads(json.dumps(space)),
        "metrics": [f"{n}:{d}" for n, d in args.metrics],
    }


def load_study(args: argparse.Namespace, space: dict[str, Any]):
    """Create the study or load the stored one; refuse one made for another config, space or metrics
    (a stored study without a finished trial, e.g. after a misspelled metric, is made again)."""
    import optuna

    if args.storage.startswith("sqlite:///"):
        Path(args.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    directions = ["maximize" if d == "max" else "minimize" for _, d in args.metrics]
    study = optuna.create_study(
        storage=args.storage, study_name=args.study_name, directions=directions, load_if_exists=True
    )
    wanted, stored = identity(args, space), study.user_attrs
    if stored and stored != wanted and finished(study) == 0:  # e.g. a metric typo failed the first trial
        print(f"study {args.study_name!r} holds no finished trial: made again for this search", flush=True)
        optuna.delete_study(study_name=args.study_name, storage=args.storage)
        study = optuna.create_study(storage=args.storage, study_name=args.study_name, directions=directions)
        stored = {}
    if not stored:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
        return study
    for key, value in wanted.items():
        if stored.get(key) != value:
            raise SearchError(
                f"study {args.study_name!r} in {args.storage} was made for another {key} ({stored.get(key)}, "
                f"not {value}); give another --study-name or --storage"
            )
    return study


def finished(study) -> int:
    """Complete and pruned trials (failed or interrupted ones do not count and run again)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_trials(args: argparse.Namespace, space: dict[str, Any], config: dict[str, Any], study) -> None:
    """Run trials until the study holds ``args.trials`` finished ones."""
    import optuna

    def objective(trial) -> list[float]:
        params = {key: suggest(trial, key, spec) for key, spec in space.items()}
        run_dir = args.out / f"trial{trial.number}"
        arguments = ["fit", *[a for c in args.config for a in ("-c", str(c))], f"--run_dir={run_dir}"]
        arguments += overrides(params, config)
        arguments += [*wandb_overrides(config, args.study_name, trial.number), *args.extra]
        print(f"trial {trial.number}: kdlight {' '.join(arguments)}", flush=True)
        callbacks = []
        if args.prune:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=args.metrics[0][0]))
        try:
            fit_seed(arguments, run_dir, callbacks)
        except SystemExit:
            raise SearchError(f"trial {trial.number}: kdlight fit failed (its error above)") from None
        result = read_trial(run_dir, args.metrics)
        trial.set_user_attr("epoch", result["epoch"])
        trial.set_user_attr("run", result["run"])
        trial.set_user_attr("chance", result["chance"])
        trial.set_user_attr("notes", result["notes"])
        return [result["values"][name] for name, _ in args.metrics]

    missing = args.trials - finished(study)
    if missing <= 0:
        print(f"study {args.study_name!r} already holds {finished(study)} finished trial(s); none to run", flush=True)
        return
    print(f"study {args.study_name!r}: {finished(study)} finished trial(s), running {missing} more", flush=True)
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials))  # new draws on resume
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=missing)


# ------------------------------------------------------------------------------------ output
def trial_rows(study, space: dict[str, Any], metrics: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, metric values (NaN when none), epoch."""
    rows = []
    for trial in study.trials:
        values = trial.values or [math.nan] * len(metrics)
        row = {"number": trial.number, "state": trial.state.name}
        row.update({key: trial.params.get(key) for key in space})
        row.update({name: float(v) for (name, _), v in zip(metrics, values)})
        row["epoch"] = trial.user_attrs.get("epoch")
        rows.append(row)
    return rows


def cell(value: Any) -> str:
    """A table cell: floats with 4 significant digits (``n/a`` for NaN), None empty."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_rows(study, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (several), by trial number."""
    if not any(r["state"] == "COMPLETE" for r in rows):
        return []
    best = [study.best_trial] if len(study.directions) == 1 else study.best_trials
    numbers = sorted(t.number for t in best)
    return [r for r in rows if r["number"] in numbers]


def pareto_figure(rows, front, metrics, chance: dict[str, float], path: Path) -> None:
    """Metric 1 against metric 2: every complete trial grey, the Pareto front highlighted, the
    chance level of an explanation metric dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (x, dx), (y, dy) = metrics[0], metrics[1]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter([r[x] for r in done], [r[y] for r in done], color="0.7", label="trials")
    front = sorted(front, key=lambda r: r[x])
    ax.plot([r[x] for r in front], [r[y] for r in front], "o-", color="tab:red", label="Pareto front")
    for r in front:
        ax.annotate(str(r["number"]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if x in chance:
        ax.axvline(chance[x], color="k", linestyle="--", linewidth=1, label=f"chance ({x})")
    if y in chance:
        ax.axhline(chance[y], color="k", linestyle="--", linewidth=1, label=f"chance ({y})")
    ax.set_xlabel(f"{x} ({dx})")
    ax.set_ylabel(f"{y} ({dy})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_chance(study, metrics) -> dict[str, float]:
    """Per metric, the mean chance level over the trials that logged its twin."""
    found: dict[str, list[float]] = {}
    for trial in study.trials:
        for name, value in (trial.user_attrs.get("chance") or {}).items():
            if not math.isnan(value):
                found.setdefault(name, []).append(value)
    return {name: sum(v) / len(v) for name, v in found.items() if name in {n for n, _ in metrics}}


def report(args: argparse.Namespace, space: dict[str, Any], study) -> list[dict[str, Any]]:
    """Print and save trials.csv, best.md and (several metrics) pareto.png; return the rows."""
    metrics = args.metrics
    rows = trial_rows(study, space, metrics)
    columns = ["number", "state", *space, *[n for n, _ in metrics], "epoch"]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "trials.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    first, mode = metrics[0]
    header = (
        f"Study `{args.study_name}` of `{' '.join(f'-c {c}' for c in args.config)}`: {len(rows)} trial(s). "
        f"Metric values at each trial's best epoch by {first} ({mode})."
    )
    best = best_rows(study, rows)
    title = "Best trial" if len(metrics) == 1 else "Pareto front (non-dominated trials)"
    text = f"{header}\n\n## {title}\n\n" + (markdown(best, columns) if best else "no complete trial yet\n")
    notes = [f"- trial {t.number}: {n}" for t in study.trials for n in t.user_attrs.get("notes") or []]
    text += "\n" + "\n".join(notes) + "\n" if notes else ""
    saved = [args.out / "trials.csv", args.out / "best.md"]
    if len(metrics) > 1 and best:
        pareto_figure(rows, best, metrics, mean_chance(study, metrics), args.out / "pareto.png")
        saved.append(args.out / "pareto.png")
        if len(metrics) > 2:
            text += f"\npareto.png shows {metrics[0][0]} against {metrics[1][0]} only.\n"
    (args.out / "best.md").write_text(text)
    print(f"\n## Trials\n\n{markdown(rows, columns)}\n{text}\nsaved {', '.join(map(str, saved))}", flush=True)
    return rows


# ------------------------------------------------------------------------------------ seeds of the best
def seeds_of_best(
    args: argparse.Namespace, space: dict[str, Any], study, config: dict[str, Any]
) -> list[dict[str, Any]]:
    """Fit the best trial (or every Pareto-front trial) over seeds 0 .. ``args.seeds_of_best``-1 with
    the trial's parameters, as :mod:`kdlight.sweeps.seeds` does, into ``<out>/seeds/trial<n>/seed<s>``
    (completed seeds are skipped); save ``seeds_of_best.md`` and ``.csv``; return the per-seed rows.

    The data split changes with the seed too, except when the model distils a teacher checkpoint:
    that teacher was trained on one split, and another would put its training samples into val/test
    (kdlight refuses such a fit), so only ``--seed_everything`` changes then."""
    rows = trial_rows(study, space, args.metrics)
    best = best_rows(study, rows)
    if not best:
        print("--seeds-of-best: no complete trial to run over seeds", flush=True)
        return []
    first, mode = args.metrics[0]
    reading = argparse.Namespace(metrics=[n for n, _ in args.metrics], checkpoint="best", monitor=first, mode=mode)
    seeded_data = data_takes_seed(args.config) and not config.get("model.init_args.teacher_checkpoint")
    params = {t.number: t.params for t in study.trials}
    per_seed: list[dict[str, Any]] = []
    notes: list[str] = []
    for trial in best:
        number = trial["number"]
        trial_overrides = overrides(params[number], config)
        for seed in range(args.seeds_of_best):
            run_dir = args.out / "seeds" / f"trial{number}" / f"seed{seed}"
            if is_complete(run_dir):
                print(f"trial {number} seed {seed}: skipped, {run_dir} already holds a completed fit", flush=True)
            else:
                arguments = fit_arguments(args.config, seed, run_dir, [*trial_overrides, *args.extra], seeded_data)
                print(f"trial {number} seed {seed}: kdlight {' '.join(arguments)}", flush=True)
                try:
                    fit_seed(arguments, run_dir)
                except SystemExit:
                    raise SearchError(f"trial {number} seed {seed}: kdlight fit failed (its error above)") from None
            row, seed_notes = read_seed(seed, run_dir, reading)
            per_seed.append({"trial": number, **row})
            notes += [f"trial {number}: {note}" for note in seed_notes]
    metrics = reading.metrics
    configs = " ".join(f"-c {c}" for c in args.config)
    varied = "--seed_everything and --data.init_args.seed" if seeded_data else "--seed_everything"
    lines = [
        f"Seeds of the {'best trial' if len(args.metrics) == 1 else 'Pareto-front trials'} of study "
        f"`{args.study_name}` of `{configs}`: {args.seeds_of_best} seed(s) each ({varied} = seed), "
        f"mean ± std (ddof=1). Checkpoint: best by {first} ({mode}), in each seed's newest completed fit.",
        "",
        "| trial | " + " | ".join([*space, *metrics]) + " |",
        "|" + "---|" * (1 + len(space) + len(metrics)),
    ]
    for trial in best:
        mine = [r for r in per_seed if r["trial"] == trial["number"]]
        cells = [cell(trial[key]) for key in space]
        cells += [format_mean_std([r[m] for r in mine]) for m in metrics]
        lines.append(f"| {trial['number']} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    text = "\n".join(lines) + "\n"
    (args.out / "seeds_of_best.md").write_text(text)
    with (args.out / "seeds_of_best.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["trial", "seed", "version", "epoch", *metrics])
        writer.writeheader()
        writer.writerows(per_seed)
    saved = f"{args.out / 'seeds_of_best.md'} and {args.out / 'seeds_of_best.csv'}"
    print(f"\n{text}\nsaved {saved}", flush=True)
    return per_seed


# ------------------------------------------------------------------------------------ command
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the command; return the trials table rows."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        space = parse_space(args.space)
        config = resolved_config(args.config, args.extra)
        check_keys(space, config)
        check_single_device(config)
        study = load_study(args, space)
        run_trials(args, space, config, study)
        rows = report(args, space, study)
        if args.seeds_of_best:
            seeds_of_best(args, space, study, config)
    except SeedsError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return rows


if __name__ == "__main__":
    main()
