"""One-line explanations of config mistakes, with "did you mean" suggestions.

jsonargparse reports a config it rejects as a nested message with one branch per type a value
could have (``model`` may be a LightningModule or None, ``temperature`` a float or a Schedule...).
:func:`explain` finds the branch that matters and says it in one line. Each ``*_error`` function
below reads one kind of mistake from the parsed message and returns None for any other kind.

:mod:`kdlight.cli.message` reads the nested message; :mod:`kdlight.cli.trainer_checks` catches
trainer settings that Lightning reports late or obscurely.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable

from kdlight.cli.message import (
    BUILTIN_TYPES,
    CLASS_PATH,
    NOISE,
    PARSER_KEY,
    Line,
    deepest,
    enclosing_class,
    expected_base,
    expected_types,
    given_value,
    key_path,
    parse_lines,
    split_top_level,
)

#: packages searched for the classes a ``class_path`` may name
PACKAGES = (
    "kdlight",
    "kdlight.models",
    "kdlight.objectives",
    "kdlight.data",
    "kdlight.explain",
    "kdlight.core.schedules",
)
#: keys of a subcommand's config besides trainer/model/data arguments
TOP_LEVEL_KEYS = (
    "config",
    "print_config",
    "seed_everything",
    "trainer",
    "model",
    "data",
    "ckpt_path",
    "weights_only",
    "run_dir",
    "overwrite",
)
MAX_LISTED = 12  # names listed after a suggestion

# -- suggestions --------------------------------------------------------------------------------


def suggest(word: str, candidates: Iterable[str], key: Callable[[str], str] = lambda c: c) -> str | None:
    """The candidate closest to ``word`` (case-insensitive, compared on ``key(candidate)``), if any is close."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(key(candidate).lower(), candidate)
    match = difflib.get_close_matches(word.lower(), list(by_key), n=1)
    return by_key[match[0]] if match else None


def did_you_mean(word: str, candidates: Iterable[str], key: Callable[[str], str] = lambda c: c) -> str:
    """``"; did you mean X?"`` or ``""``."""
    match = suggest(word, candidates, key)
    return f"; did you mean {match}?" if match else ""


def listing(names: list[str], label: str) -> str:
    """``" (label: a, b, ...)"`` with at most :data:`MAX_LISTED` names, or ``""``."""
    if not names:
        return ""
    more = ", ..." if len(names) > MAX_LISTED else ""
    return f" ({label}: {', '.join(names[:MAX_LISTED])}{more})"


def class_listing(dotted: list[str], label: str) -> str:
    """``" (label: pkg.mod: A, B; other.mod: C)"``: dotted class names grouped by module."""
    if not dotted:
        return ""
    groups: dict[str, list[str]] = {}
    for name in dotted[:MAX_LISTED]:
        module, _, short = name.rpartition(".")
        groups.setdefault(module, []).append(short)
    more = ", ..." if len(dotted) > MAX_LISTED else ""
    return f" ({label}: {'; '.join(f'{m}: ' + ', '.join(n) for m, n in groups.items())}{more})"


