"""Reading jsonargparse's nested error message: its lines with their depth, and the config key,
class, expected types and given value a line belongs to (used by :mod:`kdlight.cli.errors`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

PARSER_KEY = re.compile(r'Parser key "([^"]+)":.*')
CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':")
NOISE = re.compile(
    r"Does not validate against any of the Union subtypes|Errors:|Subtypes: .*|Given value.*"
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid"
)
BUILTIN_TYPES = {"int", "float", "str", "bool", "list", "dict", "tuple", "NoneType", "Path"}


@dataclass(frozen=True)
class Line:
    """One line of a jsonargparse message: its depth (column of its text or ``- `` bullet) and text."""

    indent: int
    text: str


# -- reading the nested message ---------------------------------------------------------------


def parse_lines(message: str) -> list[Line]:
    """The non-blank lines of ``message``, bullets (``- ``) removed from the text."""
    lines = []
    for raw in message.splitlines():
        text = raw.strip()
        if text:
            lines.append(Line(len(raw) - len(raw.lstrip()), text[2:] if text.startswith("- ") else text))
    return lines


def ancestors(lines: list[Line], index: int) -> list[int]:
    """Indices of the lines enclosing ``lines[index]``, outermost first."""
    found, indent = [], lines[index].indent
    for i in range(index - 1, -1, -1):
        if lines[i].indent < indent:
            found.append(i)
            indent = lines[i].indent
    return found[::-1]


def key_path(lines: list[Line], index: int) -> str:
    """The config key of ``lines[index]``, e.g. ``model.init_args.objective.init_args.temperature``."""
    parts, in_class = [], False
    for i in [*ancestors(lines, index), index]:
        if key := PARSER_KEY.fullmatch(lines[i].text):
            parts.append(("init_args." if in_class else "") + key[1])
            in_class = False
        elif CLASS_PATH.fullmatch(lines[i].text):
            in_class = True
    return ".".join(parts)


def enclosing_class(lines: list[Line], index: int) -> str | None:
    """The ``class_path`` whose arguments ``lines[index]`` is about, if any."""
    for i in reversed(ancestors(lines, index)):
        if PARSER_KEY.fullmatch(lines[i].text):
            return None
        if match := CLASS_PATH.fullmatch(lines[i].text):
            return match[1]
    return None


def _key_block_start(lines: list[Line], index: int) -> int | None:
    """Index of the nearest ``Parser key`` line enclosing ``lines[index]``, if any."""
    return next((i for i in reversed(ancestors(lines, index)) if PARSER_KEY.fullmatch(lines[i].text)), None)


def _key_block(lines: list[Line], index: int) -> list[Line]:
    """The lines under the ``Parser key`` enclosing ``lines[index]`` (all lines when there is none)."""
    start = _key_block_start(lines, index)
    if start is None:
        return lines
    end = next((j for j in range(start + 1, len(lines)) if lines[j].indent <= lines[start].indent), len(lines))
    return lines[start + 1 : end]


def expected_types(lines: list[Line], index: int) -> list[str]:
    """The types listed by the ``Subtypes:`` line of the key ``lines[index]`` belongs to."""
    start = _key_block_start(lines, index)
    for i in range(index - 1, -1 if start is None else start, -1):
        if lines[i].indent < lines[index].indent and lines[i].text.startswith("Subtypes: ["):
            return split_top_level(lines[i].text[len("Subtypes: [") : -1])
    return []


def expected_base(lines: list[Line], index: int) -> str | None:
    """Short name of the class a ``class_path`` at ``lines[index]`` must derive from, if stated."""
    for type_text in expected_types(lines, index):
        for dotted in re.findall(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", type_text):
            if not dotted.startswith(("typing.", "collections.", "builtins.")):
                return dotted.rsplit(".", 1)[-1]
    return None


def given_value(lines: list[Line], index: int) -> str | None:
    """The value jsonargparse rejected for the key of ``lines[index]``, as the user wrote it."""
    values = [line for line in _key_block(lines, index) if line.text.startswith("Given value: ")]
    if not values:
        return None
    value = min(values, key=lambda line: line.indent).text[len("Given value: ") :]
    nested = re.fullmatch(r"NestedArg\(key='([^']*)', val=(.*)\)", value)
    return nested[1] + "=" + nested[2].strip("'") if nested else value


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets: ``"A[1, 2], B"`` -> ``["A[1, 2]", "B"]``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def deepest(lines: list[Line], pattern: re.Pattern[str]) -> tuple[int, re.Match[str]] | None:
    """The most indented line matching ``pattern`` (the first of equals) and its match."""
    found = [(i, m) for i, line in enumerate(lines) if (m := pattern.search(line.text))]
    return max(found, key=lambda item: (lines[item[0]].indent, -item[0])) if found else None
