"""Shortcut benchmark: does matching a clean teacher's explanations keep a student off a spurious cue?

Data: ``kdlight.data.shortcut.ShortcutDigitsDataModule`` -- digits with one bright pixel in the
side columns whose position encodes the class in every training and validation image, and is
drawn at random (independent of the label) in the test images. Models (``configs/shortcut/``):

* ``teacher``    -- the digits CNN trained on CLEAN digits (no cue anywhere);
* ``scratch``    -- the MLP student trained with cross-entropy only on the shortcut data;
* ``kd``         -- the MLP student distilled from the clean teacher (Hinton KD, T=4, alpha=0.9);
* ``kd_explain`` -- KD plus explanation matching (saliency, weight 10).

Every config runs for each seed as in ``scripts/results.py`` (same overrides: seed, data seed,
per-seed run directory and teacher checkpoint, progress bar off); the best checkpoint by
``val/acc`` (validation images carry the cue, as a practitioner's would) is evaluated on the
seed's TEST split:

* accuracy with the cue at a random position (the headline "clean-test" accuracy: the cue is
  there but carries no information), with no cue at all, and with the cue at the true class;
* *follows cue*: among test images whose random cue names a wrong class, the fraction predicted
  as the cue's class (chance ~ 1/9 for a model that ignores the cue and errs at random, far less
  for an accurate one);
* top-1 agreement and saliency rank correlation with the teacher (``kdlight.analysis.compare.compare_models``);
* the fraction of attribution mass on the cue region (the 16 side-column pixels; a uniform map
  would put 25 % there): sum of |saliency| (resp. |integrated gradients|, zero baseline) over
  the region divided by the sum over the image, for each model's own predicted class, averaged
  over the test images. With a zero baseline IG is zero wherever a pixel is zero, so its cue mass
  is essentially the credit given to the one cue pixel.

    python scripts/shortcut_benchmark.py                 # 3 seeds, epochs of the configs (20)
    python scripts/shortcut_benchmark.py --seeds 1 --epochs 5
    python scripts/shortcut_benchmark.py --quick --output /tmp/r.md --runs-dir /tmp/runs

Writes the ``shortcut`` section of ``--output`` (default RESULTS.md) and ``<runs-dir>/rows.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as common  # noqa: E402  (scripts/results.py)

REPO = common.REPO
FOLDER = REPO / "configs" / "shortcut"
RUNS = [  # (config, row label)
    ("teacher", "teacher (CNN, trained on clean digits)"),
    ("scratch", "CE only (MLP)"),
    ("kd", "KD (MLP)"),
    ("kd_explain", "KD + explanation matching (MLP)"),
]
CHANCE = "untrained MLP (chance)"
COLUMNS = [
    ("acc", "test acc, random cue", True),
    ("acc_no_cue", "test acc, no cue", True),
    ("acc_cue_label", "test acc, cue = label", True),
    ("follows_cue", "follows cue", True),
    ("agreement", "top-1 agreement", True),
    ("saliency_rank_correlation", "saliency rank corr.", False),
    ("saliency_cue_mass", "saliency mass on cue region", True),
    ("ig_cue_mass", "IG mass on cue region", True),
]


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in x.split(512)]).argmax(-1)


def cue_mass(attributions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of ``|attributions|`` inside ``mask`` (broadcast over the batch)."""
    magnitude = attributions.abs().flatten(1)
    inside = (magnitude * mask.flatten().to(magnitude)).sum(1)
    return inside / magnitude.sum(1).clamp_min(1e-12)


def shortcut_metrics(networks: dict[str, torch.nn.Module], datamodule, seed: int, limit: int | None) -> dict[str, dict]:
    """Cue-specific numbers for every network on the seed's test split."""
    from kdlight.data.digits import DigitsDataModule
    from kdlight.explain.attribution import AttributionConfig, attribute

    x, y = common.test_tensors(datamodule, limit)
    cues = torch.from_numpy(datamodule.cue_classes["test"][: len(y)])
    plain = DigitsDataModule(
        seed=datamodule.seed, val_fraction=datamodule.val_fraction, test_fraction=datamodule.test_fraction
    )
    x_plain, y_plain = plain.split_tensors("test")
    x_plain, y_plain = x_plain[: len(y)], y_plain[: len(y)]
    assert torch.equal(y_plain, y), "the shortcut and plain digits test splits differ"
    x_label = datamodule.apply_cue(x_plain, y.numpy())
    mask = datamodule.cue_mask()
    wrong_cue = cues != y
    methods = {
        "saliency": AttributionConfig(method="saliency"),
        "ig": AttributionConfig(method="integrated_gradients", seed=seed),
    }
    out = {}
    for name, net in networks.items():
        pred = predict(net, x)
        row = {
            "acc_no_cue": (predict(net, x_plain) == y).float().mean().item(),
            "acc_cue_label": (predict(net, x_label) == y).float().mean().item(),
            "follows_cue": (pred[wrong_cue] == cues[wrong_cue]).float().mean().item(),
        }
        for key, config in methods.items():
            maps = attribute(net, x, pred, config, modality=datamodule.modality)
            row[f"{key}_cue_mass"] = cue_mass(maps, mask).mean().item()
        out[name] = row
    return out


