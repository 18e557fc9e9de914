"""Fits of a shipped config built by kdlight's own CLI, and a profiler that says where a callback's time goes.

Used by section 2 (:mod:`bench.callback_share`): every fit is a config file of ``configs/`` parsed and
instantiated by ``KDLightCLI(run=False)`` with the section's overrides, so the benchmark times what
``kdlight fit`` builds. Where the callback's time goes is read from Lightning's profiler interface:
a :class:`PartTimer` installed as the trainer's profiler sums the time of the callback's public
``run``, of its ``on_fit_end`` hook (the per-class tables and figures), of the public drawing and
logging functions the artifacts call (heatmap PNG, token HTML) and of every named action kdlight
reports to the trainer's profiler (``trainer.profiler.profile("kdlight.explain....")``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.profilers import Profiler

from bench.common import sync

EXPLAIN_CLASS = "kdlight.explain.ExplanationAgreement"
#: prefix of the profiler actions kdlight reports; they are timed under their own name
ACTION_PREFIX = "kdlight."
#: parts timed around the callback: its public run (inclusive), its on_fit_end hook (inclusive) and the figures
RUN, ARTIFACTS, FIGURE_PNG, FIGURE_HTML = "run", "artifacts", "figure_png", "figure_html"
#: the module whose public drawing/logging functions the callback's artifacts call, and the part of each
ARTIFACTS_MODULE = "kdlight.explain.callback.outputs"
FIGURE_FUNCTIONS = {
    "explanation_image": FIGURE_PNG,
    "log_image": FIGURE_PNG,
    "explanation_html": FIGURE_HTML,
    "log_html": FIGURE_HTML,
}


class PartTimer(Profiler):
    """A Lightning profiler that sums the wall time of chosen actions.

    ``parts`` maps action names to part names; actions named ``kdlight.*`` are timed under their
    own name. A part's time is its self time (time in a nested timed action counts to that
    action alone), except for ``inclusive`` parts. ``counts`` holds how often each part ran.
    """

    def __init__(self, parts: dict[str, str], device: str, inclusive: tuple[str, ...] = (RUN, ARTIFACTS)) -> None:
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
        setattr(owner, method, self._timed(getattr(owner, method), action_name))

    @contextlib.contextmanager
    def timing(self, owner: Any, functions: dict[str, str]) -> Iterator[None]:
        """Within the block, time each ``owner.<name>`` (public functions of a module) as the part
        ``functions[name]``; restored on exit."""
        saved = {name: getattr(owner, name) for name in functions}
        for name, part in functions.items():
            self.parts[f"{owner.__name__}.{name}"] = part
            setattr(owner, name, self._timed(saved[name], f"{owner.__name__}.{name}"))
        try:
            yield
        finally:
            for name, fn in saved.items():
                setattr(owner, name, fn)

    def _timed(self, fn: Any, action_name: str) -> Any:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.profile(action_name):
                return fn(*args, **kwargs)

        return timed


@dataclass
class ShippedConfig:
    """A shipped config file with one ``ExplanationAgreement`` (e.g. ``configs/digits/kd.yaml``), and
    the fits of section 2 built from it."""

    config: dict[str, Any]
    explain_args: dict[str, Any]
    path: Path

    @classmethod
    def load(cls, path: Path) -> ShippedConfig:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file; pass an existing kdlight fit config")
        config = yaml.safe_load(path.read_text())
        found = [c for c in config["trainer"].get("callbacks") or [] if c.get("class_path") == EXPLAIN_CLASS]
        if len(found) != 1:
            raise ValueError(f"{path} has {len(found)} {EXPLAIN_CLASS} callbacks, expected 1; pick a config with one")
        return cls(config=config, explain_args=dict(found[0].get("init_args") or {}), path=path)

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
    callback, also where its time went (:class:`PartTimer` totals and counts: its ``run``, its
    ``on_fit_end`` artifacts, the figures drawn and logged there, kdlight's profiler actions) and
    the logger class."""
    import importlib

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
        figures = timer.timing(importlib.import_module(ARTIFACTS_MODULE), FIGURE_FUNCTIONS) if timer else None
        try:
            with figures or contextlib.nullcontext():
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
