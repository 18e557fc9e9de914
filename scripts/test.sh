#!/usr/bin/env bash
# The test suite: installs what it needs, runs ruff, the default tests, then the slow ones.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
export WANDB_MODE=offline
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m ruff check kdlight tests scripts            # lint (configured in pyproject.toml)
python -m ruff format --check kdlight tests scripts   # formatting
python -m pytest -q "$@"
python -m pytest -q -m slow "$@" || { rc=$?; [ "$rc" -eq 5 ] && echo "no slow tests selected"; [ "$rc" -eq 5 ]; }
