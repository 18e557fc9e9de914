"""Language-model distillation results: a causal-LM teacher and students on the standard library's source, N seeds.

Runs ``configs/lm/``: ``teacher`` (4-layer CausalTransformer, d=128), then a 2-layer student (d=64)
trained with ``scratch`` (cross-entropy only), ``fkl`` / ``rkl`` (forward / reverse token KL),
``jsd`` (generalized JSD, beta 0.5), ``skew_kl`` (DistiLLM's skew KL, alpha 0.1), ``tvd`` (total
variation), ``seq_kd`` (cross-entropy on the teacher's sampled continuations), ``on_policy`` (GKD:
half the batches continued by the student, JSD(0.5) on them) and ``fkl_cached`` (forward KL from a
top-64 teacher cache). Every config runs for each seed as in ``scripts/results.py`` (``common.fit``:
seed, data seed = the split of files, a per-seed teacher). The best checkpoint by validation
perplexity is evaluated on the seed's TEST files:

* perplexity (exp of the mean next-token cross-entropy over real tokens), top-1 next-token agreement
  with the teacher and token KL(t‖s);
* context attribution agreement: for ``--probes`` test chunks and the positions ``POSITIONS``, the
  teacher's predicted next token is explained by integrated gradients on each model's embedding
  layer (``kdlight.explain.context_attributions``; PAD reference), and the teacher's and the model's
  maps over the context tokens ``0..t`` are compared: Spearman rank correlation of |IG| and top-5
  agreement. An untrained student gives the chance level.

    python scripts/lm_results.py                      # 3 seeds, every config
    python scripts/lm_results.py --configs fkl,rkl --seeds 1
    python scripts/lm_results.py --quick --output /tmp/r.md --runs-dir /tmp/runs

Writes the ``lm`` section of ``--output`` (default RESULTS.md) and ``<runs-dir>/rows.json``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as common  # noqa: E402  (scripts/results.py)

REPO = common.REPO
CONFIGS = REPO / "configs" / "lm"
POSITIONS = (31, 63, 126)  # predicting positions explained in each probe chunk (0-based)
TOP_K = 5
#: the predicting positions that generated batches train (a 32-token prompt, then 32 new tokens)
GENERATED_SPAN = range(31, 63)
IG_STEPS = 16
RUNS = [  # (config, row label)
    ("teacher", "teacher (4 layers, d=128)"),
    ("scratch", "scratch (CE only)"),
    ("fkl", "forward KL"),
    ("rkl", "reverse KL"),
    ("jsd", "JSD (beta 0.5)"),
    ("skew_kl", "skew KL (alpha 0.1)"),
    ("tvd", "TVD"),
    ("seq_kd", "sequence-level KD"),
    ("on_policy", "on-policy GKD (lmbda 0.5, JSD 0.5)"),
    ("fkl_cached", "forward KL, top-64 cache"),
]
TEACHER = RUNS[0][1]
CHANCE = "untrained student (chance)"
COLUMNS = [
    ("ppl", "test ppl", False),
    ("ppl_span", "ppl, positions 31-62", False),
    ("agreement", "top-1 agreement", True),
    ("kl", "KL(t‖s)", False),
    ("ctx_rank_correlation", "context IG rank corr.", False),
    ("ctx_top5", "context IG top-5", False),
]


# ------------------------------------------------------------------------------------ measures
@torch.no_grad()
def next_token_logits(model: nn.Module, ids: Tensor, batch_size: int = 64) -> Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in ids.split(batch_size)])


def token_scores(logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Perplexity, top-1 agreement and KL(t‖s) over the counted positions (labels != -100), and the
    perplexity over the positions ``GENERATED_SPAN`` only."""
    from kdlight.functional.lm import forward_kl

    counted = labels != -100
    ce = torch.nn.functional.cross_entropy(logits[counted].double(), labels[counted])
    span = counted.clone()
    span[:, : GENERATED_SPAN.start] = False
    span[:, GENERATED_SPAN.stop :] = False
    span_ce = torch.nn.functional.cross_entropy(logits[span].double(), labels[span])
    return {
        "ppl": math.exp(ce.item()),
        "ppl_span": math.exp(span_ce.item()),
        "agreement": (logits.argmax(-1) == teacher_logits.argmax(-1))[counted].float().mean().item(),
        "kl": forward_kl(logits, teacher_logits, labels=labels).item(),
    }


