#!/usr/bin/env bash
# The main job on the bundled digits data: train a teacher, a scratch student and a distilled
# student (with explanation agreement), then print the results table. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
export WANDB_MODE="${WANDB_MODE:-offline}"
python scripts/demo.py "$@"
