#!/usr/bin/env bash
# Create (or reuse) ./.venv with kdlight and everything it needs. Sourced by demo.sh and test.sh.
# torch is pinned to the CPU build first so that no multi-GB CUDA wheel is pulled in; set
# KDLIGHT_TORCH to install another torch (e.g. "torch" on a GPU machine).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KDLIGHT_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.kdlight-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet "${KDLIGHT_TORCH:-torch==2.13.0}"
  "$py" -m pip install --quiet -e "$repo[test]"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
export MPLBACKEND=Agg
