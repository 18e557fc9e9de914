"""The ``kdlight`` command: a LightningCLI with fit / validate / test / predict."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback
from lightning.pytorch.cli import LightningCLI

from kdlight.cli.errors import explain
from kdlight.cli.trainer_checks import check_trainer_config
from kdlight.core.errors import NonFiniteLossError
from kdlight.reporting.artifacts import LoggerSaveConfigCallback
from kdlight.reporting.runs import RunDirectory, RunPlan, place_trainer, plan_run, resumed_config_name
from kdlight.reporting.summary import FitSummary

# Errors that describe a problem in the user's config or files: shown as one line.
USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteLossError, KeyError, MisconfigurationException)


class KDLightCLI(LightningCLI):
    """LightningCLI with models and data chosen by ``class_path`` and runs that never lose data.

    The optimizer is configured on the module (``model.init_args.optimizer``) rather than by
    LightningCLI's automatic ``--optimizer``, so it only ever sees trainable parameters and
    never the teacher's.

    ``run_dir`` (top level of a config, or ``--run_dir``) names the run: loggers, checkpoints and
    ``default_root_dir`` follow it, every fit gets a new version and evaluations write beside the
    checkpoint they evaluate (:mod:`kdlight.reporting.runs`). Checkpoints given by ``--ckpt_path`` are loaded
    weights-only unless ``--weights_only=false`` is passed.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {}).setdefault("default_env", False)
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)  # resolved config into W&B too
        kwargs.setdefault("trainer_defaults", {}).setdefault("callbacks", [FitSummary()])  # best-metrics summary
        self.run_plan: RunPlan | None = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Directory that names the run: each fit writes <run_dir>/version_<n>/ (see kdlight.reporting.runs)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Allow resuming a checkpoint in place although its run went on to later epochs",
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model by the one stored in ``--ckpt_path``; refuse when
        they differ instead of silently evaluating another model than the config names."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not (ckpt_path and Path(ckpt_path).is_file() and config.get("model") is not None):
            return super()._parse_ckpt_path()
        if config.get("weights_only") is False:
            return  # the user trusts the file; Lightning reads its hyperparameters weights-only
        given = _as_dict(config.get("model"))
        try:
            super()._parse_ckpt_path()
        except pickle.UnpicklingError as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            first = next(
                (line for line in lines if "global" in line.lower()), lines[0] if lines else type(err).__name__
            )
            first = first.split(" Please")[0]
            raise ValueError(
                f"--ckpt_path {ckpt_path} holds objects other than weights ({first[:160]}); kdlight loads "
                "checkpoints weights-only: load it only if you trust its source, with --weights_only=false"
            ) from None
        stored = _as_dict(self.config[subcommand].get("model"))
        differences = model_differences(given, stored)
        if differences:
            raise ValueError(
                f"--ckpt_path {ckpt_path} holds another model than the config: {'; '.join(differences[:3])} "
                "(checkpoint vs config); evaluate it with the config it was trained with (config.yaml beside it)"
            )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        if self.subcommand:
            check_trainer_config(config["trainer"])
        self._use_teacher_in_checkpoint(config)
        if config.get("weights_only", "absent") is None:
            config["weights_only"] = True  # Lightning unpickles checkpoints given as URLs in full
        if config.get("run_dir") and self.subcommand:
            self.run_plan, config["ckpt_path"] = plan_run(
                self.subcommand, config["run_dir"], config.get("ckpt_path"), bool(config.get("overwrite"))
            )
            place_trainer(config["trainer"], self.run_plan)
            if self.run_plan.resumed_from is not None:  # the run's config.yaml stays; this one goes beside it
                self.save_config_kwargs["config_filename"] = resumed_config_name(self.run_plan.target)

    @staticmethod
    def _use_teacher_in_checkpoint(config) -> None:
        """Resuming from a checkpoint needs no teacher file: the checkpoint holds the teacher."""
        ckpt_path = config.get("ckpt_path")
        init_args = config.get("model", {}).get("init_args") if hasattr(config.get("model", {}), "get") else None
        teacher_file = init_args.get("teacher_checkpoint") if init_args is not None else None
        if ckpt_path and teacher_file and Path(ckpt_path).is_file() and not Path(teacher_file).exists():
            warnings.warn(
                f"teacher_checkpoint {teacher_file} is missing; using the teacher stored in {ckpt_path}", stacklevel=2
            )
            init_args["teacher_checkpoint"] = None

    def _instantiate_trainer(self, config, callbacks):
        if self.run_plan is not None:
            callbacks = [*callbacks, RunDirectory(self.run_plan)]
        return super()._instantiate_trainer(config, callbacks)


