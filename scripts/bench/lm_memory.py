"""Section 6: peak memory of token-level forward KL (forward + backward), chunked vs naive, at V = 32,000.

Three forms of the same loss on ``B * T = 2048`` positions (``[4, 512, 32000]`` float32 logits,
every position counted, temperature 1):

* ``naive``: ``F.kl_div(log_softmax(s), log_softmax(t), log_target=True)`` over the whole
  ``[B, T, V]`` tensor, summed over the vocabulary, averaged over counted positions (TRL's form);
* ``chunked``: ``kdlight.functional.forward_kl`` (a custom autograd.Function: the forward keeps
  per-token values, the backward recomputes each chunk of ``default_chunk_size(V)`` positions and
  writes into one gradient buffer);
* ``checkpoint``: the naive maths per chunk of the same size under ``torch.utils.checkpoint``.

On CUDA ``max_memory_allocated`` growth; on CPU the peak RSS growth (VmHWM after a reset, else
ru_maxrss) in a fresh process per setting. The logits (and the teacher's) exist before the
baseline is read: the figures are what the loss adds, the student-logit gradient included.
Second part (``bench/lm_topk_cache.py``): the error of the top-k teacher-output cache
(``kdlight.training.lm_cache``) against the full forward KL, its disk size and build time.
Run alone: ``python scripts/bench/lm_memory.py [--device cuda] [--threads N] [--part all|memory|topk]``.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import lm_topk_cache  # noqa: E402
from bench.common import Row, log  # noqa: E402
from bench.ig_memory import _reset_peak_rss, _status_kb  # noqa: E402

SHAPE = (4, 512, 32_000)  # B, T, V: B * T = 2048 positions
FORMS = ("naive", "chunked", "checkpoint")


def _naive(student, teacher, mask):
    import torch.nn.functional as F

    log_ps, log_pt = F.log_softmax(student.float(), -1), F.log_softmax(teacher.float(), -1)
    per_token = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return per_token[mask].mean()


def _checkpointed(student, teacher, mask):
    from torch.utils.checkpoint import checkpoint

    from kdlight.functional import default_chunk_size

    vocab = student.shape[-1]
    rows = mask.reshape(-1).nonzero().squeeze(1)
    flat_s, flat_t = student.reshape(-1, vocab), teacher.reshape(-1, vocab)
    chunk, total = default_chunk_size(vocab), 0.0

    def chunk_sum(s, t):
        return _naive(s[None], t[None], torch.ones(1, s.shape[0], dtype=torch.bool, device=s.device)) * s.shape[0]

    for i in range(0, rows.numel(), chunk):
        idx = rows[i : i + chunk]
        total = total + checkpoint(
            chunk_sum, flat_s.index_select(0, idx), flat_t.index_select(0, idx), use_reentrant=False
        )
    return total / rows.numel()


def _loss(form: str):
    from kdlight.functional import forward_kl

    return {"naive": _naive, "chunked": forward_kl, "checkpoint": _checkpointed}[form]


def measure(device: str, form: str) -> dict:
    """Forward + backward of one form on fresh random logits; returns peak memory growth, time and the loss."""
    loss_fn = _loss(form)
    torch.manual_seed(0)
    student = torch.randn(*SHAPE, device=device).mul_(2).requires_grad_()
    teacher = torch.randn(*SHAPE, device=device).mul_(2)
    mask = torch.ones(SHAPE[:2], dtype=torch.bool, device=device)
    small = student[:1, :8].detach().clone().requires_grad_()  # warm-up: kernels, allocator, imports
    loss_fn(small, teacher[:1, :8], mask[:1, :8]).backward()
    gc.collect()

    def run() -> float:
        value = loss_fn(student, teacher, mask)
        value.backward()
        return float(value)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        value = run()
        torch.cuda.synchronize()
        seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated"
    elif _reset_peak_rss():
        base_kb, start = _status_kb("VmRSS"), time.perf_counter()
        value = run()
        seconds, peak = time.perf_counter() - start, (_status_kb("VmHWM") - base_kb) * 1024
        how = "VmHWM after reset - VmRSS"
    else:
        base_kb, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
        value = run()
        seconds = time.perf_counter() - start
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) * 1024
        how = "ru_maxrss growth"
    return {"peak_bytes": int(peak), "seconds": seconds, "loss": value, "how": how}


def _in_subprocess(form: str, threads: int, malloc_mmap_threshold: int | None) -> dict:
    env = dict(os.environ)
    if malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    spec = json.dumps({"form": form, "threads": threads})
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", spec],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"LM memory child failed ({form}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg) -> dict:
    """Each form once (CPU: in a fresh process; CUDA: in this one), then the top-k cache's error
    (``bench/lm_topk_cache.py``; ``cfg.part``: ``"memory"`` or ``"topk"`` runs one part only)."""
    out: dict = {}
    part = getattr(cfg, "part", "all")
    if part in ("all", "topk"):
        out["topk_cache"] = lm_topk_cache.run(cfg)
    if part == "topk":
        return out
    for form in FORMS:
        if cfg.device == "cuda":
            out[form] = measure("cuda", form)
        else:
            out[form] = _in_subprocess(form, cfg.threads, getattr(cfg, "malloc_mmap_threshold", None))
        res = out[form]
        log(f"  LM forward KL {form}: peak {res['peak_bytes'] / 2**20:.0f} MiB, {res['seconds']:.2f} s")
    return out


def rows(cfg, res: dict) -> list[Row]:
    found: list[Row] = lm_topk_cache.rows(res["topk_cache"]) if "topk_cache" in res else []
    if "naive" not in res:
        return found
    naive = res["naive"]
    for form in ("chunked", "checkpoint"):
        r = res[form]
        ratio = r["peak_bytes"] / max(naive["peak_bytes"], 1)
        found.append(
            (
                "6",
                f"LM forward KL peak memory, {form} (fwd + bwd, [4, 512, 32000])",
                f"{r['peak_bytes'] / 2**20:.0f} MiB, {r['seconds']:.2f} s",
                f"naive: {naive['peak_bytes'] / 2**20:.0f} MiB, {naive['seconds']:.2f} s",
                f"{ratio:.2f} (time {r['seconds'] / naive['seconds']:.2f}x)",
                f"below naive: {'met' if ratio < 1 else 'NOT met'}" if form == "chunked" else "",
            )
        )
    return found


def notes(cfg) -> list[str]:
    from kdlight.functional import default_chunk_size

    how = "CUDA max_memory_allocated" if cfg.device == "cuda" else "peak RSS growth in a fresh subprocess per form"
    logits_mib = SHAPE[0] * SHAPE[1] * SHAPE[2] * 4 / 2**20
    return [
        f"Section 6: forward KL on {SHAPE[0] * SHAPE[1]} positions x V={SHAPE[2]} float32 (one [B, T, V] tensor = "
        f"{logits_mib:.0f} MiB, the student-logit gradient included in every figure), chunks of "
        f"{default_chunk_size(SHAPE[2])} positions; {how}, one run each.",
        *lm_topk_cache.notes(),
    ]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--malloc-mmap-threshold", type=int, default=None)
    p.add_argument(
        "--part",
        choices=["all", "memory", "topk"],
        default="all",
        help="memory: peak memory only; topk: cache error only",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.child:
        spec = json.loads(cfg.child)
        torch.set_num_threads(spec["threads"])
        print(json.dumps(measure("cpu", spec["form"])))
        return
    torch.set_num_threads(cfg.threads)
    res = run(cfg)
    print("| measurement | value | baseline | ratio | goal |")
    print("|---|---|---|---|---|")
    for row in lm_topk_cache.rows(res["topk_cache"]) if "topk_cache" in res else []:
        print("| " + " | ".join(row[1:]) + " |")
    if "naive" not in res:
        print("\n".join(lm_topk_cache.notes()))
        return
    print("\n| form | peak memory growth | seconds (fwd + bwd) | peak / naive | loss |")
    print("|---|---|---|---|---|")
    for form in FORMS:
        r = res[form]
        print(
            f"| {form} | {r['peak_bytes'] / 2**20:.0f} MiB | {r['seconds']:.2f} | "
            f"{r['peak_bytes'] / max(res['naive']['peak_bytes'], 1):.2f} | {r['loss']:.6f} |"
        )
    print("\n".join(notes(cfg)))


if __name__ == "__main__":
    main()
