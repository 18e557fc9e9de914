"""The search space of :mod:`kdlight.sweeps.search` and the config it searches: reading and checking
the space YAML, the trial's CLI overrides (keys into lists included), the resolved config's keys."""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdlight.sweeps.seeds import SeedsError

DISTRIBUTIONS = ("float", "int", "categorical")


class SearchError(SeedsError):
    """A problem the user can fix, shown as one line with exit status 2."""


# ------------------------------------------------------------------------------------ space
def parse_space(path: Path) -> dict[str, dict[str, Any]]:
    """The search space: ``{key: {"float": [lo, hi], "log": bool}`` | ``{"int": [lo, hi]}`` |
    ``{"categorical": [...]}}``, checked."""
    try:
        space = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SearchError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise SearchError(f"{path} must map dotted config keys to distributions, e.g. key: {{float: [0.1, 1.0]}}")
    for key, spec in space.items():
        kinds = [k for k in DISTRIBUTIONS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1 or set(spec) - {kinds[0], "log"}:
            raise SearchError(
                f"{path}: {key}: give one of {{float: [low, high], log: true}}, {{int: [low, high]}}, "
                f"{{categorical: [a, b]}}; got {spec!r}"
            )
        kind, values = kinds[0], spec[kinds[0]]
        if kind == "categorical":
            if not isinstance(values, list) or not values:
                raise SearchError(f"{path}: {key}: categorical needs a non-empty list of choices, got {values!r}")
            continue
        number = int if kind == "int" else (int, float)
        if (
            not isinstance(values, list)
            or len(values) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in values)
        ):
            raise SearchError(f"{path}: {key}: {kind} needs [low, high] as {kind}s, got {values!r}")
        low, high = values
        if low >= high:
            raise SearchError(f"{path}: {key}: empty range [{low}, {high}]: low must be below high")
        if spec.get("log") and low <= 0:
            raise SearchError(f"{path}: {key}: log scale needs low > 0, got {low}")
    return space


def suggest(trial, key: str, spec: dict[str, Any]) -> Any:
    """The trial's value for ``key``."""
    if "categorical" in spec:
        return trial.suggest_categorical(key, spec["categorical"])
    if "int" in spec:
        return trial.suggest_int(key, *spec["int"], log=bool(spec.get("log")))
    return trial.suggest_float(key, *map(float, spec["float"]), log=bool(spec.get("log")))


def override(key: str, value: Any) -> str:
    """``--key=value`` as the kdlight CLI reads it (strings as they are, the rest as JSON)."""
    return f"--{key}={value if isinstance(value, str) else json.dumps(value)}"


# ------------------------------------------------------------------------------------ config
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a nested mapping (inner mappings and lists included); list items by
    index, e.g. ``model.init_args.objective.init_args.terms.1.init_args.weight``."""
    keys: dict[str, Any] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, inner in items:
        key = f"{prefix}.{name}" if prefix else str(name)
        keys[key] = inner
        keys.update(flatten(inner, key))
    return keys


def list_prefix(key: str, config: dict[str, Any]) -> str | None:
    """The outermost list a key reaches into (``...terms`` for ``...terms.1.init_args.weight``)."""
    parts = key.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end])
        if isinstance(config.get(prefix), list) and parts[end].isdigit():
            return prefix
    return None


def overrides(params: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The CLI overrides of a trial's parameters. The CLI cannot set one item of a list (a
    Composite's terms), so a key into a list overrides the whole list, with its items as resolved."""
    plain, lists = [], {}
    for key, value in params.items():
        prefix = list_prefix(key, config)
        if prefix is None:
            plain.append(override(key, value))
            continue
        tree = lists.setdefault(prefix, copy.deepcopy(config[prefix]))
        *path, last = key[len(prefix) + 1 :].split(".")
        for part in path:
            tree = tree[int(part)] if isinstance(tree, list) else tree[part]
        tree[int(last) if isinstance(tree, list) else last] = value
    return plain + [override(key, value) for key, value in lists.items()]


def resolved_config(configs: Sequence[Path], extra: Sequence[str]) -> dict[str, Any]:
    """The config as the kdlight CLI parses it (``kdlight fit ... --print_config``), flattened."""
    from kdlight.cli import main as kdlight

    arguments = ["fit", *[a for c in configs for a in ("-c", str(c))], *extra, "--print_config"]
    printed, argv, sys.argv = io.StringIO(), sys.argv, sys.argv[:1]
    try:
        with contextlib.redirect_stdout(printed):
            kdlight(arguments)
    except SystemExit as err:
        if err.code not in (0, None):
            raise SearchError("the config does not parse (kdlight's error above)") from None
    finally:
        sys.argv = argv
    return flatten(yaml.safe_load(printed.getvalue()) or {})


def check_keys(space: dict[str, Any], config: dict[str, Any]) -> None:
    """Every space key must be a key of the config; else one line with the close ones."""
    for key in space:
        if key in config:
            continue
        last = key.rsplit(".", 1)[-1]
        close = [k for k in config if k.rsplit(".", 1)[-1] == last]
        close += [k for k in difflib.get_close_matches(key, list(config), n=3, cutoff=0.6) if k not in close]
        hint = f"close: {', '.join(close[:4])}" if close else "see `kdlight fit -c CONFIG --print_config`"
        raise SearchError(f"search space key {key!r} is not a key of this config; {hint}")


def check_single_device(config: dict[str, Any]) -> None:
    """Refuse configs that train on several devices or nodes: under DDP every rank would run the
    search. (Not supported yet: the search would have to run on rank 0 only.)"""
    devices, nodes = config.get("trainer.devices", "auto"), config.get("trainer.num_nodes", 1)
    accelerator, strategy = str(config.get("trainer.accelerator", "auto")), config.get("trainer.strategy", "auto")
    if devices == "auto":
        import torch

        single = accelerator == "cpu" or torch.cuda.device_count() <= 1
    elif isinstance(devices, (list, tuple)):
        single = len(devices) == 1
    else:
        single = str(devices) == "1" or (str(devices) == "-1" and accelerator == "cpu")
    strategy_name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    distributed = any(s in strategy_name.lower() for s in ("ddp", "fsdp", "deepspeed"))
    if not single or str(nodes) != "1" or distributed:
        raise SearchError(
            f"the search runs single-device trainers only (trainer.devices={devices}, num_nodes={nodes}, "
            f"strategy={strategy_name}); under DDP every rank would run it: add -- --trainer.devices=1"
        )


def wandb_overrides(config: dict[str, Any], study_name: str, number: int) -> list[str]:
    """For a config whose logger is a WandbLogger: the override that tags the trial's W&B run."""
    logger = config.get("trainer.logger")
    if not (isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger")):
        return []
    tags = list((logger.get("init_args") or {}).get("tags") or [])
    return [override("trainer.logger.init_args.tags", [*tags, study_name, f"trial{number}"])]
