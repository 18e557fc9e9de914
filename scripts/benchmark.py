"""Benchmark kdlight against baselines measured in the same run; print one table of ratios.

Sections (every figure is a ratio against a baseline timed or measured in this same run; each
section is a module of ``scripts/bench/``):

1. ``fit`` throughput (training samples/s over N epochs after one warm-up epoch) of
   ``kdlight.DistillationModule`` against a hand-written PyTorch loop over the training tensors in
   memory (one ``randperm`` per epoch, batches by indexing; the same loop over the data module's
   DataLoader is a row of its own) doing the same work: same frozen teacher (eval, no grad),
   student and batch size,
   ``0.1 * CE + 0.9 * kd_loss(T=4)``, Adam(lr=3e-3). Two workloads (``--workload``):
   ``digits`` (sklearn 8x8 digits from ``DigitsDataModule``, 1167 training images, CNN2d
   [32, 64] hidden 128 teacher, MLP student, batch 64) and ``cifar`` (CIFAR-shaped synthetic
   data: ``--cifar-train-size`` random 3x32x32 images with 100 classes from an ``ArrayDataModule``
   made here, resnet20 teacher, resnet8 student = ``CifarResNet(8, [16, 16, 32, 64])``, batch
   64; about 2 s per 512-sample epoch on one core, the teacher ~45 % of a step; a resnet8x4
   teacher would take ~3.5 s per epoch). Extra rows take the work apart: a bare LightningModule
   with the same maths (Lightning's own cost), kdlight with ``check_finite=False``, kdlight with
   its public ``record_training`` replaced by a no-op (a subclass made here; kdlight's own
   training-log cost), and kdlight with a ``CSVLogger`` at ``log_every_n_steps`` 50 and 10 (what
   logging to files costs); the cifar workload (compute-bound steps) and ``--quick`` skip the
   ``check_finite`` and CSV(50) rows (``--all-variants`` runs them).
2. Share of ``fit`` wall time taken by ``ExplanationAgreement`` at the settings shipped in
   ``configs/digits/kd.yaml`` (the file is parsed and built by kdlight's own CLI,
   ``KDLightCLI(run=False)``), the same with ``log_images=False``, at ``every_n_epochs=1``
   (against its own shorter baseline) and with a warm ``explanation_cache_dir`` (a later student
   of the teacher); plus where the callback's time goes, read through the trainer's profiler: its
   public ``run``, its ``on_fit_end`` hook (per-class tables and figures, once per fit) and the
   ``kdlight.*`` actions kdlight reports to ``trainer.profiler``. Then the same for a text fit
   (``--text-config``, default ``configs/text_shortcut/kd.yaml``): shipped, ``log_images=False``
   and a warm ``explanation_cache_dir``; its parts include the token PNG and HTML.
3. Peak memory of integrated gradients (``kdlight.explain.attribute``) as ``n_steps`` grows, with
   ``internal_batch_size=64`` and with ``None`` (all steps in one forward): CUDA
   ``max_memory_allocated``; on CPU the peak RSS growth (VmHWM after reset, or ru_maxrss) in a
   fresh subprocess per setting.
4. ``--device cuda`` only (rides with section 1): bf16-mixed vs 32-true throughput of the same
   kdlight fit, and bf16 autocast vs fp32 for the plain loop.
5. Teacher cache: epoch wall time (epochs 2..N; the first epoch fills the cache) of
   student-only training (``kdlight.ClassifierModule``, CE only), kdlight distillation without
   a cache, and with ``teacher_cache="memory"``, for each selected workload, with the Trainer
   settings of section 1.

6. Peak memory of token-level forward KL (``kdlight.functional.forward_kl``, chunked) against
   the naive form and ``torch.utils.checkpoint`` per chunk, 2048 positions x V = 32,000, forward
   + backward; a fresh subprocess per form on CPU (``bench/lm_memory.py``; only when asked).
7. Compression: CPU latency at batch 1 and 64, size on disk and parameters of a dense MLP
   student, the same 90 % sparse, int8 dynamic and int8 weight-only (``bench/compression.py``;
   only when asked).

Run ``python scripts/benchmark.py`` (sections 1,2,3,5 with ``--workload both``; about 10
minutes on 2 CPU cores, longer when they are busy), ``--quick`` (about 1-1.5 minutes),
``--sections 1 --workload cifar`` for one section and workload, ``--out table.md`` to also write
the table to a file. Results and their reading: BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the bench package beside this file

from bench.main import main  # noqa: E402

if __name__ == "__main__":
    main(description=__doc__.splitlines()[0])
