"""Section 2: the share of ``fit`` wall time that ``ExplanationAgreement`` takes.

Two workloads, each a shipped config built by kdlight's own CLI parser (``KDLightCLI(run=False)``
on the file's content, with this section's overrides; :mod:`bench.config_fits`):

- ``digits``: ``configs/digits/kd.yaml`` at its shipped callback settings, with ``log_images=False``,
  with ``every_n_epochs=1`` (against its own shorter baseline) and with a warm
  ``explanation_cache_dir`` (a later student of the teacher);
- ``text``: ``--text-config`` (default ``configs/text_shortcut/kd.yaml``: transformer teacher and
  student on the synthetic shortcut text, token attributions) at its shipped settings, with
  ``log_images=False`` and with a warm ``explanation_cache_dir``; skipped with a note when the file does not exist, or with
  ``--text-config none``.

Where the callback's time goes is read from Lightning's profiler interface, not from kdlight's
private methods (:class:`bench.config_fits.PartTimer`).
"""

from __future__ import annotations

import contextlib
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bench.common import REPO, Row, fmt_ratio, lightning_log_path, log, median, spread
from bench.config_fits import (
    ACTION_PREFIX,
    ARTIFACTS,
    FIGURE_HTML,
    FIGURE_PNG,
    RUN,
    ShippedConfig,
    config_fit,
)

KD_YAML = REPO / "configs" / "digits" / "kd.yaml"
#: default of ``--text-config``
TEXT_YAML = REPO / "configs" / "text_shortcut" / "kd.yaml"
#: the callback's argument naming the on-disk cache of the teacher's explanations
CACHE_ARG = "explanation_cache_dir"
ACTION_LABELS = {
    "kdlight.explain.attribution": "attribution maps (the student's, every run)",
    "kdlight.explain.teacher_side": "the teacher's maps and faithfulness (first run of a fit, unless cached on disk)",
    "kdlight.explain.chance_level": "chance level (re-init student, once per fit per method)",
    "kdlight.explain.faithfulness": "faithfulness (deletion/insertion AUC, infidelity)",
    "kdlight.explain.metrics.localisation": "localisation (attribution mass and top-k on the known relevant features)",
    "kdlight.explain.surrogate": "decision-tree surrogate",
}
#: settings with this suffix run with Lightning's own self.log path (no kdlight fast_log)
LIGHTNING_LOG = "_lightning_log"
#: the fits of the text workload are ~10x longer than digits': fewer repeats
TEXT_REPEATS, TEXT_REPEATS_QUICK = 3, 2


def text_config_path(cfg) -> Path | None:
    """The text workload's config (``cfg.text_config``; default :data:`TEXT_YAML`), ``None`` when
    switched off (``none``)."""
    value = getattr(cfg, "text_config", None)
    if value is None:
        return TEXT_YAML
    if str(value).lower() == "none":
        return None
    path = Path(value)
    return path if path.is_absolute() else Path.cwd() / path


def measure(cfg, ship: ShippedConfig, settings: dict[str, tuple[dict | None, int]], repeats: int, warmup: dict) -> dict:
    """Fit every setting ``repeats`` times, interleaved, after one untimed warm-up fit of one epoch."""
    walls: dict[str, list[float]] = {k: [] for k in settings}
    parts: dict[str, list[dict]] = {k: [] for k in settings}
    config_fit(cfg, ship, warmup, 1)  # untimed warm-up: imports, first figure, caches
    for r in range(repeats):
        for name, (explain_args, n_epochs) in settings.items():
            with lightning_log_path() if name.endswith(LIGHTNING_LOG) else contextlib.nullcontext():
                wall, p = config_fit(cfg, ship, explain_args, n_epochs)
            walls[name].append(wall)
            if p is not None:
                parts[name].append(p)
        log(
            f"  callback [{ship.path.parent.name}] repeat {r + 1}/{repeats}: "
            + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in walls.items())
        )
    return {"walls": walls, "parts": parts, "settings": settings, "ship": ship, "repeats": repeats}


def run_digits(cfg) -> dict:
    ship = ShippedConfig.load(KD_YAML)
    args = ship.explain_args
    epochs = ship.max_epochs
    if cfg.quick:  # enough epochs for one callback run (kd.yaml: 10 of 20)
        epochs = min(epochs, max(int(args.get("every_n_epochs", 1)), 5))
    with tempfile.TemporaryDirectory(prefix="kdlight_bench_explain_") as warm_dir:
        # every_n_epochs=1 is paired with its own baseline over fewer epochs, to keep the run short
        settings = {
            "without": (None, epochs),
            "without" + LIGHTNING_LOG: (None, epochs),
            "shipped": (args, epochs),
            "noimages": ({**args, "log_images": False}, epochs),
            "without_short": (None, cfg.every1_epochs),
            "every1": ({**args, "every_n_epochs": 1}, cfg.every1_epochs),
        }
        warmup = {**args, "every_n_epochs": 1}
        if CACHE_ARG in args:
            # "auto" caches beside the teacher checkpoint; the benchmark's teacher has none, so the shipped
            # rows are a first run with this teacher. This row is a later student of the same teacher:
            # the teacher's maps and faithfulness come from a directory the warm-up fit filled.
            settings["shipped_warm"] = ({**args, CACHE_ARG: warm_dir}, epochs)
            warmup[CACHE_ARG] = warm_dir
        return {**measure(cfg, ship, settings, cfg.repeats_config, warmup), "epochs": epochs}


