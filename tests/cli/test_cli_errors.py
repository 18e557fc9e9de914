"""Config mistakes reach the user as one line with a suggestion (kdlight.cli.errors, kdlight.cli.main)."""

from __future__ import annotations

import textwrap
from argparse import ArgumentError
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from kdlight.cli import errors as ce
from kdlight.cli import main
from kdlight.cli import message as cli_message
from kdlight.cli.trainer_checks import check_trainer_config

from conftest import REPO

DIGITS = REPO / "configs" / "digits"
TRAINER = REPO / "configs" / "trainer"
OBJECTIVE = "<class 'kdlight.objectives.base.Objective'>"


def in_objective(errors: str, value: str = "NestedArg(key='class_path', val='x')") -> str:
    """A jsonargparse message as it reports a problem with ``model.init_args.objective``
    (the given ``errors`` lines are the objective's union branches)."""
    errors = textwrap.indent(textwrap.dedent(errors).strip(), " " * 12)
    return (
        'Parser key "model":\n'
        "  Does not validate against any of the Union subtypes\n"
        "  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]\n"
        "  Errors:\n"
        "    - Problem with given class_path 'kdlight.DistillationModule':\n"
        '        Parser key "objective":\n'
        "          Does not validate against any of the Union subtypes\n"
        f"          Subtypes: [{OBJECTIVE}, <class 'NoneType'>]\n"
        "          Errors:\n"
        f"{errors}\n"
        "            - Expected a <class 'NoneType'>\n"
        "          Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        f"          Given value: {value}\n"
        "    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        f"  Given value: {value}"
    )


def lines(message: str) -> list[cli_message.Line]:
    return cli_message.parse_lines(message)


