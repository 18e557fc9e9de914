"""Text distillation results: transformer teachers and students on ShortcutText and TrumpTweets, over N seeds.

Tasks and models (``configs/text_shortcut/``, ``configs/tweets/``): ``teacher``; a 1-layer
TransformerClassifier student trained with ``scratch`` (CE only), ``kd`` (Hinton KD), ``kd_hidden``
(KD + hidden-state and attention matching), ``kd_attribution`` (KD + AD-KD attribution
distillation) and, on ShortcutText, ``kd_explain`` (KD + 1 - cos of input x gradient token maps). Every config runs
for each seed exactly as in ``scripts/results.py`` (``common.fit``: seed, data seed, per-seed run
directory and teacher checkpoint, progress bar off, the ``ExplanationAgreement`` callback dropped
unless ``--explain-callback``). The best checkpoint by ``val/acc`` is evaluated on the seed's TEST
split (``--eval-limit``: a seeded random N of its sentences) of the students' data module:

* accuracy, macro-F1, top-1 agreement and KL(t‖s) with the teacher (``kdlight.analysis.compare.compare_models``);
* token attribution agreement with the teacher: per sentence over its real (unpadded) tokens,
  Spearman rank correlation of |integrated gradients| and top-3 agreement (``min(3, L)`` of ``L``
  tokens), IG on the embedding layer from the PAD sequence (``kdlight.explain.attribute``), for the
  teacher's predicted class; an untrained copy of the student gives the chance level;
* ShortcutText only: accuracy with the cue word of a random class (the test split as served), with
  no cue word, and with the cue word of the true class; *follows cue* (among sentences whose cue
  names a wrong class, the share predicted as that class); the share of |IG| (model's own predicted
  class) on the rationale words' tokens (``ground_truth_masks``) and on the cue word (``spurious_masks``).

    python scripts/text_results.py                                  # 3 seeds, both tasks, epochs of the configs
    python scripts/text_results.py --tasks text_shortcut --seeds 1
    python scripts/text_results.py --quick --output /tmp/r.md --runs-dir /tmp/runs

Writes the ``text`` section of ``--output`` (default RESULTS.md) and ``<runs-dir>/rows.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as common  # noqa: E402  (scripts/results.py)

REPO = common.REPO
TOP_K = 3
IG_STEPS = 32
RUNS = [  # (config, row label); the same configs in every task folder
    ("teacher", "teacher"),
    ("scratch", "CE only"),
    ("kd", "KD"),
    ("kd_hidden", "KD + hidden/attention matching"),
    ("kd_attribution", "KD + attribution distillation (AD-KD)"),
    ("kd_explain", "KD + explanation matching (IxG cos)"),
]
CHANCE = "untrained student (chance)"
TASKS: dict[str, dict] = {
    "text_shortcut": {
        "title": "ShortcutText (synthetic sentences: rationale words decide the label, a cue word names it in training)",
        "teacher": "teacher (2-layer transformer, cue uninformative)",
    },
    "tweets": {
        "title": "TrumpTweets (Android vs iPhone, 8,614 tweets, word tokenizer)",
        "teacher": "teacher (BERT 2x64, HFClassifier)",
    },
}
AGREEMENT_COLUMNS = [
    ("agreement", "top-1 agreement", True),
    ("kl", "KL(t‖s)", False),
    ("ig_rank_correlation", "IG rank corr.", False),
    ("ig_top3", "IG top-3 agreement", False),
]
COLUMNS = {
    "text_shortcut": [
        ("acc", "test acc, random cue", True),
        ("acc_no_cue", "no cue", True),
        ("acc_cue_label", "cue = label", True),
        ("follows_cue", "follows cue", True),
        *AGREEMENT_COLUMNS,
        ("ig_rationale_mass", "IG mass on rationale", True),
        ("ig_cue_mass", "IG mass on cue", True),
    ],
    "tweets": [("acc", "test acc", True), ("macro_f1", "macro-F1", True), *AGREEMENT_COLUMNS],
}


# ------------------------------------------------------------------------------------ measures
@torch.no_grad()
def predict(model: nn.Module, ids: Tensor) -> Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in ids.split(512)]).argmax(-1)


def ig_maps(model: nn.Module, ids: Tensor, target: Tensor, modality) -> Tensor:
    """Integrated-gradients token maps ``[N, T]`` (embedding layer, PAD reference; 0 at padding)."""
    from kdlight.explain import AttributionConfig, attribute

    return attribute(
        model, ids, target, AttributionConfig(method="integrated_gradients", n_steps=IG_STEPS), modality=modality
    )


def real_token_agreement(student: Tensor, teacher: Tensor, valid: Tensor, k: int = TOP_K) -> dict[str, float]:
    """Mean over sentences of the rank correlation and top-``min(k, L)`` agreement on each one's ``L`` real tokens."""
    from kdlight.explain.callback.tokens import real_token_groups
    from kdlight.functional.agreement import feature_agreement, rank_correlation

    rank, topk = [], []
    for rows, positions in real_token_groups(valid):
        s, t = student[rows].gather(1, positions), teacher[rows].gather(1, positions)
        rank.append(rank_correlation(s, t))
        topk.append(feature_agreement(s, t, min(k, positions.shape[1])))
    return {"ig_rank_correlation": torch.cat(rank).nanmean().item(), "ig_top3": torch.cat(topk).nanmean().item()}


