#!/usr/bin/env bash
# Sets up .venv if needed, then runs the end-to-end demo on the 30-case Hippocampus subset shipped in
# demo/ (no other data, no downloads), about 6 minutes on 2 CPU cores. Outputs go to demo_output/ (override:
# DEMO_DIR=...): the nnU-Net trees, the predictions and demo_overlay.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
exec .venv/bin/python -m nnunetv2_hidiff.cli.demo --work-dir "${DEMO_DIR:-demo_output}" "$@"