KDD = in_objective("""
    - Problem with given class_path 'kdlight.objectives.KDD':
        module 'kdlight.objectives' has no attribute 'KDD'
""")
TEMPRATURE = in_objective(
    """
    - Problem with given class_path 'kdlight.objectives.KD':
        Option 'temprature' is not accepted
""",
    "{'init_args': {'temprature': 2.0}}",
)
TEMPERATURE_ABC = in_objective("""
    - Problem with given class_path 'kdlight.objectives.KD':
        Parser key "temperature":

          - Expected a path but abc either not accessible or invalid
          - Does not validate against any of the Union subtypes
          Subtypes: [<class 'float'>, <class 'kdlight.core.schedules.Schedule'>]
          Errors:
            - Expected a <class 'float'>
            - Expected a dot import path string: abc
          Given value type: <class 'str'>
          Given value: abc
""")
STUDENT_MISSING_MODULE = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'kdlight.DistillationModule':
        Parser key "student":
          Problem with given class_path 'my_package.Net':
            No module named 'my_package'
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='student.class_path', val='my_package.Net')"""


# -- reading the nested message ---------------------------------------------------------------


def test_key_path_follows_parser_keys_and_class_paths():
    parsed = lines(TEMPERATURE_ABC)
    index = next(i for i, line in enumerate(parsed) if line.text == "Expected a <class 'float'>")
    assert cli_message.key_path(parsed, index) == "model.init_args.objective.init_args.temperature"
    assert cli_message.enclosing_class(parsed, index) is None  # about a key, not the class's arguments
    assert cli_message.expected_types(parsed, index) == ["<class 'float'>", "<class 'kdlight.core.schedules.Schedule'>"]
    assert cli_message.given_value(parsed, index) == "abc"


def test_describe_types_shortens_classes_and_merges_literals():
    assert ce.describe_types(["<class 'float'>", "<class 'kdlight.core.schedules.Schedule'>"]) == "float or Schedule"
    assert ce.describe_types(["typing.Literal[64, 32]", "typing.Literal['32', 'bf16']", "<class 'NoneType'>"]) == (
        "one of 64, 32, '32', 'bf16' or null"
    )


def test_suggest_ignores_case_and_refuses_far_words():
    assert ce.suggest("kdd", ["KD", "DKD", "Hint"]) == "KD"
    assert ce.suggest("temprature", ["temperature", "alpha"]) == "temperature"
    assert ce.suggest("xyz", ["temperature", "alpha"]) is None


# -- one rule per kind of mistake ---------------------------------------------------------------


def test_unknown_class_suggests_the_closest_and_lists_the_package():
    line = ce.unknown_class_error(lines(KDD))
    assert line.startswith(
        "model.init_args.objective: unknown class kdlight.objectives.KDD; did you mean kdlight.objectives.KD?"
    )
    assert "kdlight.objectives has: " in line and "DKD" in line and "Objective," not in line


def test_unknown_bare_class_name_is_matched_against_the_expected_base():
    message = in_objective("- Expected a dot import path string: kd", "NestedArg(key='objective', val='kd')")
    line = ce.unknown_class_error(lines(message))
    assert "unknown class kd; did you mean kdlight.objectives.KD?" in line
    assert "Objective classes: kdlight.objectives: " in line


def test_bare_name_for_a_float_or_class_is_a_type_error_not_a_class():
    assert ce.unknown_class_error(lines(TEMPERATURE_ABC)) is None


def test_misspelled_module_in_the_middle_of_a_class_path():
    message = in_objective("""
        - Problem with given class_path 'kdlight.objective.KD':
            module 'kdlight' has no attribute 'objective'
    """)
    assert ce.unknown_class_error(lines(message)) == (
        "model.init_args.objective: unknown module kdlight.objective in kdlight.objective.KD; "
        "did you mean kdlight.objectives.KD?"
    )


def test_module_that_does_not_exist():
    assert ce.unknown_module_error(lines(STUDENT_MISSING_MODULE)) == (
        "model.init_args.student: cannot import my_package.Net: no module named 'my_package' "
        "(is it installed and on the Python path?)"
    )
    misspelled = in_objective("""
        - Problem with given class_path 'kdlite.objectives.KD':
            No module named 'kdlite'
    """)
    assert ce.unknown_module_error(lines(misspelled)).endswith("did you mean kdlight.objectives.KD?")


def test_missing_dependency_of_an_existing_module_is_not_called_a_typo():
    message = in_objective("""
        - Problem with given class_path 'kdlight.objectives.KD':
            No module named 'wandb'
    """)
    assert "importing kdlight.objectives.KD failed: No module named 'wandb'" in ce.unknown_module_error(lines(message))


def test_unknown_init_argument_suggests_and_lists_the_arguments():
    assert ce.unknown_init_arg_error(lines(TEMPRATURE)) == (
        "model.init_args.objective.init_args.temprature: kdlight.objectives.KD takes no argument 'temprature'; "
        "did you mean 'temperature'? (it takes: temperature, alpha)"
    )


def test_wrong_type_names_the_types_and_drops_the_misleading_path_branch():
    line = ce.wrong_type_error(lines(TEMPERATURE_ABC))
    assert line == "model.init_args.objective.init_args.temperature: expected float or Schedule, got 'abc'"
    single = "Parser key \"batch_size\":\n  Expected a <class 'int'>. Got value: abc"
    assert ce.wrong_type_error(lines(single)) == "batch_size: expected int, got 'abc'"


def test_not_a_subclass_lists_the_classes_that_fit():
    message = in_objective("- Import path kdlight.models.MLP does not correspond to a subclass of Objective")
    line = ce.not_a_subclass_error(lines(message))
    assert line.startswith("model.init_args.objective: kdlight.models.MLP is not a subclass of Objective")
    assert "kdlight.objectives: " in line and "KD" in line
    data = (
        'Parser key "data":\n  Errors:\n    - Import path does not correspond to a subclass of '
        "LightningDataModule\n  Given value: kdlight.models.MLP"
    )
    assert "kdlight.models.MLP is not a subclass of LightningDataModule" in ce.not_a_subclass_error(lines(data))


def test_missing_config_file_suggests_a_neighbour(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "kd.yaml").write_text("{}")  # the working directory is tmp_path: paths show relative

    def explain_missing(path: str) -> str:
        return ce.missing_file_error(lines(f"Parser key \"config\": File does not exist: '{tmp_path / path}'"))

    assert explain_missing("configs/kdd.yaml") == (
        "config file configs/kdd.yaml does not exist; did you mean configs/kd.yaml?"
    )
    assert explain_missing("configs/nope.yaml") == "config file configs/nope.yaml does not exist"
    assert explain_missing("config/kd.yaml") == "config file config/kd.yaml does not exist (no directory config)"


def test_unknown_keys_at_the_top_and_in_the_trainer():
    assert ce.unknown_key_error(lines("Group 'trainer' does not accept option 'max_epoch'")) == (
        "trainer.max_epoch is not a Trainer argument; did you mean trainer.max_epochs?"
    )
    line = ce.unknown_key_error(lines("Option 'modle.init_args.objective.class_path' is not accepted"))
    assert line.startswith("unknown key 'modle.init_args.objective.class_path'; did you mean 'model'?")
    assert ce.unknown_key_error(lines(TEMPRATURE)) is None  # a class's argument: another rule


def test_unrecognized_command_line_flags():
    line = ce.unrecognized_arguments_error(lines("unrecognized arguments: --trainer.max_epohcs=3 --modle.x=1 extra"))
    assert line == (
        "unknown option --trainer.max_epohcs; did you mean --trainer.max_epochs?; "
        "unknown option --modle.x; did you mean --model.x?; unexpected argument 'extra'"
    )


def test_small_rules():
    assert ce.invalid_choice_error(
        lines("argument subcommand: invalid choice: 'fti' (choose from 'fit', 'validate', 'test', 'predict')")
    ) == ("unknown subcommand 'fti'; did you mean 'fit'? (choose from fit, validate, test, predict)")
    assert ce.yaml_syntax_error(
        lines(
            'Problems parsing config: while parsing a flow sequence\n  in "<unicode string>", line 1, column 10\n'
            "did not find expected ',' or ']'\n  in \"<unicode string>\", line 2, column 1"
        )
    ) == (
        "a config file is not valid YAML: while parsing a flow sequence did not find expected ',' or ']' "
        "(at line 2, column 1)"
    )
    assert ce.not_a_mapping_error(lines("Unexpected config: - a\n- b\n")).endswith("got: - a")
    assert ce.missing_argument_error(lines("the following arguments are required: fit.model")) == (
        "no model given: pass a config with -c (e.g. configs/digits/kd.yaml) or set --model"
    )


def test_init_args_of_a_logger_the_parser_cannot_reach():
    message = (
        'Parser key "trainer.logger":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'lightning.pytorch.loggers.logger.Logger'>, <class 'bool'>, <class 'NoneType'>]\n"
        "  Errors:\n    - Expected an instantiatable class, but lightning.pytorch.loggers.Logger is abstract\n"
        "    - Expected a <class 'bool'>\n    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='save_dir', val='x')"
    )
    assert ce.explain(message) == (
        "trainer.logger: --trainer.logger.init_args.save_dir=x cannot reach the Logger of the config; "
        "name its class first: --trainer.logger=<class_path> --trainer.logger.init_args.save_dir=x"
    )


def test_explain_picks_the_rule_and_falls_back_to_the_deepest_line(monkeypatch):
    assert ce.explain(KDD).startswith("model.init_args.objective: unknown class kdlight.objectives.KDD")
    assert ce.explain("something new\n  went wrong here") == "went wrong here"
    assert ce.explain('expected "subcommand" to be one of {fit,validate}, but it was not provided.').startswith(
        'expected "subcommand"'
    )

    def broken(_lines):
        raise RuntimeError("bug in a rule")

    monkeypatch.setattr(ce, "RULES", (broken, *ce.RULES))
    assert "unknown class kdlight.objectives.KDD" in ce.explain(KDD)  # a failing rule never hides the error


# -- trainer settings --------------------------------------------------------------------------


@pytest.mark.parametrize("every", [0, -1, 1.5])
def test_check_val_every_n_epoch_below_one_is_refused(every):
    with pytest.raises(ValueError, match=r"check_val_every_n_epoch must be an integer >= 1 .*limit_val_batches=0"):
        check_trainer_config({"check_val_every_n_epoch": every}, cuda_devices=0)


def test_shipped_ddp_fragment_on_a_machine_without_cuda():
    trainer = yaml.safe_load((TRAINER / "ddp.yaml").read_text())["trainer"]
    with pytest.raises(ValueError) as info:
        check_trainer_config(trainer, cuda_devices=0)
    assert str(info.value) == (
        "trainer.strategy=ddp with accelerator=gpu (configs/trainer/ddp.yaml) needs at least one CUDA GPU "
        "(devices=-1: every GPU of the node) and this machine has no CUDA GPU; "
        "to run ddp on CPU use --trainer.accelerator=cpu --trainer.devices=2"
    )
    check_trainer_config(trainer, cuda_devices=2)  # with GPUs: fine
    check_trainer_config({**trainer, "accelerator": "cpu", "devices": 2}, cuda_devices=0)  # ddp on CPU: fine


def test_shipped_fsdp_fragment_on_a_machine_without_cuda():
    trainer = yaml.safe_load((TRAINER / "fsdp.yaml").read_text())["trainer"]
    with pytest.raises(
        ValueError,
        match=r"strategy=fsdp \(configs/trainer/fsdp.yaml\) needs at least one CUDA GPU"
        r".*FSDP does not run on CPU.*--trainer.strategy=ddp --trainer.accel",
    ):
        check_trainer_config(trainer, cuda_devices=0)
    with pytest.raises(ValueError, match="strategy=fsdp"):
        check_trainer_config({**trainer, "accelerator": "cpu"}, cuda_devices=0)


def test_gpu_accelerator_without_cuda_and_parsed_namespaces():
    with pytest.raises(ValueError, match=r"accelerator=gpu needs 4 CUDA GPUs \(devices=4\).*--trainer.accelerator=cpu"):
        check_trainer_config(Namespace(accelerator="gpu", devices=4, strategy="auto"), cuda_devices=0)
    strategy = Namespace(class_path="lightning.pytorch.strategies.DDPStrategy", init_args=Namespace())
    with pytest.raises(ValueError, match=r"strategy=ddp with accelerator=cuda needs 2 CUDA GPU\(s\) \(devices=\[0, 1"):
        check_trainer_config(Namespace(accelerator="cuda", devices=[0, 1], strategy=strategy), cuda_devices=0)
    check_trainer_config(
        Namespace(accelerator="auto", devices="auto", strategy="auto", check_val_every_n_epoch=None), cuda_devices=0
    )


# -- end to end through kdlight.cli.main --------------------------------------------------------


def error_line(capsys, *args: str, status: int = 2) -> str:
    """Run ``kdlight *args``; the single stderr line, checked for the exit status and the hint."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == status
    err = capsys.readouterr().err
    assert "usage:" not in err and "Given value" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("kdlight: error: ")]
    assert line.endswith("  (set KDLIGHT_TRACEBACK=1 for the full text)")
    return line.removeprefix("kdlight: error: ").removesuffix("  (set KDLIGHT_TRACEBACK=1 for the full text)")