def probe_chunks(ids: Tensor, labels: Tensor, count: int, seed: int) -> Tensor:
    """Row indices of ``count`` test chunks (seeded, sorted) whose every explained position has a label."""
    eligible = (labels[:, list(POSITIONS)] != -100).all(1).nonzero().squeeze(1)
    chosen = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))[:count]
    return eligible[chosen].sort().values


def context_maps(model: nn.Module, ids: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """IG maps ``[P, N, T]`` of ``targets[p]`` at each position of ``POSITIONS`` (0 after the position)."""
    from kdlight.explain import context_attributions

    maps = []
    for p, position in enumerate(POSITIONS):
        at = torch.full((len(ids),), position, dtype=torch.long)
        maps.append(
            context_attributions(
                model, ids, at, targets[p], method="integrated_gradients", n_steps=IG_STEPS, reference_id=pad_id
            )
        )
    return torch.stack(maps)


def context_agreement(maps: Tensor, teacher_maps: Tensor) -> dict[str, float]:
    """Mean over probes and positions of Spearman's rho of |IG| and top-5 agreement over context ``0..t``."""
    from kdlight.functional.agreement import feature_agreement, rank_correlation

    rank, top = [], []
    for p, position in enumerate(POSITIONS):
        s, t = maps[p, :, : position + 1].abs(), teacher_maps[p, :, : position + 1].abs()
        rank.append(rank_correlation(s, t))
        top.append(feature_agreement(s, t, TOP_K))
    return {"ctx_rank_correlation": torch.cat(rank).nanmean().item(), "ctx_top5": torch.cat(top).nanmean().item()}


def evaluate(networks: dict[str, nn.Module], data, probes: int, seed: int) -> list[dict]:
    """One row per network on the seed's test files (see the module docstring)."""
    data.setup("test")
    ids, labels = data.split_tensors("test")
    teacher = networks[TEACHER]
    t_logits = next_token_logits(teacher, ids)
    probe = probe_chunks(ids, labels, probes, seed)
    targets = t_logits[probe][:, list(POSITIONS)].argmax(-1).T  # [P, N]: the teacher's predicted next tokens
    t_maps = context_maps(teacher, ids[probe], targets, data.pad_id)
    rows = []
    for name, net in networks.items():
        row = {"model": name, "params": sum(p.numel() for p in net.parameters()), "seed": seed}
        row.update(token_scores(next_token_logits(net, ids), t_logits, labels))
        row.update(context_agreement(context_maps(net, ids[probe], targets, data.pad_id), t_maps))
        row.update(n_test_tokens=int((labels != -100).sum()), n_probes=len(probe))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ running
def run_seed(args, seed: int, runs_dir: Path) -> tuple[list[dict], dict]:
    """Fit the chosen configs for one seed and evaluate them; return the rows and the facts for the text."""
    from kdlight.training.reinit import reinitialized

    networks: dict[str, nn.Module] = {}
    seconds: dict[str, float] = {}
    teacher_ckpt, data = None, None
    for name, label in [r for r in RUNS if r[0] in args.configs]:
        start = time.perf_counter()
        net, dm, best = common.fit(
            CONFIGS / f"{name}.yaml",
            runs_dir / f"seed{seed}" / name,
            seed,
            teacher_checkpoint=teacher_ckpt,
            epochs=args.epochs,
            limit_batches=args.limit_batches,
            explain_callback=args.explain_callback,
        )
        seconds[name] = time.perf_counter() - start
        networks[label] = net
        if name == "teacher":
            teacher_ckpt = best
        elif data is None:
            data = dm
            networks[CHANCE] = reinitialized(net, seed=1000 + seed)
    if data is None:
        raise SystemExit("lm_results.py: no student config selected (see --configs)")
    networks[CHANCE] = networks.pop(CHANCE)  # the chance row last
    rows = evaluate(networks, data, args.probes, seed)
    return rows, {
        "sizes": data.token_counts(),
        "files": {s: data.split_files(s) for s in ("train", "val", "test")},
        "seconds": seconds,
    }


def parse_args(argv: Sequence[str] | None):
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=32, help="test chunks whose predictions are explained")
    parser.add_argument("--jobs", type=int, default=1, help="seeds fitted in parallel, one process each")
    args = parser.parse_args(argv)
    for name in ("probes", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.probes = min(args.probes, 8)
    return common.check_args(parser, args, None, [name for name, _ in RUNS])


def main(argv: Sequence[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs_dir = args.runs_dir or REPO / "runs" / "results" / "lm"
    start = time.perf_counter()
    per_seed: dict[int, list[dict]] = {}
    facts: dict[int, dict] = {}
    if args.jobs == 1:
        for seed in range(args.seeds):
            per_seed[seed], facts[seed] = run_seed(args, seed, runs_dir)
    else:  # one process per seed: each is single-threaded, so seeds in parallel use the cores
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(args.threads,)
        ) as pool:
            futures = {seed: pool.submit(run_seed, args, seed, runs_dir) for seed in range(args.seeds)}
            for seed, future in futures.items():
                per_seed[seed], facts[seed] = future.result()
    elapsed = time.perf_counter() - start
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "rows.json").write_text(json.dumps({"rows": per_seed, "facts": facts}, indent=1))
    section = render(args, argv, per_seed, facts, elapsed)
    common.write_section(args.output, "lm", section)
    print("\n" + section + f"\n(written to {args.output})")
    return section


# ------------------------------------------------------------------------------------ text
def render(args, argv, per_seed, facts, elapsed) -> str:
    epochs = args.epochs or common.configured_epochs(CONFIGS / "fkl.yaml")
    first = facts[min(facts)]
    minutes = {
        name: sum(f["seconds"].get(name, 0.0) for f in facts.values()) / len(facts) / 60 for name in first["seconds"]
    }
    sizes = first["sizes"]
    rows0 = per_seed[min(per_seed)]
    return "\n".join(
        [
            "## Language models: token-level distillation of a causal LM",
            "",
            f"Command: `{common.command_line('scripts/lm_results.py', argv)}`",
            "",
            f"Run: {args.seeds} seed(s) (each seed its own split of files and its own teacher); student max_epochs "
            f"{epochs}{' (override)' if args.epochs else ' (from the configs)'}"
            f"{f'; limit_train/val_batches = {args.limit_batches}' if args.limit_batches else ''}"
            f"{' (--quick smoke run: the numbers mean nothing)' if args.quick else ''}; best checkpoint by validation "
            f"perplexity; wall time {elapsed / 60:.1f} min; {common.environment()}.",
            "",
            f"Data: the Python standard library's first 16 `.py` files, byte tokens (259 ids), chunks of 128; seed 0 "
            f"has {sizes['train']:,} / {sizes['val']:,} / {sizes['test']:,} train / val / test tokens; evaluated on "
            f"{rows0[0]['n_test_tokens']:,} test positions and {rows0[0]['n_probes']} probe chunks x {len(POSITIONS)} "
            f"positions ({', '.join(map(str, POSITIONS))}).",
            "",
            common.markdown_table(per_seed, COLUMNS),
            "",
            "Mean ± sample std over seeds. Agreement and KL compare each model with the teacher of the same seed. "
            f"Context IG: integrated gradients ({IG_STEPS} steps, embedding layer, PAD reference) of the teacher's "
            "predicted next token, compared over the context tokens 0..t (rank correlation of |IG|, top-5 agreement); "
            "the untrained student is the chance level. *ppl, positions 31-62*: perplexity of the predictions "
            "of tokens 32-63 only, the span that `seq_kd` and `on_policy` batches train (a 32-token prompt and 32 "
            "generated tokens: 32 counted positions per sequence where the other objectives count 127). "
            "Minutes per fit (mean over seeds): " + ", ".join(f"{name} {m:.1f}" for name, m in minutes.items()) + ".",
        ]
    )


if __name__ == "__main__":
    main()
