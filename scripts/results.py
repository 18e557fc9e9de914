"""Train every config of a dataset folder over N seeds and write mean ± std tables to RESULTS.md.

For each seed ``s`` (0 .. N-1) the teacher config runs first, then every student config, all
in-process through ``kdlight.cli.main(["fit", "-c", <config>, ...])`` with these overrides:
``--seed_everything=s --data.init_args.seed=s`` (weights *and* the train/val/test split change
with the seed), ``--run_dir=<runs-dir>/seed<s>/<config>`` (each fit a new ``version_<n>`` in it), students'
``--model.init_args.teacher_checkpoint`` set to that seed's teacher, progress bar and model
summary off. The ``ExplanationAgreement`` monitoring callback of the configs is dropped unless
``--explain-callback`` is given (it only logs validation curves; the table is computed here).

Each run's best checkpoint (highest ``val/acc``) is then evaluated on that seed's TEST split with
``kdlight.analysis.compare.compare_models`` against that seed's teacher: accuracy, macro-F1, top-1
agreement, KL(t‖s), Spearman rank correlation of |saliency| and cosine of integrated-gradients
maps (both for the teacher's predicted class). Untrained copies of the student architectures
(``kdlight.training.reinit.reinitialized``) give the chance level of the agreement measures.

    python scripts/results.py --dataset digits                    # 3 seeds, epochs of the configs
    python scripts/results.py --dataset mnist1d --seeds 3 --epochs 30
    python scripts/results.py --dataset digits --quick --output /tmp/r.md --runs-dir /tmp/runs

The markdown section of a dataset (between ``<!-- BEGIN results:<dataset> -->`` and
``<!-- END ... -->``) is replaced in ``--output`` (default RESULTS.md), or appended; everything
else in the file is left alone. Per-seed rows go to ``<runs-dir>/rows.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

# (config name, row label, student architecture for the chance row or None)
#: (config name, table label, chance-row architecture or None): the same set in every config folder
SHARED_RUNS = [
    ("teacher", "teacher (CNN)", None),
    ("scratch", "scratch (MLP)", "MLP"),
    ("scratch_cnn", "scratch (small CNN)", "small CNN"),
    ("kd", "KD (MLP)", None),
    ("dkd", "DKD (MLP)", None),
    ("hint", "FitNets hint + KD (small CNN)", None),
    ("at", "attention transfer + KD (small CNN)", None),
    ("kd_explain", "KD + explanation matching (MLP)", None),
]

DATASETS: dict[str, dict] = {
    "digits": {
        "title": "Digits (scikit-learn 8x8, 1797 images; 1168 / 270 / 359 train / val / test per seed)",
        "folder": "configs/digits",
        "seed_note": "Seed s sets the weights' initialisation, the data order and the stratified train/val/test split.",
        "runs": SHARED_RUNS,
    },
    "mnist1d": {
        "title": "MNIST-1D (Greydanus 2020; 4000 train / 1000 test, 10 % of train held out for validation)",
        "folder": "configs/mnist1d",
        "seed_note": (
            "Seed s sets the weights' initialisation, the data order and which 400 training samples are "
            "held out for validation; the 1000 test samples are the official ones for every seed."
        ),
        "runs": SHARED_RUNS,
    },
}

COLUMNS = [  # (key in the compare_models row, header, percent?)
    ("acc", "test acc", True),
    ("macro_f1", "macro-F1", True),
    ("agreement", "top-1 agreement", True),
    ("kl", "KL(t‖s)", False),
    ("saliency_rank_correlation", "saliency rank corr.", False),
    ("ig_cosine", "IG cosine", False),
]


# ------------------------------------------------------------------------------------ running
def run_overrides(
    config: Path,
    run_dir: Path,
    seed: int,
    *,
    teacher_checkpoint: Path | None = None,
    epochs: int | None = None,
    limit_batches: int | None = None,
    explain_callback: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``kdlight fit`` arguments that run ``config`` for one seed into ``run_dir``."""
    cfg = yaml.safe_load(config.read_text())
    trainer = cfg.get("trainer") or {}
    args = [
        "fit",
        "-c",
        str(config),
        f"--seed_everything={seed}",
        f"--data.init_args.seed={seed}",
        f"--run_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    callbacks = []
    for cb in trainer.get("callbacks") or []:
        name = cb.get("class_path", "")
        if name.endswith(("ExplanationAgreement", "ContextAttribution")) and not explain_callback:
            continue
        callbacks.append(cb)
    args.append(f"--trainer.callbacks={json.dumps(callbacks)}")
    takes_teacher = "teacher_checkpoint" in ((cfg.get("model") or {}).get("init_args") or {})
    if teacher_checkpoint is not None and takes_teacher:
        args.append(f"--model.init_args.teacher_checkpoint={teacher_checkpoint}")
    if epochs is not None:
        args.append(f"--trainer.max_epochs={epochs}")
    if limit_batches is not None:
        args += [f"--trainer.limit_train_batches={limit_batches}", f"--trainer.limit_val_batches={limit_batches}"]
    return args + list(extra)


def fit(config: Path, run_dir: Path, seed: int, **kwargs):
    """Run one config for one seed; return ``(trained network in eval mode, datamodule, best ckpt)``."""
    from kdlight.analysis.compare import load_network
    from kdlight.cli import main as kdlight

    run_dir.mkdir(parents=True, exist_ok=True)
    args = run_overrides(config, run_dir, seed, **kwargs)
    start = time.perf_counter()
    print(f"\n=== seed {seed}: kdlight {shlex.join(args[:3])} (+{len(args) - 3} overrides) -> {run_dir}", flush=True)
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it also sees this script's own argv
    try:
        cli = kdlight(args)
    finally:
        sys.argv = argv
    best = cli.trainer.checkpoint_callback.best_model_path
    if not best:
        raise RuntimeError(f"{config} (seed {seed}) saved no best checkpoint in {run_dir}")
    network = load_network(cli.model, best)
    print(f"--- {config.stem} seed {seed}: {best} ({time.perf_counter() - start:.0f} s)", flush=True)
    return network, cli.datamodule, Path(best)


def test_tensors(datamodule, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The TEST split of a datamodule as tensors (optionally its first ``limit`` samples)."""
    datamodule.setup("test")
    x, y = datamodule.split_tensors("test")
    return (x[:limit], y[:limit]) if limit else (x, y)


# ------------------------------------------------------------------------------------ tables
def mean_std(values: Sequence[float], percent: bool = False, digits: int | None = None) -> str:
    """``"m ± s"`` over seeds (sample std, ddof=1); just ``"m"`` for one value; ``"n/a"`` if none finite."""
    vals = [float(v) for v in values if v == v]  # drop NaN
    if not vals:
        return "n/a"
    scale = 100.0 if percent else 1.0
    digits = (1 if percent else 3) if digits is None else digits
    mean = scale * statistics.fmean(vals)
    text = f"{mean:.{digits}f}"
    if len(vals) > 1:
        text += f" ± {scale * statistics.stdev(vals):.{digits}f}"
    return text + (" %" if percent else "")


def aggregate(per_seed: dict[int, list[dict]]) -> list[tuple[str, dict[str, list[float]], int]]:
    """``[(model, {metric: [value per seed]}, params)]`` in first-seen order."""
    order: list[str] = []
    values: dict[str, dict[str, list[float]]] = {}
    params: dict[str, int] = {}
    for rows in per_seed.values():
        for row in rows:
            name = row["model"]
            if name not in values:
                order.append(name)
                values[name] = {}
            params[name] = int(row.get("params", 0))
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "params":
                    values[name].setdefault(key, []).append(float(value))
    return [(name, values[name], params[name]) for name in order]


def markdown_table(per_seed: dict[int, list[dict]], columns=COLUMNS) -> str:
    """One row per model, ``mean ± std`` over the seeds for every column."""
    head = "| model | params | " + " | ".join(h for _, h, _ in columns) + " |"
    lines = [head, "|" + "---|" * (2 + len(columns))]
    for name, vals, params in aggregate(per_seed):
        cells = [mean_std(vals.get(key, []), percent) for key, _, percent in columns]
        lines.append(f"| {name} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> str:
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {platform.machine()}"
    )


def command_line(script: str, argv: Sequence[str]) -> str:
    return shlex.join(["python", script, *argv])


def write_section(path: Path, key: str, body: str, header: str = "# Results\n") -> None:
    """Replace (or append) the ``key`` section of the markdown file ``path``."""
    begin, end = f"<!-- BEGIN results:{key} -->", f"<!-- END results:{key} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def configured_epochs(config: Path) -> int | None:
    return (yaml.safe_load(config.read_text()).get("trainer") or {}).get("max_epochs")


# ------------------------------------------------------------------------------------ main
def make_parser(description: str, datasets: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The options shared by results.py and shortcut_benchmark.py (``--dataset`` when ``datasets``)."""
    parser = argparse.ArgumentParser(description=description)
    if datasets is not None:
        parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(datasets)}")
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (0 .. N-1); default 3 (1 with --quick)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs of every config")
    parser.add_argument(
        "--configs", default=None, help="comma-separated subset of the configs to run (the teacher always runs)"
    )
    parser.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="limit_train_batches / limit_val_batches of every run (smoke runs)",
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test samples only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 1 epoch, 2 batches, 64 test samples (numbers are meaningless)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "RESULTS.md", help="markdown file to update")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where checkpoints and logs go")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a small shared machine more threads are slower)",
    )
    parser.add_argument(
        "--explain-callback",
        action="store_true",
        help="keep the configs' ExplanationAgreement callback (slower; only adds logged curves)",
    )
    return parser


