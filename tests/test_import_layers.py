"""The package's layers: no module imports a higher layer, and the light layers stay light."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "kdlight"
#: lowest first; a module may import its own layer and the ones below it
LAYERS: list[tuple[str, ...]] = [
    ("kdlight.core",),
    ("kdlight.functional",),
    (
        "kdlight.explain.attribution",
        "kdlight.explain.metrics",
        "kdlight.explain.faithfulness",
        "kdlight.explain.plots",
        "kdlight.explain.surrogate",
    ),
    ("kdlight.objectives",),
    ("kdlight.models",),
    ("kdlight.data",),
    ("kdlight.training",),
    ("kdlight.compression",),  # Lightning callbacks around the student (pruning, quantisation)
    ("kdlight.reporting",),
    ("kdlight.explain.callback",),
    ("kdlight.analysis",),
    ("kdlight.cli",),
    ("kdlight.sweeps",),
]


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def module_name(path) -> str:
    return ("kdlight." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def imported(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.module, node.lineno)] + [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def test_every_module_has_a_layer():
    unplaced = [
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if layer_of(module_name(p)) is None and module_name(p) not in ("kdlight", "kdlight.__main__", "kdlight.explain")
    ]
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"


def test_no_import_runs_up_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path))
        if own is None:
            continue
        for name, line in imported(ast.parse(path.read_text())):
            other = layer_of(name)
            if other is not None and other > own:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert upward == []


@pytest.mark.parametrize(
    "module",
    ["kdlight.objectives", "kdlight.functional", "kdlight.core.batch", "kdlight.explain", "kdlight.core.weights"],
)
def test_light_modules_pull_in_no_lightning_pandas_or_pil(module):
    code = (
        f"import sys, {module}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pandas', 'PIL', 'pytorch_lightning'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
