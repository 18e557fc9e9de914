"""Every notebook under notebooks/ runs top to bottom with small parameters; notebooks carry no outputs.

Parameters are injected papermill-style: a cell with the test's values is inserted right after the
cell tagged ``parameters``. Notebooks run in a temporary working directory, in one Jupyter kernel
each (nbclient), with W&B offline. ``explanation_agreement.ipynb`` analyses the distillation run
``quickstart.ipynb`` wrote; ``sweep.ipynb`` searches (and seeds) KD on the teacher it trained.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; the whole file takes well under a minute on an idle 2-core machine

#: small settings per notebook (a new notebook needs an entry here); "{workdir}" is the test's folder
PARAMETERS: dict[str, dict] = {
    "quickstart.ipynb": {
        "TEACHER_EPOCHS": 1,
        "STUDENT_EPOCHS": 2,
        "LIMIT_TRAIN_BATCHES": 4,
        "NUM_PROBES": 16,
        "OUT_DIR": "{workdir}/runs/quickstart",
    },
    "explanation_agreement.ipynb": {
        "RUN_DIR": "{workdir}/runs/quickstart/kd",
        "SAMPLE_INDICES": [0, 1],
        "METHOD": "saliency",
    },
    "sweep.ipynb": {
        "STUDY_DIR": "{workdir}/runs/search/sweep",
        "TRIALS": 2,
        "EPOCHS": 1,
        "LIMIT_TRAIN_BATCHES": 2,
        "SEEDS_OF_BEST": 2,
        "TEACHER_CHECKPOINT": "{workdir}/runs/quickstart/teacher/best.ckpt",
    },
    "shortcut.ipynb": {
        "TEACHER_EPOCHS": 1,
        "STUDENT_EPOCHS": 1,
        "LIMIT_TRAIN_BATCHES": 4,
        "EVAL_SAMPLES": 120,
        "NUM_EXAMPLES": 2,
        "OUT_DIR": "{workdir}/runs/shortcut",
    },
    "language_models.ipynb": {
        "TEACHER_EPOCHS": 1,
        "STUDENT_EPOCHS": 1,
        "LIMIT_TRAIN_BATCHES": 2,
        "MAX_FILES": 4,
        "NUM_PROBES": 2,
        "OBJECTIVES": ["fkl", "rkl"],
        "OUT_DIR": "{workdir}/runs/language_models",
    },
}
#: notebooks whose outputs a notebook needs (run first, in the same working directory)
NEEDS = {"explanation_agreement.ipynb": ["quickstart.ipynb"], "sweep.ipynb": ["quickstart.ipynb"]}
#: one out-of-range value per notebook: the validation cell must raise ValueError
BAD_VALUES = {
    "quickstart.ipynb": {"TEACHER_EPOCHS": 0},
    "explanation_agreement.ipynb": {"SAMPLE_INDICES": [-1]},
    "sweep.ipynb": {"TRIALS": 0},
    "shortcut.ipynb": {"STUDENT_EPOCHS": 0},
    "language_models.ipynb": {"OBJECTIVES": ["fkl", "kd"]},
}

_strip = importlib.util.spec_from_file_location("strip_notebooks", REPO / "scripts" / "strip_notebooks.py")
strip_notebooks = importlib.util.module_from_spec(_strip)
_strip.loader.exec_module(strip_notebooks)


def _tagged(nb, tag: str) -> int:
    found = [i for i, cell in enumerate(nb.cells) if tag in cell.metadata.get("tags", [])]
    assert len(found) == 1, f"expected exactly one cell tagged {tag!r}, found {len(found)}"
    return found[0]


def _with_parameters(path: Path, values: dict, workdir: Path, upto: str | None = None):
    nb = nbformat.read(path, as_version=4)
    where = _tagged(nb, "parameters")
    values = {k: v.format(workdir=workdir) if isinstance(v, str) else v for k, v in values.items()}
    cell = nbformat.v4.new_code_cell("\n".join(f"{name} = {value!r}" for name, value in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(where + 1, cell)
    if upto is not None:
        nb.cells = nb.cells[: _tagged(nb, upto) + 1]
    return nb


def _execute(nb, cwd: Path) -> None:
    # The kernel: W&B offline, its own inline matplotlib backend, and one torch thread. The models
    # are tiny, and on a busy shared 2-core machine two OpenMP threads made a forward pass of the
    # digits CNN ~40x slower (0.24 s instead of 6 ms) than one.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(
        WANDB_MODE="offline", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore::DeprecationWarning"
    )
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def run_notebook(workdir):
    """Execute a notebook (once per module) with its small parameters, after the ones it needs."""
    done: dict[str, object] = {}

    def run(name: str):
        if name not in done:
            for needed in NEEDS.get(name, []):
                run(needed)
            assert name in PARAMETERS, f"add small parameters for {name} to PARAMETERS in {__file__}"
            nb = _with_parameters(REPO / "notebooks" / name, PARAMETERS[name], workdir)
            _execute(nb, workdir)
            done[name] = nb
        return done[name]

    return run


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "explanation_agreement.ipynb", "sweep.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, run_notebook, workdir):
    nb = run_notebook(path.name)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_quickstart_outputs(run_notebook, workdir):
    nb = run_notebook("quickstart.ipynb")
    text = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "| teacher (CNN) |" in text and "| student distilled, KD (MLP) |" in text and "untrained student" in text
    assert (workdir / "runs" / "quickstart" / "kd" / "best.ckpt").is_file()
    assert (workdir / "runs" / "quickstart" / "kd" / "latest" / "metrics.csv").is_file()


def test_explanation_agreement_shows_figures(run_notebook):
    nb = run_notebook("explanation_agreement.ipynb")
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # curves, the logged heatmaps, the recomputed heatmaps


def test_sweep_shows_trials_front_and_seeds(run_notebook, workdir):
    nb = run_notebook("sweep.ipynb")
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    trials = PARAMETERS["sweep.ipynb"]["TRIALS"]
    assert f"{trials} trial(s), " in text and "on the Pareto front" in text
    study = workdir / "runs" / "search" / "sweep"
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert tables and tables[0].count("COMPLETE") == trials  # the trials table: one row per trial
    assert any("image/png" in o.get("data", {}) for o in outputs) and (study / "pareto.png").is_file()
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Seeds of the Pareto-front trials" in markdown and "2 seed(s) each" in markdown
    assert len(list((study / "seeds").glob("trial*/seed1/latest"))) >= 1


def test_shortcut_shows_both_benchmarks(run_notebook, workdir):
    nb = run_notebook("shortcut.ipynb")
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    tables = [t for t in html if "follows cue" in t]  # one shortcut table per benchmark
    assert len(tables) == 2 and all("mass on cue" in t and "mass on evidence" in t for t in tables)
    for row in ("teacher (no shortcut)", "CE only", "KD", "KD + explanation matching", "untrained student"):
        assert all(row in t for t in tables)
    assert "KD + attribution distillation" in tables[1] and "uniform map" in tables[1]
    texts = [t for t in html if 'class="kd-text"' in t]  # the token figures: one per text student
    assert len(texts) == 4 and all("teacher vs " in t for t in texts)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # digits heatmaps, the text PNG
    for folder, runs in (("shortcut", 4), ("text_shortcut", 5)):
        assert len(list((workdir / "runs" / "shortcut" / folder).glob("*/best.ckpt"))) == runs


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_out_of_range_parameters_raise_value_error(name, tmp_path):
    nb = _with_parameters(
        REPO / "notebooks" / name, {**PARAMETERS[name], **BAD_VALUES[name]}, tmp_path, upto="validate-parameters"
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="ValueError"):
        _execute(nb, tmp_path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: run python scripts/strip_notebooks.py"
            )
    assert not strip_notebooks.needs_stripping(path), f"{path.name}: run python scripts/strip_notebooks.py"