def run_text(cfg, path: Path) -> dict:
    """The text workload at its shipped settings, with ``log_images=False`` and with a warm
    ``explanation_cache_dir`` (a later student of the same teacher, whether or not the file sets the
    option); all its epochs, also with ``--quick`` (a text config explains every few epochs)."""
    ship = ShippedConfig.load(path)
    args, epochs = ship.explain_args, ship.max_epochs
    repeats = TEXT_REPEATS_QUICK if cfg.quick else TEXT_REPEATS
    with tempfile.TemporaryDirectory(prefix="kdlight_bench_explain_text_") as warm_dir:
        settings = {
            "without": (None, epochs),
            "shipped": (args, epochs),
            "noimages": ({**args, "log_images": False}, epochs),
            "shipped_warm": ({**args, CACHE_ARG: warm_dir}, epochs),
        }
        warmup = {**args, "every_n_epochs": 1, CACHE_ARG: warm_dir}  # fills the cache of the warm row
        return {**measure(cfg, ship, settings, repeats, warmup), "epochs": epochs}


def run(cfg) -> dict:
    found: dict[str, Any] = {"digits": run_digits(cfg)}
    path = text_config_path(cfg)
    if path is None:
        found["text_skipped"] = "text workload off (--text-config none)"
    elif not path.is_file():
        found["text_skipped"] = f"text workload skipped: {_shown(path)} does not exist (--text-config PATH)"
    else:
        try:  # a failing text config is a row of the table; the digits rows stay
            found["text"] = run_text(cfg, path)
        except Exception as exc:
            traceback.print_exc()
            found["text_skipped"] = f"text workload failed ({_shown(path)}): {type(exc).__name__}: {str(exc)[:200]}"
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _part_total(fits: list[dict], part: str) -> float:
    return sum(f["totals"].get(part, 0.0) for f in fits)


def rows(cb: dict) -> list[Row]:
    found = workload_rows(cb["digits"], prefix="")
    if cb.get("text"):
        found += workload_rows(cb["text"], prefix="[text] ")
    elif cb.get("text_skipped"):
        found.append(("2", f"[text] {cb['text_skipped']}", "", "", "", ""))
    return found


def workload_rows(cb: dict, prefix: str) -> list[Row]:
    """One workload's rows: the baseline(s), each setting's share, and where the shipped callback's time goes."""
    found: list[Row] = []
    ship: ShippedConfig = cb["ship"]
    walls = {k: min(v) for k, v in cb["walls"].items()}
    args_text = ", ".join(f"{k}={v}" for k, v in ship.explain_args.items())
    shown: set[str] = set()
    goal_label = "<= 10 %" if not prefix else "<= 10 % (the digits goal)"
    for key, base_key, label, goal in (
        ("shipped", "without", f"shipped ({args_text})", 0.10),
        ("noimages", "without", "shipped but log_images=False", None),
        ("shipped_warm", "without", f"shipped but {CACHE_ARG} warm (later student of the same teacher)", None),
        ("every1", "without_short", "shipped but every_n_epochs=1", None),
    ):
        if key not in walls:
            continue
        epochs = cb["settings"][key][1]
        w0 = walls[base_key]
        if base_key not in shown:
            shown.add(base_key)
            base = f"{ship.path.name} trainer, no callback (baseline)"
            found.append(
                (
                    "2",
                    f"{prefix}fit {epochs} epochs, {base}",
                    f"{w0:.2f} s ({spread(cb['walls'][base_key])})",
                    "itself",
                    "",
                    "",
                )
            )
        share = (walls[key] - w0) / walls[key]
        paired = median([(w - b) / w for w, b in zip(cb["walls"][key], cb["walls"][base_key])])
        calls = cb["parts"][key][0]["counts"].get(RUN, 0) if cb["parts"][key] else 0
        verdict = "" if goal is None else f"{goal_label}: {'met' if max(share, paired) <= goal else 'NOT met'}"
        found.append(
            (
                "2",
                f"{prefix}fit {epochs} epochs + ExplanationAgreement {label}: callback share = (with - without)/with, "
                "of the fastest fits; in brackets the median over repeats of each repeat's share",
                f"{walls[key]:.2f} s ({spread(cb['walls'][key])}), {calls} callback run(s)",
                f"without {w0:.2f} s",
                f"{100 * share:.1f} % ({100 * paired:.1f} %)",
                verdict,
            )
        )
    slow = "without" + LIGHTNING_LOG
    if slow in walls:
        paired = median([s / f for s, f in zip(cb["walls"][slow], cb["walls"]["without"])])
        found.append(
            (
                "2",
                f"{prefix}fit {cb['settings'][slow][1]} epochs, {ship.path.name} trainer, no callback, with Lightning's "
                "own self.log path (KDLIGHT_FAST_LOG=0): kdlight's fast_log gain = this / baseline wall; in brackets "
                "the median of paired ratios",
                f"{walls[slow]:.2f} s ({spread(cb['walls'][slow])})",
                f"without {walls['without']:.2f} s",
                f"{walls[slow] / walls['without']:.2f} ({paired:.2f})",
                "",
            )
        )
    fits = cb["parts"].get("shipped") or []
    if fits:
        found += _part_rows(fits, walls["shipped"] - walls["without"], prefix)
    return found


