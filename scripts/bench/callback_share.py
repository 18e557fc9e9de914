"""Section 2: the share of ``fit`` wall time that ``ExplanationAgreement`` takes.

Every fit is ``configs/digits/kd.yaml`` built by kdlight's own CLI parser (``KDLightCLI(run=False)``
on the file's content, with this section's overrides), so the benchmark times what ``kdlight fit``
builds. Where the callback's time goes is read from Lightning's profiler interface, not from
kdlight's private methods: a :class:`PartTimer` installed as the trainer's profiler sums the time
of the callback's public ``run`` (one measurement of a split), of its ``on_fit_end`` hook (the
per-class tables and figures) and of every named action kdlight reports to the trainer's profiler
(``trainer.profiler.profile("kdlight.explain....")``).
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.profilers import Profiler

from bench.common import REPO, Row, fmt_ratio, log, median, spread, sync

KD_YAML = REPO / "configs" / "digits" / "kd.yaml"
EXPLAIN_CLASS = "kdlight.explain.ExplanationAgreement"
#: the callback's argument naming the on-disk cache of the teacher's explanations
CACHE_ARG = "explanation_cache_dir"
#: prefix of the profiler actions kdlight reports; known ones get a readable label
ACTION_PREFIX = "kdlight."
ACTION_LABELS = {
    "kdlight.explain.attribution": "attribution maps",
    "kdlight.explain.teacher_side": "the teacher's maps and faithfulness (first run of a fit, unless cached on disk)",
    "kdlight.explain.chance_level": "chance level (re-init student, once per fit per method)",
    "kdlight.explain.faithfulness": "faithfulness (deletion/insertion AUC, infidelity)",
    "kdlight.explain.surrogate": "decision-tree surrogate",
}
RUN, ARTIFACTS = "run", "artifacts"


class PartTimer(Profiler):
    """A Lightning profiler that sums the wall time of chosen actions.

    ``parts`` maps action names to part names; actions named ``kdlight.*`` are timed under their
    own name. A part's time is its self time (time in a nested timed action counts to that
    action alone), except for ``inclusive`` parts. ``counts`` holds how often each part ran.
    """

    def __init__(self, parts: dict[str, str], device: str, inclusive: tuple[str, ...] = (RUN,)) -> None:
        super().__init__()
        self.parts, self.device, self.inclusive = parts, device, inclusive
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []  # [part, start, time in nested timed actions]

    def _part(self, action_name: str) -> str | None:
        return self.parts.get(action_name) or (action_name if action_name.startswith(ACTION_PREFIX) else None)

    def start(self, action_name: str) -> None:
        part = self._part(action_name)
        if part is not None:
            sync(self.device)
            self._stack.append([part, time.perf_counter(), 0.0])

    def stop(self, action_name: str) -> None:
        part = self._part(action_name)
        if part is None:
            return
        sync(self.device)
        name, begin, nested = self._stack.pop()
        elapsed = time.perf_counter() - begin
        self.totals[name] = self.totals.get(name, 0.0) + (elapsed if name in self.inclusive else elapsed - nested)
        self.counts[name] = self.counts.get(name, 0) + 1
        if self._stack:
            self._stack[-1][2] += elapsed

    def time_method(self, owner: Any, method: str, action_name: str) -> None:
        """Time ``owner.method`` (a public method) as ``action_name``, on this instance only."""
        bound = getattr(owner, method)

        @functools.wraps(bound)
        def timed(*args, **kwargs):
            with self.profile(action_name):
                return bound(*args, **kwargs)

        setattr(owner, method, timed)


@dataclass
class ShippedConfig:
    """``configs/digits/kd.yaml``, and the fits of this section built from it."""

    config: dict[str, Any]
    explain_args: dict[str, Any]

    @classmethod
    def load(cls, path: Path = KD_YAML) -> ShippedConfig:
        config = yaml.safe_load(path.read_text())
        found = [c for c in config["trainer"].get("callbacks") or [] if c.get("class_path") == EXPLAIN_CLASS]
        if len(found) != 1:
            raise ValueError(f"{path} has {len(found)} {EXPLAIN_CLASS} callbacks, expected 1")
        return cls(config=config, explain_args=dict(found[0].get("init_args") or {}))

    @property
    def trainer(self) -> dict[str, Any]:
        return self.config["trainer"]

    @property
    def max_epochs(self) -> int:
        return self.trainer["max_epochs"]

    def fit_config(self, explain_args: dict | None, epochs: int, device: str, root: str) -> dict[str, Any]:
        """The config of one fit: the shipped one with ``explain_args`` as the callback's arguments
        (None: without the callback), ``epochs`` epochs, a random-init teacher, everything written
        under ``root``, no progress bar or model summary."""
        config = copy.deepcopy(self.config)
        config["run_dir"] = None
        callbacks = []
        for spec in config["trainer"].get("callbacks") or []:
            if spec.get("class_path") != EXPLAIN_CLASS:
                callbacks.append(spec)
            elif explain_args is not None:
                callbacks.append({"class_path": EXPLAIN_CLASS, "init_args": copy.deepcopy(explain_args)})
        config["trainer"].update(
            callbacks=callbacks,
            max_epochs=epochs,
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            default_root_dir=root,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        init_args = config["model"].setdefault("init_args", {})
        init_args.update(teacher_checkpoint=None, teacher_as_given=True)  # timing only: random teacher weights
        return config

    def describe(self, epochs_run: int, logger: str) -> str:
        """The shipped settings this section reads (``epochs_run``: the epochs timed, ``logger``: the
        logger class the trainer got), for the notes under the table."""
        trainer, model, data = self.trainer, self.config["model"], self.config["data"]
        explain = ", ".join(f"{k}={v}" for k, v in self.explain_args.items())
        others = ", ".join(
            c["class_path"].rsplit(".", 1)[-1]
            for c in trainer.get("callbacks") or []
            if c.get("class_path") != EXPLAIN_CLASS
        )
        optimizer = (model.get("init_args") or {}).get("optimizer") or {}
        optimizer_args = ", ".join(f"{k}={v}" for k, v in (optimizer.get("init_args") or {}).items())
        data_args = ", ".join(f"{k}={v}" for k, v in (data.get("init_args") or {}).items())
        ran = f" (run: {epochs_run})" if epochs_run != self.max_epochs else ""
        return (
            f"ExplanationAgreement({explain}), max_epochs={self.max_epochs}{ran}, "
            f"log_every_n_steps={trainer.get('log_every_n_steps', 50)}, deterministic={trainer.get('deterministic', False)}, "
            f"seed {self.config.get('seed_everything', 0)}, {logger}, {others}, {model['class_path'].rsplit('.', 1)[-1]} with "
            f"{optimizer.get('class_path', '?').rsplit('.', 1)[-1]}({optimizer_args}), "
            f"{data['class_path'].rsplit('.', 1)[-1]}({data_args})"
        )


def config_fit(cfg, ship: ShippedConfig, explain_args: dict | None, epochs: int) -> tuple[float, dict | None]:
    """Time ``trainer.fit`` of the shipped config (see :meth:`ShippedConfig.fit_config`); with the
    callback, also where its time went (:class:`PartTimer` totals and counts) and the logger class."""
    from kdlight.cli import KDLightCLI
    from kdlight.explain import ExplanationAgreement

    deterministic = torch.are_deterministic_algorithms_enabled()
    with tempfile.TemporaryDirectory() as tmp:
        # kdlight's own parser and instantiation; no FitSummary (it prints) and no config file written
        cli = KDLightCLI(
            args=ship.fit_config(explain_args, epochs, cfg.device, tmp),
            run=False,
            save_config_callback=None,
            trainer_defaults={"callbacks": []},
        )
        trainer = cli.trainer
        explain = [c for c in trainer.callbacks if isinstance(c, ExplanationAgreement)]
        timer = None
        if explain:
            timer = PartTimer({f"[Callback]{explain[0].state_key}.on_fit_end": ARTIFACTS}, cfg.device)
            timer.time_method(explain[0], "run", "ExplanationAgreement.run")
            timer.parts["ExplanationAgreement.run"] = RUN
            trainer.profiler = timer
        try:
            sync(cfg.device)
            start = time.perf_counter()
            trainer.fit(cli.model, datamodule=cli.datamodule)
            sync(cfg.device)
            wall = time.perf_counter() - start
        finally:
            torch.use_deterministic_algorithms(deterministic)  # Lightning leaves it switched on
    if timer is None:
        return wall, None
    return wall, {"totals": dict(timer.totals), "counts": dict(timer.counts), "logger": type(trainer.logger).__name__}


def run(cfg) -> dict:
    ship = ShippedConfig.load()
    args = ship.explain_args
    epochs = ship.max_epochs
    if cfg.quick:  # enough epochs for one callback run (kd.yaml: 10 of 20)
        epochs = min(epochs, max(int(args.get("every_n_epochs", 1)), 5))
    with tempfile.TemporaryDirectory(prefix="kdlight_bench_explain_") as warm_dir:
        # every_n_epochs=1 is paired with its own baseline over fewer epochs, to keep the run short
        settings = {
            "without": (None, epochs),
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
        walls: dict[str, list[float]] = {k: [] for k in settings}
        parts: dict[str, list[dict]] = {k: [] for k in settings}
        config_fit(cfg, ship, warmup, 1)  # untimed warm-up: imports, first figure, caches
        for r in range(cfg.repeats_config):
            for name, (explain_args, n_epochs) in settings.items():
                wall, p = config_fit(cfg, ship, explain_args, n_epochs)
                walls[name].append(wall)
                if p is not None:
                    parts[name].append(p)
            log(
                f"  callback repeat {r + 1}/{cfg.repeats_config}: "
                + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in walls.items())
            )
    return {"walls": walls, "parts": parts, "settings": settings, "ship": ship, "epochs": epochs}


def _part_total(fits: list[dict], part: str) -> float:
    return sum(f["totals"].get(part, 0.0) for f in fits)


def rows(cb: dict) -> list[Row]:
    found: list[Row] = []
    ship: ShippedConfig = cb["ship"]
    walls = {k: min(v) for k, v in cb["walls"].items()}
    args_text = ", ".join(f"{k}={v}" for k, v in ship.explain_args.items())
    shown: set[str] = set()
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
            found.append(
                (
                    "2",
                    f"fit {epochs} epochs, kd.yaml trainer, no callback (baseline)",
                    f"{w0:.2f} s ({spread(cb['walls'][base_key])})",
                    "itself",
                    "",
                    "",
                )
            )
        share = (walls[key] - w0) / walls[key]
        paired = median([(w - b) / w for w, b in zip(cb["walls"][key], cb["walls"][base_key])])
        calls = cb["parts"][key][0]["counts"].get(RUN, 0) if cb["parts"][key] else 0
        verdict = "" if goal is None else f"<= 10 %: {'met' if max(share, paired) <= goal else 'NOT met'}"
        found.append(
            (
                "2",
                f"fit {epochs} epochs + ExplanationAgreement {label}: callback share = (with - without)/with, "
                "of the fastest fits; in brackets the median over repeats of each repeat's share",
                f"{walls[key]:.2f} s ({spread(cb['walls'][key])}), {calls} callback run(s)",
                f"without {w0:.2f} s",
                f"{100 * share:.1f} % ({100 * paired:.1f} %)",
                verdict,
            )
        )
    fits = cb["parts"].get("shipped") or []
    if fits:
        found += _part_rows(fits, walls["shipped"] - walls["without"])
    return found


def _part_rows(fits: list[dict], delta: float) -> list[Row]:
    """Where the callback's time goes at the shipped settings (mean over the fits)."""
    n = len(fits)
    calls = sum(f["counts"].get(RUN, 0) for f in fits)
    run_time, artifacts = _part_total(fits, RUN), _part_total(fits, ARTIFACTS)
    total = run_time + artifacts
    found: list[Row] = [
        (
            "2",
            "shipped settings: profiled callback time per fit (runs + end-of-fit artifacts, mean of fits); "
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
        label = ACTION_LABELS.get(action, action)
        found.append(
            (
                "2",
                f"  part: {label}",
                f"{t / max(calls, 1) * 1000:.0f} ms/run",
                "callback time per fit",
                f"{100 * t / max(total, 1e-12):.0f} %",
                "",
            )
        )
    rest = run_time - accounted
    found.append(
        (
            "2",
            "  part: rest of run (probe batch, predictions, metrics, logging)"
            if reported
            else "  part: whole run (kdlight reported no profiler actions inside it)",
            f"{rest / max(calls, 1) * 1000:.0f} ms/run",
            "callback time per fit",
            f"{100 * rest / max(total, 1e-12):.0f} %",
            "",
        )
    )
    found.append(
        (
            "2",
            "  part: artifacts (per-class CSV + PNG figure per method, in on_fit_end)",
            f"{artifacts / n * 1000:.0f} ms/fit",
            "callback time per fit",
            f"{100 * artifacts / max(total, 1e-12):.0f} %",
            "",
        )
    )
    return found


def notes(cfg, cb: dict | None) -> list[str]:
    if not cb:
        return []
    ship: ShippedConfig = cb["ship"]
    logger = (cb["parts"].get("shipped") or [{}])[0].get("logger", "logger?")
    return [
        f"Section 2: fastest (min) of {cfg.repeats_config} fits per setting, interleaved (shares in brackets: "
        f"median over repeats of each repeat's own share); built by KDLightCLI(run=False) from "
        f"{KD_YAML.relative_to(REPO)}: {ship.describe(cb['epochs'], logger)}; "
        "teacher random init (teacher_checkpoint null, teacher_as_given), progress bar and model summary off, sanity "
        f"check and validation every epoch as shipped. every_n_epochs=1 runs {cfg.every1_epochs} epochs against "
        f"its own baseline. {CACHE_ARG}=auto resolves to memory-only here (no teacher checkpoint), so the shipped "
        f"rows are a first student of this teacher; the 'warm' row (only when kd.yaml sets {CACHE_ARG}) points it "
        "at a directory the untimed warm-up fit filled. Parts: mean over the shipped-settings fits, from the "
        "trainer's profiler: the callback's public run (inclusive), its on_fit_end hook (artifacts, drawn once per "
        f"fit) and the {ACTION_PREFIX}* actions kdlight reports to trainer.profiler (self time)."
    ]
