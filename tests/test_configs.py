"""Every shipped YAML parses against the code; the runnable ones survive a fast_dev_run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdlight.cli import KDLightCLI, main

from conftest import REPO

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in ("trainer", "logger", "spaces"))
FRAGMENTS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name in ("trainer", "logger"))
LOCAL_DATA = ("digits", "mnist1d", "breast_cancer", "shortcut", "text_shortcut", "tweets", "compression", "lm")


class ParseOnlyCLI(KDLightCLI):
    def instantiate_classes(self) -> None:  # parse and type-check, build nothing
        pass


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("config", CONFIGS, ids=rel)
def test_config_parses(config):
    ParseOnlyCLI(args=["-c", str(config)], run=False)


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=rel)
def test_fragment_stacks_on_a_config(fragment):
    ParseOnlyCLI(args=["-c", str(REPO / "configs/digits/kd.yaml"), "-c", str(fragment)], run=False)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.parent.name in LOCAL_DATA], ids=rel)
def test_config_runs_one_batch(config, tmp_path):
    text = config.read_text()
    if re.search(r"reference: runs/\S+\.ckpt", text):  # ExplanationPreservation of a checkpoint: none here
        config = tmp_path / config.name
        config.write_text(re.sub(r"reference: runs/\S+\.ckpt", "reference: teacher", text))
    extra = ["--model.init_args.teacher_checkpoint=null"] if "teacher_checkpoint" in text else []
    extra += ["--model.init_args.teacher_as_given=true"] if "DistillationModule" in text else []
    if "TeacherEnsemble" in text:  # members load their own checkpoints: none here
        no_checkpoints = tmp_path / "no_member_checkpoints.yaml"
        no_checkpoints.write_text("model:\n  init_args:\n    teacher:\n      init_args:\n        checkpoints: null\n")
        extra += ["-c", str(no_checkpoints)]
    main(
        [
            "fit",
            "-c",
            str(config),
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            *extra,
        ]
    )