def _as_dict(value) -> object:
    return value.as_dict() if hasattr(value, "as_dict") else value


#: model settings that may differ between a checkpoint and the config that evaluates or resumes it
_MAY_DIFFER = {
    "teacher_checkpoint",
    "optimizer",
    "lr_scheduler",
    "lr_scheduler_interval",
    "check_finite",
    "teacher_cache",
    "cache_augmented",
    "teacher_as_given",
    "allow_teacher_data_overlap",
}


def model_differences(given: object, stored: object, where: str = "model") -> list[str]:
    """``"<key>: <stored> vs <given>"`` for each class path or setting that differs (a few keys that
    do not change what the model computes, such as the optimizer, are ignored)."""
    if isinstance(given, dict) and isinstance(stored, dict):
        if given.get("class_path") != stored.get("class_path"):  # another class: its arguments do not matter
            return [f"{where}: {stored.get('class_path')} vs {given.get('class_path')}"]
        found = []
        for key in sorted(set(given) | set(stored)):
            if key in _MAY_DIFFER or key == "dict_kwargs":
                continue
            sub = where if key == "init_args" else f"{where}.{key}"
            found += model_differences(given.get(key), stored.get(key), sub)
        return found
    if isinstance(given, (list, tuple)) and isinstance(stored, (list, tuple)) and len(given) == len(stored):
        return [d for i, (g, s) in enumerate(zip(given, stored)) for d in model_differences(g, s, f"{where}[{i}]")]
    same = given == stored or (
        isinstance(given, (int, float)) and isinstance(stored, (int, float)) and float(given) == float(stored)
    )
    return [] if same else [f"{where.removesuffix('.class_path')}: {stored} vs {given}"]


def _drop_litlogger_tip(record: logging.LogRecord) -> bool:
    """Logging filter: Lightning prints an advertisement for its hosted logger on every run."""
    return "litlogger" not in record.getMessage()


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of an ``raise ... from ...`` chain."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def main(args: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> KDLightCLI | None:
    """Run the CLI (``kdlight``, ``python -m kdlight``, or in-process); ``args`` replaces ``sys.argv``;
    ``callbacks`` are added to the trainer's (e.g. a sweep's pruning callback).

    Problems a user can fix print one line (``kdlight: error: ...``): a config the parser rejects
    (unknown key or class, wrong type, missing file; see :func:`kdlight.cli.errors.explain`)
    exits with status 2 like any usage error, one rejected while building or running (``USER_ERRORS``)
    with status 1. Set ``KDLIGHT_TRACEBACK=1`` for the traceback with the full original message.
    """
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_litlogger_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_drop_litlogger_tip)
    try:  # exit_on_error=False: jsonargparse raises instead of printing its usage and nested message
        extra = {"trainer_defaults": {"callbacks": [FitSummary(), *callbacks]}} if callbacks else {}
        return KDLightCLI(args=args, parser_kwargs={"exit_on_error": False}, **extra)
    except (ArgumentError, *USER_ERRORS) as err:
        if os.environ.get("KDLIGHT_TRACEBACK"):
            raise
        if isinstance(err, ArgumentError):
            message, status = explain(str(err)), 2
        else:
            err, status = root_cause(err), 1  # jsonargparse wraps errors raised while building the classes
            # a KeyError's str() is the repr of its key; any other message keeps its quotes
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            message = text.splitlines()[0] if text.strip() else type(err).__name__
        print(f"kdlight: error: {message}  (set KDLIGHT_TRACEBACK=1 for the full text)", file=sys.stderr)
        raise SystemExit(status) from None


def console() -> None:
    """The ``kdlight`` console script: :func:`main` on ``sys.argv``, exit status 0 on success
    (the console-script wrapper passes the return value to ``sys.exit``, which would print a
    returned CLI object and exit with 1). Like ``python -m kdlight`` it imports user code
    (``class_path: my_package.MyNet``) from the working directory."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    main()