def test_cli_misspelled_objective_class(capsys):
    line = error_line(
        capsys,
        "fit",
        "-c",
        str(DIGITS / "kd.yaml"),
        "--model.init_args.objective.class_path=kdlight.objectives.KDD",
        "--trainer.fast_dev_run=true",
    )
    assert line.startswith(
        "model.init_args.objective: unknown class kdlight.objectives.KDD; "
        "did you mean kdlight.objectives.KD? (kdlight.objectives has: "
    )


def test_cli_misspelled_argument_and_wrong_type(capsys):
    kd = str(DIGITS / "kd.yaml")
    line = error_line(capsys, "fit", "-c", kd, "--model.init_args.objective.init_args.temprature=2")
    assert "did you mean 'temperature'?" in line
    line = error_line(capsys, "fit", "-c", kd, "--model.init_args.objective.init_args.temperature=abc")
    assert line == "model.init_args.objective.init_args.temperature: expected float or Schedule, got 'abc'"


def test_cli_mistakes_inside_a_yaml_file(capsys, tmp_path):
    def config(text: str) -> str:
        path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(textwrap.dedent(text))
        return str(path)

    kd = str(DIGITS / "kd.yaml")
    line = error_line(
        capsys,
        "fit",
        "-c",
        kd,
        "-c",
        config("""
        model:
          init_args:
            objective: {class_path: kdlight.objectives.KDD}
    """),
    )
    assert "did you mean kdlight.objectives.KD?" in line
    line = error_line(
        capsys,
        "fit",
        "-c",
        kd,
        "-c",
        config("""
        model:
          init_args:
            objective: {init_args: {temprature: 2.0}}
    """),
    )
    assert line.startswith("model.init_args.objective.init_args.temprature: ") and "'temperature'" in line
    line = error_line(
        capsys,
        "fit",
        "-c",
        kd,
        "-c",
        config("""
        model:
          init_args:
            student: {init_args: {hidden: abc}}
    """),
    )
    assert line == "model.init_args.student.init_args.hidden: expected list, got 'abc'"
    line = error_line(capsys, "fit", "-c", kd, "-c", config("modle: {class_path: kdlight.ClassifierModule}\n"))
    assert line.startswith("unknown key 'modle.class_path'; did you mean 'model'?")
    line = error_line(capsys, "fit", "-c", kd, "-c", config("trainer: {max_epoch: 3}\n"))
    assert line == "trainer.max_epoch is not a Trainer argument; did you mean trainer.max_epochs?"