def _short(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _derives(cls: type, base: str | None) -> bool:
    return base is None or any(c.__name__ == base for c in cls.__mro__[1:])


def exported_classes(module_name: str, base: str | None = None) -> list[str]:
    """Dotted names of the concrete classes ``module_name`` exports (``__all__``), deriving from ``base``."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a broken or missing module has no classes to offer
        return []
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    found = []
    for name in names:
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and not inspect.isabstract(obj) and _derives(obj, base):
            found.append(f"{module_name}.{name}")
    return found


def known_subclasses(base: str | None) -> list[str]:
    """Dotted names of the classes in :data:`PACKAGES` deriving from ``base`` (a class name)."""
    return [name for package in PACKAGES for name in exported_classes(package, base)] if base else []


def init_arguments(class_path: str) -> list[str]:
    """Argument names of ``class_path``'s constructor, following ``**kwargs`` to its bases."""
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - nothing to suggest for a class that does not import
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def trainer_arguments() -> list[str]:
    """The arguments of ``lightning.pytorch.Trainer``."""
    return init_arguments("lightning.pytorch.Trainer")


def sibling_modules(module: str) -> list[str]:
    """Importable modules next to ``module``: its parent's submodules, or top-level modules."""
    parent, _, _ = module.rpartition(".")
    if not parent:  # editable installs do not show in iter_modules: add the imported packages
        return sorted({m.name for m in pkgutil.iter_modules()} | {n.split(".")[0] for n in sys.modules})
    try:
        path = importlib.import_module(parent).__path__
    except Exception:  # noqa: BLE001 - a missing or plain-module parent has no submodules
        return []
    return [f"{parent}.{m.name}" for m in pkgutil.iter_modules(path)]


def resolves(class_path: str) -> bool:
    """Whether ``class_path`` names an attribute of a module; imports only below packages already imported."""
    module, _, name = class_path.rpartition(".")
    if not module or module.split(".")[0] not in sys.modules:
        return False
    try:
        return hasattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - not importable: not a suggestion
        return False


def suggest_module(module: str, rest: str) -> str | None:
    """A module close to the missing ``module`` in which ``rest`` (``.Class``) resolves."""
    by_key = {c.lower(): c for c in sibling_modules(module)}
    close = difflib.get_close_matches(module.lower(), list(by_key), n=5)
    return next((by_key[c] for c in close if resolves(by_key[c] + rest)), None)


def _shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


# -- one function per kind of mistake -------------------------------------------------------------


def missing_file_error(lines: list[Line]) -> str | None:
    """A ``-c`` config (or other file argument) that does not exist; suggests a close file name."""
    found = deepest(lines, re.compile(r"File does not exist: '([^']+)'"))
    if not found:
        return None
    index, match = found
    path, key = match[1], key_path(lines, index) or "config"
    what = "config file" if key == "config" else f"{key}: file"
    directory, name = os.path.split(path)
    if directory and not os.path.isdir(directory):
        return f"{what} {_shown_path(path)} does not exist (no directory {_shown_path(directory)})"
    names = sorted(os.listdir(directory or "."))
    hint = suggest(os.path.splitext(name)[0], names, key=lambda n: os.path.splitext(n)[0])
    return f"{what} {_shown_path(path)} does not exist" + (
        f"; did you mean {_shown_path(os.path.join(directory, hint))}?" if hint else ""
    )


def yaml_syntax_error(lines: list[Line]) -> str | None:
    """A config file that is not valid YAML."""
    if not lines or not lines[0].text.startswith("Problems parsing config:"):
        return None
    text = " ".join(line.text for line in lines)[len("Problems parsing config:") :]
    where = re.findall(r'in "<unicode string>", (line \d+, column \d+)', text)
    problem = re.sub(r'\s*in "<unicode string>", line \d+, column \d+', "", text).strip()
    return f"a config file is not valid YAML: {problem}" + (f" (at {where[-1]})" if where else "")


def not_a_mapping_error(lines: list[Line]) -> str | None:
    """A config file whose top level is a list or a scalar."""
    match = lines and re.fullmatch(r"Unexpected config: (.*)", lines[0].text)
    if not match:
        return None
    return f"a config file must be a mapping of keys (trainer:, model:, data:, ...), got: {match[1]}"


def missing_argument_error(lines: list[Line]) -> str | None:
    """A required key (``model``) that no config or flag gave."""
    match = lines and re.fullmatch(r"the following arguments are required: (.+)", lines[0].text)
    if not match:
        return None
    keys = [k.strip().split(".", 1)[-1] for k in match[1].split(",")]
    flags = " ".join(f"--{k}" for k in keys)
    return f"no {', '.join(keys)} given: pass a config with -c (e.g. configs/digits/kd.yaml) or set {flags}"


def invalid_choice_error(lines: list[Line]) -> str | None:
    """An unknown subcommand (``kdlight fti``) or other choice."""
    match = lines and re.fullmatch(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.+)\)", lines[0].text)
    if not match:
        return None
    choices = [c.strip(" '") for c in match[3].split(",")]
    hint = suggest(match[2], choices)
    return (
        f"unknown {match[1]} '{match[2]}'"
        + (f"; did you mean '{hint}'?" if hint else "")
        + f" (choose from {', '.join(choices)})"
    )


def unrecognized_arguments_error(lines: list[Line]) -> str | None:
    """Command-line flags that name no key: ``--modle.x=1``, ``--trainer.max_epohcs=3``."""
    match = lines and re.fullmatch(r"unrecognized arguments: (.+)", lines[0].text)
    if not match:
        return None
    return "; ".join(_explain_flag(token) for token in match[1].split())


def _explain_flag(token: str) -> str:
    """One unrecognized command-line token, with the closest valid flag."""
    if not token.startswith("--"):
        return f"unexpected argument '{token}'"
    key = token[2:].split("=", 1)[0]
    head, _, rest = key.partition(".")
    if head == "trainer" and rest:
        hint = suggest(rest.split(".")[0], trainer_arguments())
        return f"unknown option --{key}" + (f"; did you mean --trainer.{hint}?" if hint else "")
    hint = suggest(head, TOP_LEVEL_KEYS)
    return f"unknown option --{key}" + (f"; did you mean --{hint}{'.' + rest if rest else ''}?" if hint else "")