def _part_rows(fits: list[dict], delta: float, prefix: str = "") -> list[Row]:
    """Where the callback's time goes at the shipped settings (mean over the fits)."""
    n = len(fits)
    calls = sum(f["counts"].get(RUN, 0) for f in fits)
    run_time, artifacts = _part_total(fits, RUN), _part_total(fits, ARTIFACTS)
    total = run_time + artifacts

    def part(label: str, value: str, t: float) -> Row:
        return (
            "2",
            f"{prefix}  part: {label}",
            value,
            "callback time per fit",
            f"{100 * t / max(total, 1e-12):.0f} %",
            "",
        )

    found: list[Row] = [
        (
            "2",
            f"{prefix}shipped settings: profiled callback time per fit (runs + end-of-fit artifacts, mean of fits); "
            "ratio = profiled / wall difference",
            f"{total / n * 1000:.0f} ms ({calls / n:.0f} runs x {run_time / max(calls, 1) * 1000:.0f} ms "
            f"+ artifacts {artifacts / n * 1000:.0f} ms)",
            f"wall with - without {delta * 1000:.0f} ms",
            fmt_ratio(total / n / delta) if delta > 0 else "n/a",
            "",
        )
    ]
    reported = sorted(
        {p for f in fits for p in f["totals"] if p.startswith(ACTION_PREFIX)},
        key=lambda p: (list(ACTION_LABELS).index(p) if p in ACTION_LABELS else len(ACTION_LABELS), p),
    )
    accounted = 0.0
    for action in reported:
        t = _part_total(fits, action)
        accounted += t
        found.append(part(ACTION_LABELS.get(action, action), f"{t / max(calls, 1) * 1000:.0f} ms/run", t))
    rest = run_time - accounted
    label = (
        "rest of run (probe batch, predictions, metrics, logging)" if reported else "whole run (no profiler actions)"
    )
    found.append(part(label, f"{rest / max(calls, 1) * 1000:.0f} ms/run", rest))
    figures = {FIGURE_PNG: "heatmap PNG (draw + log)", FIGURE_HTML: "token HTML page (render + log)"}
    drawn = {key: _part_total(fits, key) for key in figures if any(key in f["totals"] for f in fits)}
    kinds = " + ".join(["per-class CSV"] + [figures[key].split(" (")[0] for key in drawn])
    found.append(
        part(f"artifacts ({kinds} per method, in on_fit_end)", f"{artifacts / n * 1000:.0f} ms/fit", artifacts)
    )
    for key, t in drawn.items():
        found.append(part(f"  of which {figures[key]}", f"{t / n * 1000:.0f} ms/fit", t))
    return found


def notes(cfg, cb: dict | None) -> list[str]:
    if not cb:
        return []
    digits = cb["digits"]
    ship: ShippedConfig = digits["ship"]
    logger = (digits["parts"].get("shipped") or [{}])[0].get("logger", "logger?")
    found = [
        f"Section 2: fastest (min) of {cfg.repeats_config} fits per setting, interleaved (shares in brackets: "
        f"median over repeats of each repeat's own share); built by KDLightCLI(run=False) from "
        f"{KD_YAML.relative_to(REPO)}: {ship.describe(digits['epochs'], logger)}; "
        "teacher random init (teacher_checkpoint null, teacher_as_given), progress bar and model summary off, sanity "
        f"check and validation every epoch as shipped. every_n_epochs=1 runs {cfg.every1_epochs} epochs against "
        f"its own baseline. {CACHE_ARG}=auto resolves to memory-only here (no teacher checkpoint), so the shipped "
        f"rows are a first student of this teacher; the 'warm' row (only when kd.yaml sets {CACHE_ARG}) points it "
        "at a directory the untimed warm-up fit filled. Parts: mean over the shipped-settings fits, from the "
        "trainer's profiler: the callback's public run (inclusive), its on_fit_end hook (artifacts, drawn once per "
        f"fit; inclusive, with the heatmap PNG and token HTML drawn and logged there) and the {ACTION_PREFIX}* "
        "actions kdlight reports to trainer.profiler (self time)."
    ]
    text = cb.get("text")
    if text:
        ship = text["ship"]
        logger = (text["parts"].get("shipped") or [{}])[0].get("logger", "logger?")
        found.append(
            f"Section 2 [text]: fastest of {text['repeats']} fits per setting, interleaved; built the same way from "
            f"{_shown(ship.path)}: {ship.describe(text['epochs'], logger)}; random-init teacher: the shipped rows are "
            f"a first student of it, the 'warm' row sets {CACHE_ARG} to a directory the untimed warm-up fit filled."
        )
    return found