def test_cli_missing_file_module_and_wrong_kind_of_class(capsys):
    line = error_line(capsys, "fit", "-c", str(DIGITS / "kdd.yaml"))
    assert line.endswith("kdd.yaml does not exist; did you mean " + str(DIGITS / "kd.yaml") + "?")
    kd = str(DIGITS / "kd.yaml")
    line = error_line(capsys, "fit", "-c", kd, "--model.init_args.student.class_path=my_package.Net")
    assert line.startswith("model.init_args.student: cannot import my_package.Net: no module named 'my_package'")
    line = error_line(capsys, "fit", "-c", kd, "--model.init_args.objective.class_path=kdlight.models.MLP")
    assert line.startswith("model.init_args.objective: kdlight.models.MLP is not a subclass of Objective")
    line = error_line(capsys, "fit", "-c", kd, "--trainer.max_epohcs=3")
    assert line == "unknown option --trainer.max_epohcs; did you mean --trainer.max_epochs?"


def test_cli_lightning_misconfiguration_is_one_line_with_status_1(capsys):
    line = error_line(
        capsys,
        "fit",
        "-c",
        str(DIGITS / "teacher.yaml"),
        "--trainer.max_epochs=-3",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        status=1,
    )
    assert line == "`max_epochs` must be a non-negative integer or -1. You passed in -3."