def unknown_key_error(lines: list[Line]) -> str | None:
    """A key no group accepts: ``modle:`` at the top of a config, ``trainer: {max_epoch: 3}``."""
    text = lines[0].text if len(lines) == 1 else ""
    if group := re.fullmatch(r"Group '([^']+)' does not accept option '([^']+)'", text):
        return unknown_group_option(group[1], group[2])
    option = re.fullmatch(r"Option '([^']+)' is not accepted|Subcommand '\w+' does not accept option '([^']+)'", text)
    if not option:
        return None
    key = option[1] or option[2]
    head, _, rest = key.partition(".")
    if head == "trainer" and rest:
        return unknown_group_option(head, rest)
    hint = suggest(head, TOP_LEVEL_KEYS)
    return (
        f"unknown key '{key}'"
        + (f"; did you mean '{hint}'?" if hint else "")
        + listing(list(TOP_LEVEL_KEYS), "top-level keys")
    )


def unknown_group_option(group: str, option: str) -> str:
    """``trainer.max_epoch``: a key under a group (the trainer) that the group does not have."""
    hint = suggest(option.split(".")[0], trainer_arguments()) if group == "trainer" else None
    what = "a Trainer argument" if group == "trainer" else f"accepted by {group}"
    return f"{group}.{option} is not {what}" + (f"; did you mean {group}.{hint}?" if hint else "")


def unknown_init_arg_error(lines: list[Line]) -> str | None:
    """An argument the class does not take: ``KD`` with ``temprature``."""
    found = deepest(lines, re.compile(r"^Option '([^']+)' is not accepted$"))
    if not found or not (class_path := enclosing_class(lines, found[0])):
        return None
    index, match = found
    name = match[1].split(".")[0]
    accepted = init_arguments(class_path)
    hint = suggest(name, accepted)
    return (
        f"{key_path(lines, index)}.init_args.{match[1]}: {class_path} takes no argument '{name}'"
        + (f"; did you mean '{hint}'?" if hint else "")
        + listing(accepted, "it takes")
    )


def unknown_module_error(lines: list[Line]) -> str | None:
    """A ``class_path`` whose module does not import: ``my_package.Net``, ``kdlite.models.MLP``."""
    found = deepest(lines, re.compile(r"^No module named '([^']+)'$"))
    if not found or not (class_path := enclosing_class(lines, found[0]) or _failed_class(lines, found[0])):
        return None
    index, match = found
    missing, where = match[1], key_path(lines, index)
    if not (class_path == missing or class_path.startswith(missing + ".")):
        return f"{where}: importing {class_path} failed: No module named '{missing}' (a missing dependency?)"
    hint = suggest_module(missing, class_path[len(missing) :])
    fixed = f"; did you mean {hint + class_path[len(missing) :]}?" if hint else ""
    base = expected_base(lines, index)
    valid = class_listing(known_subclasses(base), f"{base} classes in kdlight") if not fixed else ""
    return (
        f"{where}: cannot import {class_path}: no module named '{missing}'{fixed}"
        f"{'' if fixed else ' (is it installed and on the Python path?)'}{valid}"
    )


def _failed_class(lines: list[Line], index: int) -> str | None:
    """The class path of the ``Problem with given class_path`` line right above ``lines[index]``."""
    match = index and CLASS_PATH.fullmatch(lines[index - 1].text)
    return match[1] if match else None


def unknown_class_error(lines: list[Line]) -> str | None:
    """A ``class_path`` naming no class: ``kdlight.objectives.KDD``, ``kdlight.objective.KD``, ``KDD``."""
    found = deepest(lines, re.compile(r"^module '([\w.]+)' has no attribute '(\w+)'$"))
    if found and (class_path := _failed_class(lines, found[0])):
        index, match = found
        module, missing = match[1], match[2]
        base = expected_base(lines, index)
        where = key_path(lines, index)
        if class_path != f"{module}.{missing}":  # a module in the middle of the path is wrong
            rest = class_path[len(module) + len(missing) + 1 :]
            hint = suggest_module(f"{module}.{missing}", rest)
            return f"{where}: unknown module {module}.{missing} in {class_path}" + (
                f"; did you mean {hint}{rest}?" if hint else ""
            )
        candidates = exported_classes(module, base) or exported_classes(module)
        return f"{where}: unknown class {class_path}{did_you_mean(missing, candidates, _short)}" + listing(
            [_short(c) for c in candidates], f"{module} has"
        )
    found = deepest(lines, re.compile(r"^Expected a dot import path string: (\S+)$"))
    if not found or not _only_classes(expected_types(lines, found[0])):
        return None
    index, match = found
    base = expected_base(lines, index)
    candidates = known_subclasses(base)
    return (
        f"{key_path(lines, index)}: unknown class {match[1]}{did_you_mean(match[1], candidates, _short)}"
        + class_listing(candidates, f"{base} classes")
    )