def parse_args(argv: Sequence[str] | None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--cue-strength",
        type=float,
        default=None,
        help="override data.init_args.cue_strength of the students (default: the configs' 1.0)",
    )
    parser.add_argument("--cue-region", default=None, help="override data.init_args.cue_region (sides | border)")
    args = parser.parse_args(argv)
    if args.cue_strength is not None and not 0.0 <= args.cue_strength <= 1.0:
        parser.error(f"--cue-strength must be in [0, 1], got {args.cue_strength}")
    if args.cue_region is not None:
        from kdlight.data.shortcut import CUE_REGIONS

        if args.cue_region not in CUE_REGIONS:
            parser.error(f"unknown --cue-region {args.cue_region!r}; valid regions are: {', '.join(CUE_REGIONS)}")
    return common.check_args(parser, args, None, [name for name, _ in RUNS])


def main(argv: Sequence[str] | None = None) -> str:
    from kdlight.analysis.compare import compare_models
    from kdlight.training.reinit import reinitialized

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or REPO / "runs" / "results" / "shortcut"
    data_overrides = []
    if args.cue_strength is not None:
        data_overrides.append(f"--data.init_args.cue_strength={args.cue_strength}")
    if args.cue_region is not None:
        data_overrides.append(f"--data.init_args.cue_region={args.cue_region}")
    start = time.perf_counter()
    per_seed: dict[int, list[dict]] = {}
    for seed in range(args.seeds):
        networks: dict[str, torch.nn.Module] = {}
        teacher_ckpt, student_data = None, None
        for name, label in [r for r in RUNS if r[0] in args.configs]:
            is_teacher = name == "teacher"
            net, dm, best = common.fit(
                FOLDER / f"{name}.yaml",
                runs_dir / f"seed{seed}" / name,
                seed,
                teacher_checkpoint=None if is_teacher else teacher_ckpt,
                epochs=args.epochs,
                limit_batches=args.limit_batches,
                explain_callback=args.explain_callback,
                extra=[] if is_teacher else data_overrides,
            )
            networks[label] = net
            if is_teacher:
                teacher_ckpt = best
            elif student_data is None:
                student_data = dm
                networks[CHANCE] = reinitialized(net, seed=1000 + seed)
        if student_data is None:
            raise SystemExit("shortcut_benchmark.py: no student config selected (see --configs)")
        # keep the chance row last
        networks[CHANCE] = networks.pop(CHANCE)
        x, y = common.test_tensors(student_data, args.eval_limit)
        rows = compare_models(
            networks,
            teacher=RUNS[0][1],
            inputs=x,
            labels=y,
            train_inputs=student_data.train_inputs(),
            modality=student_data.modality,
        )
        extra = shortcut_metrics(networks, student_data, seed, args.eval_limit)
        per_seed[seed] = [{**r, **extra[r["model"]], "seed": seed, "n_test": len(y)} for r in rows]
        region = student_data.cue_region
        strength = student_data.cue_strength
        n_region = int(student_data.cue_mask().sum())
    elapsed = time.perf_counter() - start
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "rows.json").write_text(json.dumps(per_seed, indent=1))

    epochs = args.epochs if args.epochs is not None else common.configured_epochs(FOLDER / "teacher.yaml")
    seeds = sorted(per_seed)
    section = "\n".join(
        [
            "## Shortcut benchmark (digits with a class-coding cue pixel)",
            "",
            f"Command: `{common.command_line('scripts/shortcut_benchmark.py', argv)}`",
            "",
            f"Run: {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); max_epochs "
            f"{'= ' + str(args.epochs) + ' for every config (override)' if args.epochs else 'from each config (' + str(epochs) + ')'}"
            f"{f'; limit_train/val_batches = {args.limit_batches}' if args.limit_batches else ''}"
            f"{' (--quick smoke run: the numbers mean nothing)' if args.quick else ''}"
            f"{'; configs: ' + ', '.join(args.configs) if len(args.configs) < len(RUNS) else ''}; "
            f"cue region `{region}` ({n_region} of 64 pixels), cue_strength {strength} (train/val cue = label "
            f"with that probability), test cue at a random class position; best checkpoint by val/acc (cued "
            f"validation images); test split of {per_seed[seeds[0]][0]['n_test']} images per seed; wall time "
            f"{elapsed / 60:.1f} min; {common.environment()}.",
            "",
            common.markdown_table(per_seed, COLUMNS),
            "",
            "Mean ± sample std over seeds. *test acc, random cue*: the cue pixel is present but at a random "
            "class's position, so it carries no information (the benchmark's clean-test accuracy). *follows "
            "cue*: share of the test images whose cue names a wrong class that are predicted as that class. "
            "*top-1 agreement* / *saliency rank corr.*: with the clean teacher, on the random-cue test images, "
            "teacher's predicted class. *mass on cue region*: share of the summed |attribution| (model's own predicted class) "
            f"on the {n_region} cue-region pixels ({100 * n_region / 64:.0f} % of the image).",
        ]
    )
    common.write_section(args.output, "shortcut", section)
    print("\n" + section + f"\n(written to {args.output})")
    return section


if __name__ == "__main__":
    main()
