"""Section 6, second part: error of the top-k teacher cache against the full forward KL.

A byte-level :class:`~kdlight.models.CausalTransformer` teacher (d_model 64, depth 2) is trained
here for ``TEACHER_STEPS`` plain Adam steps on :class:`~kdlight.data.code_corpus.PythonSourceCorpus`
(8 stdlib files, chunks of 64 bytes, V = 259). Its top-k cache is built with
:func:`kdlight.training.lm_cache.open_topk_cache` over the first ``EVAL_ROWS`` training chunks for
k in ``KS`` and float16 / float32 storage (build time, bytes per token). On those chunks, for an
untrained student and one trained ``STUDENT_STEPS`` steps on the data (d_model 32, depth 1), it
compares ``topk_forward_kl`` (the cache's loss) with the full ``forward_kl`` (teacher logits):
relative error of the mean over counted positions, ``(topk - full) / full`` (<= 0: a lower bound),
and the cosine between the two gradients with respect to the student's logits (all positions).
"""

from __future__ import annotations

import tempfile
import time

import torch
import torch.nn.functional as F

from bench.common import Row, log

KS = (1, 8, 32, 64, 259)
STORAGES = ("float16", "float32")
TEACHER_STEPS, STUDENT_STEPS, EVAL_ROWS, LENGTH = 200, 60, 256, 64