def _only_classes(types: list[str]) -> bool:
    """Whether every type but None is a (non-builtin) class, so a bare name must be a class name."""
    names = [re.sub(r"<class '([^']+)'>", r"\1", t) for t in types]
    names = [n for n in names if n != "NoneType"]
    return bool(names) and all("." in n and _short(n) not in BUILTIN_TYPES and "[" not in n for n in names)


def not_a_subclass_error(lines: list[Line]) -> str | None:
    """A ``class_path`` naming a class of the wrong kind: an MLP as the objective."""
    found = deepest(lines, re.compile(r"^Import path (?:(\S+) )?does not correspond to a subclass of (\w+)$"))
    if not found:
        return None
    index, match = found
    class_path = match[1] or given_value(lines, index) or "the class"
    base = match[2]
    return f"{key_path(lines, index)}: {class_path} is not a subclass of {base}" + class_listing(
        known_subclasses(base), f"{base} classes in kdlight"
    )


def nested_argument_error(lines: list[Line]) -> str | None:
    """``--trainer.logger.init_args.save_dir=x``: jsonargparse cannot reach the logger a config names."""
    found = deepest(lines, re.compile(r"^Expected an instantiatable class, but (\S+) is abstract$"))
    value = found and given_value(lines, found[0])
    if not value or "=" not in value:
        return None
    index, match = found
    key, (name, _, val) = key_path(lines, index), value.partition("=")
    flag = f"--{key}.init_args.{name}={val}"
    return (
        f"{key}: {flag} cannot reach the {_short(match[1])} of the config; "
        f"name its class first: --{key}=<class_path> {flag}"
    )


def wrong_type_error(lines: list[Line]) -> str | None:
    """A value of the wrong type: ``temperature: abc``, ``max_epochs: ten``, ``precision: 17``."""
    found = deepest(lines, re.compile(r"^Expected a (?!path but)(.+?)(?:\. Got value: (.*))?$"))
    if not found:
        return None
    index, match = found
    types = expected_types(lines, index) or [match[1]]
    value = match[2] if match[2] is not None else given_value(lines, index)
    got = f", got '{value}'" if value is not None else ""
    return f"{key_path(lines, index)}: expected {describe_types(types)}{got}"


def describe_types(types: list[str]) -> str:
    """``["<class 'float'>", "<class 'x.Schedule'>"]`` -> ``"float or Schedule"``; literals become a list."""
    literals: list[str] = []
    names: list[str] = []
    for text in types:
        if literal := re.fullmatch(r"typing\.Literal\[(.*)\]", text):
            literals += [v for v in split_top_level(literal[1]) if v not in literals]
            continue
        name = re.sub(r"<class '([^']+)'>", r"\1", text)
        name = re.sub(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])", "", name)
        names.append("null" if name == "NoneType" else name)
    if literals:
        names.insert(0, f"one of {', '.join(literals)}")
    return " or ".join(names)


RULES: tuple[Callable[[list[Line]], str | None], ...] = (
    missing_file_error,
    yaml_syntax_error,
    not_a_mapping_error,
    missing_argument_error,
    invalid_choice_error,
    unrecognized_arguments_error,
    unknown_key_error,
    unknown_init_arg_error,
    unknown_module_error,
    unknown_class_error,
    not_a_subclass_error,
    nested_argument_error,
    wrong_type_error,
)


def explain(message: str) -> str:
    """The one line that matters in a jsonargparse error ``message``."""
    lines = parse_lines(message)
    if not lines:
        return "invalid configuration"
    for rule in RULES:
        try:
            line = rule(lines)
        except Exception:  # noqa: BLE001 - a failed explanation must never hide the error itself
            line = None
        if line:
            return line
    return fallback(lines)


def fallback(lines: list[Line]) -> str:
    """The most indented informative line, with its key and the rejected value."""
    useful = [
        i
        for i, line in enumerate(lines)
        if not NOISE.fullmatch(line.text)
        and not PARSER_KEY.fullmatch(line.text)
        and not CLASS_PATH.fullmatch(line.text)
    ]
    if not useful:
        return lines[0].text
    index = max(useful, key=lambda i: (lines[i].indent, -i))
    where, value = key_path(lines, index), given_value(lines, index)
    return (f"{where}: " if where else "") + lines[index].text + (f" (given {value})" if value and where else "")
