#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
exec .venv/bin/python -m pytest "$@"