def check_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    datasets: Sequence[str] | None,
    config_names: Sequence[str] | dict,
) -> argparse.Namespace:
    """Validate, apply ``--quick``, and turn ``--configs`` into a list of config names."""
    if datasets is not None and args.dataset not in datasets:
        parser.error(f"unknown dataset {args.dataset!r}; valid datasets are: {', '.join(datasets)}")
    if args.quick:
        args.seeds = args.seeds or 1
        args.epochs = args.epochs or 1
        args.limit_batches = args.limit_batches or 2
        args.eval_limit = args.eval_limit or 64
    args.seeds = 3 if args.seeds is None else args.seeds
    for name in ("seeds", "epochs", "limit_batches", "eval_limit", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    names = list(config_names[args.dataset] if isinstance(config_names, dict) else config_names)
    if args.configs is None:
        args.configs = names
    else:
        chosen = [c.strip() for c in args.configs.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in names]
        if unknown:
            parser.error(f"unknown config(s) {', '.join(unknown)}; valid configs are: {', '.join(names)}")
        args.configs = [n for n in names if n == "teacher" or n in chosen]
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = make_parser(__doc__.splitlines()[0], list(DATASETS))
    args = parser.parse_args(argv)
    return check_args(
        parser, args, list(DATASETS), {k: [name for name, _, _ in v["runs"]] for k, v in DATASETS.items()}
    )


def main(argv: Sequence[str] | None = None) -> str:
    """Run, evaluate, write the section; return the section's markdown."""
    from kdlight.analysis.compare import compare_models
    from kdlight.training.reinit import reinitialized

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    spec = DATASETS[args.dataset]
    torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or REPO / "runs" / "results" / args.dataset
    folder = REPO / spec["folder"]
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    per_seed: dict[int, list[dict]] = {}
    n_test = {}
    for seed in seeds:
        networks: dict[str, torch.nn.Module] = {}
        chance: dict[str, torch.nn.Module] = {}
        teacher_ckpt = None
        datamodule = None
        for name, label, arch in [r for r in spec["runs"] if r[0] in args.configs]:
            net, dm, best = fit(
                folder / f"{name}.yaml",
                runs_dir / f"seed{seed}" / name,
                seed,
                teacher_checkpoint=teacher_ckpt if name != "teacher" else None,
                epochs=args.epochs,
                limit_batches=args.limit_batches,
                explain_callback=args.explain_callback,
            )
            if name == "teacher":
                teacher_ckpt, datamodule = best, dm
            networks[label] = net
            if arch is not None:
                chance[f"untrained {arch} (chance)"] = reinitialized(net, seed=1000 + seed)
        networks.update(chance)
        x, y = test_tensors(datamodule, args.eval_limit)
        n_test[seed] = len(y)
        teacher_label = spec["runs"][0][1]
        rows = compare_models(
            networks,
            teacher=teacher_label,
            inputs=x,
            labels=y,
            train_inputs=datamodule.train_inputs(),
            modality=datamodule.modality,
        )
        per_seed[seed] = [{**r, "seed": seed, "n_test": len(y)} for r in rows]
    elapsed = time.perf_counter() - start
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "rows.json").write_text(json.dumps(per_seed, indent=1))

    section = render(args, argv, spec, per_seed, n_test, elapsed, folder)
    write_section(args.output, args.dataset, section)
    print("\n" + section + f"\n(written to {args.output})")
    return section