def test_cli_error_ending_in_a_quoted_value_keeps_its_quote(capsys):
    line = error_line(
        capsys,
        "fit",
        "-c",
        str(DIGITS / "teacher.yaml"),
        "--model.init_args.lr_scheduler_interval=hourly",
        "--trainer.logger=false",
        "--trainer.callbacks=[]",
        status=1,
    )
    assert line == "lr_scheduler_interval must be 'epoch' or 'step', got 'hourly'"


def test_cli_traceback_switch_keeps_the_full_text(monkeypatch):
    monkeypatch.setenv("KDLIGHT_TRACEBACK", "1")
    with pytest.raises(ArgumentError) as info:
        main(["fit", "-c", str(DIGITS / "kd.yaml"), "--model.init_args.objective.class_path=kdlight.objectives.KDD"])
    assert "module 'kdlight.objectives' has no attribute 'KDD'" in str(info.value)
    assert "Given value: NestedArg(key='objective.class_path'" in str(info.value)


def test_cli_help_and_print_config_still_exit_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(DIGITS / "kd.yaml"), "--print_config"])
    assert info.value.code == 0 and "kdlight.objectives.KD" in capsys.readouterr().out


def test_the_cli_checks_the_trainer_before_building_anything(capsys):
    """check_trainer_config is wired into the CLI: check_val_every_n_epoch=0 is one line, before training."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(REPO / "configs" / "digits" / "teacher.yaml"), "--trainer.check_val_every_n_epoch=0"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kdlight: error: trainer.check_val_every_n_epoch must be an integer >= 1")
    assert not Path("runs").exists()  # nothing was written
