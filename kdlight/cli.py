"""The ``kdlight`` command: a LightningCLI with fit / validate / test / predict."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from kdlight.artifacts import LoggerSaveConfigCallback
from kdlight.errors import NonFiniteLossError
from kdlight.summary import FitSummary

# Errors that describe a problem in the user's config or files: shown as one line.
USER_ERRORS = (ValueError, FileNotFoundError, NonFiniteLossError, KeyError)


class KDLightCLI(LightningCLI):
    """LightningCLI with models and data chosen by ``class_path``.

    The optimizer is configured on the module (``model.init_args.optimizer``) rather than by
    LightningCLI's automatic ``--optimizer``, so it only ever sees trainable parameters and
    never the teacher's.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)  # resolved config into W&B too
        kwargs.setdefault("trainer_defaults", {}).setdefault("callbacks", [FitSummary()])  # best-metrics summary
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Resuming from a checkpoint needs no teacher file: the checkpoint holds the teacher."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        init_args = config.get("model", {}).get("init_args") if hasattr(config.get("model", {}), "get") else None
        teacher_file = init_args.get("teacher_checkpoint") if init_args is not None else None
        if ckpt_path and teacher_file and Path(ckpt_path).is_file() and not Path(teacher_file).exists():
            warnings.warn(
                f"teacher_checkpoint {teacher_file} is missing; using the teacher stored in {ckpt_path}", stacklevel=2
            )
            init_args["teacher_checkpoint"] = None


def _drop_litlogger_tip(record: logging.LogRecord) -> bool:
    """Logging filter: Lightning prints an advertisement for its hosted logger on every run."""
    return "litlogger" not in record.getMessage()


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of an ``raise ... from ...`` chain."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def main(args: list[str] | None = None) -> KDLightCLI | None:
    """Run the CLI (``kdlight``, ``python -m kdlight``, or in-process); ``args`` replaces ``sys.argv``.

    Problems a user can fix print one line (``kdlight: error: ...``) and exit with status 1; set
    ``KDLIGHT_TRACEBACK=1`` to see the full traceback instead.
    """
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _drop_litlogger_tip not in rank_zero_log.filters:
        rank_zero_log.addFilter(_drop_litlogger_tip)
    try:
        return KDLightCLI(args=args)
    except USER_ERRORS as err:
        if os.environ.get("KDLIGHT_TRACEBACK"):
            raise
        err = root_cause(err)  # jsonargparse wraps errors raised while building the classes
        message = str(err).strip("'\"").splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"kdlight: error: {message}  (set KDLIGHT_TRACEBACK=1 for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def console() -> None:
    """The ``kdlight`` console script: :func:`main` on ``sys.argv``, exit status 0 on success
    (the console-script wrapper passes the return value to ``sys.exit``, which would print a
    returned CLI object and exit with 1)."""
    main()
