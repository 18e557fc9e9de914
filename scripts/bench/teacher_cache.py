"""Section 5: epoch wall time of student-only training, uncached and cached distillation."""

from __future__ import annotations

from bench.common import Row, fmt_ratio, log, median
from bench.workloads import CIFAR_EVAL_SIZE, Workload, classifier_module, kd_module, seconds_per_epoch, timed_fit

_warmed = False  # whether the one-off untimed pre-pass has run in this process


def run(cfg, wl: Workload) -> dict[str, list[float]]:
    """Seconds per epoch (epochs 2..N) of student-only, uncached and cached distillation."""
    global _warmed
    fits = {
        "student": lambda e: timed_fit(cfg, wl, classifier_module(wl), e)[0],
        "uncached": lambda e: timed_fit(cfg, wl, kd_module(wl), e)[0],
        "cached": lambda e: timed_fit(cfg, wl, kd_module(wl, teacher_cache="memory"), e)[0],
        # a whole fit epoch: training plus a validation pass (the cache also keeps the teacher's
        # validation logits); "cached_val_off" reorders the validation batches every epoch, so no
        # kept batch matches and the teacher runs on each of them
        "student_val": lambda e: timed_fit(cfg, wl, classifier_module(wl), e, validate=True)[0],
        "cached_val": lambda e: timed_fit(cfg, wl, kd_module(wl, teacher_cache="memory"), e, validate=True)[0],
        "cached_val_off": lambda e: timed_fit(
            cfg, wl, kd_module(wl, teacher_cache="memory"), e, validate=True, reshuffled_validation=True
        )[0],
    }
    for fn in fits.values():  # one untimed 2-epoch pass of each (imports, caches, CUDA init)
        if cfg.device == "cuda" or not _warmed:
            fn(2)
    _warmed = True
    results: dict[str, list[float]] = {name: [] for name in fits}
    for r in range(wl.repeats):
        for name, fn in fits.items():
            results[name].append(seconds_per_epoch(fn(wl.epochs + 1)))
        log(
            f"  [{wl.name}] cache repeat {r + 1}/{wl.repeats}: "
            + ", ".join(f"{k}={v[-1] * 1000:.0f}ms/epoch" for k, v in results.items())
        )
    return results


def rows(wl_name: str, res: dict[str, list[float]]) -> list[Row]:
    med = {k: median(v) for k, v in res.items()}
    tag = f"[{wl_name}] "

    def value(key):
        return f"{med[key] * 1000:.0f} ms/epoch ({min(res[key]) * 1000:.0f}-{max(res[key]) * 1000:.0f})"

    c = med["cached"] / med["student"]
    return [
        (
            "5",
            tag + "student-only training (ClassifierModule, CE only; baseline)",
            value("student"),
            "itself",
            "1.00",
            "",
        ),
        (
            "5",
            tag + "kdlight distillation, no teacher cache",
            value("uncached"),
            f"student-only {med['student'] * 1000:.0f} ms",
            fmt_ratio(med["uncached"] / med["student"]),
            "",
        ),
        (
            "5",
            tag + 'kdlight distillation, teacher_cache="memory" (epochs after the filling one)',
            value("cached"),
            f"student-only {med['student'] * 1000:.0f} ms",
            fmt_ratio(c),
            f"<= 1.10: {'met' if c <= 1.10 else 'NOT met'}",
        ),
        (
            "5",
            tag + "cached vs uncached distillation",
            f"{med['cached'] * 1000:.0f} ms/epoch",
            f"uncached {med['uncached'] * 1000:.0f} ms",
            fmt_ratio(med["cached"] / med["uncached"]),
            "",
        ),
        (
            "5",
            tag + "with validation: student-only epoch, training + validation (baseline)",
            value("student_val"),
            "itself",
            "1.00",
            "",
        ),
        (
            "5",
            tag + 'with validation: teacher_cache="memory" epoch (teacher validation logits cached too)',
            value("cached_val"),
            f"student-only {med['student_val'] * 1000:.0f} ms",
            fmt_ratio(med["cached_val"] / med["student_val"]),
            "",
        ),
        (
            "5",
            tag + "with validation: the same, teacher run on every validation batch",
            value("cached_val_off"),
            f"student-only {med['student_val'] * 1000:.0f} ms",
            fmt_ratio(med["cached_val_off"] / med["student_val"]),
            "",
        ),
    ]


def notes(cfg) -> list[str]:
    per = "; ".join(
        f"{wl.name}: median of {wl.repeats} fits per variant, each {wl.epochs + 1} epochs, epochs "
        f"2..{wl.epochs + 1} timed"
        for wl in cfg.workloads.values()
    )
    return [
        f"Section 5: {per}. Fits interleaved (on cpu one untimed 2-epoch fit of each variant first, for the first "
        "workload only); Trainer settings of section 1; same student and batch; the cached module's first epoch "
        "fills the in-memory cache (batches carry sample indices), later epochs read the teacher logits from it. "
        "'with validation' rows: the same with a full validation pass every epoch (digits 270 samples, cifar "
        f"{CIFAR_EVAL_SIZE}), timed with the training of the epoch; 'teacher run on every validation batch' "
        "reorders the validation batches every epoch, so no batch the cache kept matches."
    ]