def mass_on(maps: Tensor, mask: Tensor) -> Tensor:
    """Per-sentence share of ``|maps|`` on the ``mask`` tokens (maps are 0 at padding)."""
    magnitude = maps.abs()
    return (magnitude * mask.to(magnitude)).sum(1) / magnitude.sum(1).clamp_min(1e-12)


def test_subset(data, limit: int | None, seed: int) -> Tensor:
    """Row indices of the test split to evaluate: all, or a seeded random ``limit`` of them (in order),
    since a split's rows may be ordered (e.g. the tweets by date, so by device)."""
    n = data.split_sizes()["test"]
    if not limit or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def cue_variants(data, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ShortcutText test sentences ``index`` re-encoded without their cue word and with the true class's cue word."""
    served = data.split_texts("test")
    texts = [served[i] for i in index.tolist()]
    labels = data.split_tensors("test")[1][index].tolist()
    cues = data.cue_classes["test"][index.numpy()].tolist()
    no_cue, cue_label = [], []
    for text, label, cue in zip(texts, labels, cues, strict=True):
        words = text.split(" ")
        at = words.index(data.cue_word(cue))
        no_cue.append(" ".join(words[:at] + words[at + 1 :]))
        cue_label.append(" ".join(words[:at] + [data.cue_word(label)] + words[at + 1 :]))
    return data.encode(no_cue), data.encode(cue_label), torch.tensor(cues)


def evaluate(task: str, networks: dict[str, nn.Module], teacher: str, data, limit: int | None, seed: int) -> list[dict]:
    """One row per network on the seed's test split (see the module docstring)."""
    from kdlight.analysis.compare import compare_models

    data.setup("test")
    index = test_subset(data, limit, seed)
    x, y = (tensor[index] for tensor in data.split_tensors("test"))
    modality = data.modality
    rows = compare_models(networks, teacher=teacher, inputs=x, labels=y, modality=modality)
    valid = modality.valid(x)
    t_pred = predict(networks[teacher], x)
    t_maps = ig_maps(networks[teacher], x, t_pred, modality)
    if task == "text_shortcut":
        x_no_cue, x_cue_label, cues = cue_variants(data, index)
        rationale, spurious = data.ground_truth_masks("test", index), data.spurious_masks("test", index)
    for row in rows:
        net = networks[row["model"]]
        pred = predict(net, x)
        row.update(real_token_agreement(ig_maps(net, x, t_pred, modality), t_maps, valid))
        row.update(seed=seed, n_test=len(y))
        if task == "text_shortcut":
            own = ig_maps(net, x, pred, modality)
            wrong_cue = cues != y
            row.update(
                acc_no_cue=(predict(net, x_no_cue) == y).float().mean().item(),
                acc_cue_label=(predict(net, x_cue_label) == y).float().mean().item(),
                follows_cue=(pred[wrong_cue] == cues[wrong_cue]).float().mean().item(),
                ig_rationale_mass=mass_on(own, rationale).mean().item(),
                ig_cue_mass=mass_on(own, spurious).mean().item(),
            )
    if task == "text_shortcut":  # what a uniform map over the real tokens would put there
        lengths = valid.sum(1).float()
        rows[0]["uniform_rationale_mass"] = (rationale.sum(1) / lengths).mean().item()
        rows[0]["uniform_cue_mass"] = (spurious.sum(1) / lengths).mean().item()
    return rows


# ------------------------------------------------------------------------------------ running
def run_task(task: str, args, seed: int, runs_dir: Path) -> tuple[list[dict], dict]:
    """Fit the task's configs for one seed, evaluate them; return the rows and facts for the text."""
    from kdlight.training.reinit import reinitialized

    folder = REPO / "configs" / task
    teacher_label = TASKS[task]["teacher"]
    networks: dict[str, nn.Module] = {}
    teacher_ckpt, student_data = None, None
    for name, label in [r for r in RUNS if r[0] in args.configs and (folder / f"{r[0]}.yaml").is_file()]:
        is_teacher = name == "teacher"
        net, dm, best = common.fit(
            folder / f"{name}.yaml",
            runs_dir / task / f"seed{seed}" / name,
            seed,
            teacher_checkpoint=None if is_teacher else teacher_ckpt,
            epochs=args.epochs,
            limit_batches=args.limit_batches,
            explain_callback=args.explain_callback,
        )
        networks[teacher_label if is_teacher else label] = net
        if is_teacher:
            teacher_ckpt = best
        elif student_data is None:
            student_data = dm
            networks[CHANCE] = reinitialized(net, seed=1000 + seed)
    if student_data is None:
        raise SystemExit("text_results.py: no student config selected (see --configs)")
    networks[CHANCE] = networks.pop(CHANCE)  # the chance row last
    facts = {"sizes": student_data.split_sizes()}
    rows = evaluate(task, networks, teacher_label, student_data, args.eval_limit, seed)
    return rows, facts


def parse_args(argv: Sequence[str] | None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of: {', '.join(TASKS)}")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        parser.error(f"unknown task(s) {', '.join(unknown) or '(none)'}; valid tasks are: {', '.join(TASKS)}")
    return common.check_args(parser, args, None, [name for name, _ in RUNS])


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or REPO / "runs" / "results" / "text"
    start = time.perf_counter()
    per_task: dict[str, dict[int, list[dict]]] = {task: {} for task in args.tasks}
    facts: dict[str, dict] = {task: {} for task in args.tasks}
    times: dict[str, float] = {}
    for seed in range(args.seeds):
        for task in args.tasks:
            begin = time.perf_counter()
            per_task[task][seed], seed_facts = run_task(task, args, seed, runs_dir)
            facts[task]["sizes"] = seed_facts["sizes"]
            times[task] = times.get(task, 0.0) + time.perf_counter() - begin
    elapsed = time.perf_counter() - start
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "rows.json").write_text(json.dumps(per_task, indent=1))
    section = render(args, argv, per_task, facts, times, elapsed)
    common.write_section(args.output, "text", section)
    print("\n" + section + f"\n(written to {args.output})")
    return section


# ------------------------------------------------------------------------------------ text
def render(args, argv, per_task, facts, times, elapsed) -> str:
    epochs = {
        task: args.epochs or common.configured_epochs(REPO / "configs" / task / "teacher.yaml") for task in per_task
    }
    lines = [
        "## Text: distilling transformer classifiers",
        "",
        f"Command: `{common.command_line('scripts/text_results.py', argv)}`",
        "",
        f"Run: {args.seeds} seed(s); max_epochs {', '.join(f'{t} {e}' for t, e in epochs.items())}"
        f"{' (override)' if args.epochs else ' (from the configs)'}"
        f"{f'; limit_train/val_batches = {args.limit_batches}' if args.limit_batches else ''}"
        f"{' (--quick smoke run: the numbers mean nothing)' if args.quick else ''}; best checkpoint by val/acc; "
        f"wall time {elapsed / 60:.1f} min ({', '.join(f'{t} {s / 60:.1f}' for t, s in times.items())}); "
        f"{common.environment()}.",
    ]
    for task, per_seed in per_task.items():
        first = per_seed[min(per_seed)]
        sizes = facts[task]["sizes"]
        lines += [
            "",
            f"### {TASKS[task]['title']}",
            "",
            f"Splits per seed: {sizes['train']} / {sizes['val']} / {sizes['test']} train / val / test "
            f"(evaluated on {first[0]['n_test']} test sentences{', a seeded random subset' if first[0]['n_test'] < sizes['test'] else ''}).",
            "",
            common.markdown_table(per_seed, COLUMNS[task]),
        ]
        if task == "text_shortcut":
            uniform = [rows[0].get("uniform_rationale_mass", float("nan")) for rows in per_seed.values()]
            cue = [rows[0].get("uniform_cue_mass", float("nan")) for rows in per_seed.values()]
            lines += [
                "",
                "A map spread uniformly over the real tokens would put "
                f"{100 * statistics.fmean(uniform):.1f} % on the rationale and {100 * statistics.fmean(cue):.1f} % on "
                "the cue. *random cue*: the test sentences as served (cue word of a random class); *no cue* / *cue = "
                "label*: the same sentences with the cue word removed / replaced by the true class's. *follows cue*: "
                "share of the sentences whose cue names a wrong class predicted as that class.",
            ]
    lines += [
        "",
        "Mean ± sample std over seeds. Agreement columns compare each model with the teacher of the same seed on "
        f"the test sentences, for the teacher's predicted class; IG ({IG_STEPS} steps, embedding layer, PAD "
        f"reference) token maps are compared per sentence over its real tokens only (top-3: min(3, L) of L tokens). "
        "The untrained student row is the chance level of every agreement column. *IG mass*: share of a model's "
        "|IG| (own predicted class) on the rationale words' / the cue word's tokens.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