def _train(model, inputs, labels, steps: int, seed: int, lr: float = 3e-3) -> float:
    """Plain Adam on next-token cross-entropy, random batches of 32; returns seconds."""
    gen, opt, start = (
        torch.Generator().manual_seed(seed),
        torch.optim.Adam(model.parameters(), lr=lr),
        time.perf_counter(),
    )
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(inputs), (32,), generator=gen)
        loss = F.cross_entropy(model(inputs[rows]).flatten(0, 1), labels[rows].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return time.perf_counter() - start


def _loss_and_grad(fn, student_logits):
    logits = student_logits.detach().clone().requires_grad_()
    value = fn(logits)
    value.backward()
    return float(value.detach()), logits.grad.flatten().double()


def run(cfg) -> dict:
    from kdlight.data.code_corpus import PythonSourceCorpus
    from kdlight.functional.lm import forward_kl
    from kdlight.functional.lm_topk import topk_forward_kl
    from kdlight.models.causal_lm import CausalTransformer
    from kdlight.training.lm_cache import open_topk_cache

    quick = getattr(cfg, "quick", False)
    teacher_steps, student_steps = (TEACHER_STEPS // 2, STUDENT_STEPS // 2) if quick else (TEACHER_STEPS, STUDENT_STEPS)
    data = PythonSourceCorpus(max_files=8, max_length=LENGTH, seed=0)
    data.setup("fit")
    inputs, labels = data.split_tensors("train")
    torch.manual_seed(0)
    teacher = CausalTransformer(data.vocab_size, d_model=64, depth=2, heads=4, max_length=LENGTH)
    teacher_seconds = _train(teacher, inputs, labels, teacher_steps, seed=0)
    torch.manual_seed(1)
    untrained = CausalTransformer(data.vocab_size, d_model=32, depth=1, heads=2, max_length=LENGTH).eval()
    torch.manual_seed(1)
    partly = CausalTransformer(data.vocab_size, d_model=32, depth=1, heads=2, max_length=LENGTH)
    _train(partly, inputs, labels, student_steps, seed=1)
    eval_ids, eval_labels = inputs[:EVAL_ROWS], labels[:EVAL_ROWS]
    tokens = int((eval_labels != -100).sum())
    with torch.no_grad():
        teacher_logits = teacher(eval_ids)
        students = {"untrained": untrained(eval_ids), "partly trained": partly(eval_ids)}
    full = {
        name: _loss_and_grad(lambda s: forward_kl(s, teacher_logits, labels=eval_labels), s)
        for name, s in students.items()
    }
    out = {
        "teacher_steps": teacher_steps,
        "teacher_seconds": teacher_seconds,
        "student_steps": student_steps,
        "tokens": tokens,
        "positions": eval_ids.numel(),
        "teacher_ce": float(F.cross_entropy(teacher_logits.flatten(0, 1), eval_labels.flatten(), ignore_index=-100)),
        "full": {name: value for name, (value, _) in full.items()},
        "cells": [],
    }
    with tempfile.TemporaryDirectory() as root:
        for storage in STORAGES:
            for k in KS:
                start = time.perf_counter()
                cache = open_topk_cache(
                    root, k, teacher, eval_ids, data.pad_id, data.data_record(), batch_size=64, storage=storage
                )
                build = time.perf_counter() - start
                logprobs, ids = cache.lookup(torch.arange(EVAL_ROWS))
                cell = {
                    "k": k,
                    "storage": storage,
                    "build_s": build,
                    "bytes_per_position": cache.disk_bytes / eval_ids.numel(),
                }
                for name, s in students.items():
                    value, grad = _loss_and_grad(
                        lambda z, lp=logprobs, top=ids: topk_forward_kl(z, lp, top, labels=eval_labels), s
                    )
                    ref_value, ref_grad = full[name]
                    cell[name] = {
                        "value": value,
                        "rel_error": (value - ref_value) / ref_value,
                        "grad_cos": float(F.cosine_similarity(grad, ref_grad, dim=0)),
                    }
                out["cells"].append(cell)
                log(
                    f"  top-k cache k={k} {storage}: build {build:.2f} s, {cell['bytes_per_position']:.0f} B/position, "
                    + ", ".join(f"{n}: err {cell[n]['rel_error']:+.2%} cos {cell[n]['grad_cos']:.4f}" for n in students)
                )
    return out


def rows(res: dict) -> list[Row]:
    found: list[Row] = [
        (
            "6",
            "top-k teacher cache: the teacher (byte CausalTransformer d64x2, plain Adam loop)",
            f"{res['teacher_steps']} steps in {res['teacher_seconds']:.1f} s, CE {res['teacher_ce']:.2f} nats",
            "",
            "",
            "under a minute: " + ("met" if res["teacher_seconds"] < 60 else "NOT met"),
        )
    ]
    full = res["full"]
    float32 = {cell["k"]: cell for cell in res["cells"] if cell["storage"] == "float32"}
    for cell in res["cells"]:
        value = "; ".join(
            f"{name}: {cell[name]['rel_error']:+.3%} (grad cos {cell[name]['grad_cos']:.5f})" for name in full
        )
        storage_effect = ""
        if cell["storage"] == "float16" and cell["k"] in float32:
            worst = max(abs(cell[n]["value"] - float32[cell["k"]][n]["value"]) / full[n] for n in full)
            storage_effect = f"float16 vs float32: {worst:.1e} of full"
        found.append(
            (
                "6",
                f"top-k teacher cache, k={cell['k']}, {cell['storage']}: fKL relative error (grad cosine)",
                value,
                "full fKL: " + ", ".join(f"{n} {v:.3f}" for n, v in full.items()),
                f"{cell['bytes_per_position']:.0f} B/position, build {cell['build_s']:.2f} s",
                storage_effect,
            )
        )
    return found


def notes() -> list[str]:
    return [
        f"Section 6, top-k cache: byte-level CausalTransformer teacher (d64, depth 2) trained {TEACHER_STEPS} plain Adam "
        f"steps (--quick: half), students d32 depth 1, untrained and trained {STUDENT_STEPS} steps; the first "
        f"{EVAL_ROWS} training chunks of PythonSourceCorpus (8 files, {LENGTH}-byte chunks, V=259); error = (top-k - "
        "full) / full of the mean forward KL over counted positions (a lower bound: <= 0), cosine of the gradients "
        "w.r.t. the student logits; bytes per cached position on disk (log-probabilities + int32 ids) and the build "
        "time (teacher run + write); 'float16 vs float32': the largest change of the loss from float16 storage."
    ]