def render(args, argv, spec, per_seed, n_test, elapsed, folder) -> str:
    epochs = args.epochs if args.epochs is not None else configured_epochs(folder / "teacher.yaml")
    seeds = sorted(per_seed)
    lines = [
        f"## {spec['title']}",
        "",
        f"Command: `{command_line('scripts/results.py', argv)}`",
        "",
        f"Run: {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); max_epochs "
        f"{'= ' + str(args.epochs) + ' for every config (override)' if args.epochs else 'from each config (' + str(epochs) + ')'}"
        f"{f'; limit_train/val_batches = {args.limit_batches}' if args.limit_batches else ''}"
        f"{' (--quick smoke run: the numbers mean nothing)' if args.quick else ''}"
        f"{'; configs: ' + ', '.join(args.configs) if len(args.configs) < len(spec['runs']) else ''}; "
        f"best checkpoint by val/acc; evaluated on each seed's test split "
        f"({', '.join(str(n_test[s]) for s in seeds)} samples); wall time {elapsed / 60:.1f} min; {environment()}; "
        f"{datetime.date.today().isoformat()}.",
        "",
        markdown_table(per_seed),
        "",
        f"Mean ± sample std over seeds (a single value when there is one seed). {spec['seed_note']} Agreement columns "
        "compare each model with the teacher of the same seed, on the test images, for the teacher's "
        "predicted class; the untrained rows (freshly initialised copies of the student architectures) "
        "give the chance level of every column to read them against.",
    ]
    if args.dataset == "mnist1d":
        rows = {name: vals for name, vals, _ in aggregate(per_seed)}
        mlp = mean_std(rows.get("scratch (MLP)", {}).get("acc", []), True)
        cnn = mean_std(rows.get("teacher (CNN)", {}).get("acc", []), True)
        lines += [
            "",
            f"Paper comparison (Greydanus 2020, arXiv:2011.14439, same 4000/1000 split): MLP 68 %, CNN 94 %. "
            f"Here: scratch MLP {mlp}, CNN teacher {cnn}. Differences in protocol: the models train on "
            f"3600 samples (400 held out for checkpoint selection), with Adam lr 3e-3 for "
            f"{epochs} epochs, and the architectures are kdlight's `MLP` [100, 100] and `CNN1d`, not the "
            f"paper's exact code.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
