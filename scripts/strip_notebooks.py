"""Strip outputs, execution counts and volatile metadata from notebooks before committing them.

    python scripts/strip_notebooks.py                 # strip every notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check         # exit 1 and list notebooks that hold outputs
    python scripts/strip_notebooks.py path/to/x.ipynb # only these

Cell tags (``parameters``, ``validate-parameters``) and cell ids are kept; notebook metadata is
reduced to the kernelspec and the language name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
KEEP_CELL_METADATA = ("tags",)


def stripped(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` without outputs, execution counts or volatile metadata."""
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata = {k: v for k, v in nb.metadata.items() if k == "kernelspec"}
    nb.metadata["language_info"] = {"name": language}
    return nb


def needs_stripping(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(stripped(nb)) != nbformat.writes(nb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that need stripping")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO / "notebooks").glob("*.ipynb"))
    dirty = [p for p in paths if needs_stripping(p)]
    if args.check:
        for path in dirty:
            print(f"{path}: has outputs or volatile metadata; run python scripts/strip_notebooks.py", file=sys.stderr)
        return 1 if dirty else 0
    for path in dirty:
        nbformat.write(stripped(nbformat.read(path, as_version=4)), path)
        print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
