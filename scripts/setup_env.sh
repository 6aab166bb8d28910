#!/usr/bin/env bash
# Creates .venv (once) and installs nnunetv2_hidiff with its test extra into it. Idempotent: a second
# run only re-installs when pyproject.toml changed. Override the interpreter with PYTHON=..., the
# torch requirement with TORCH_SPEC=... (default: torch 2.14.1 with its torchvision 0.29.1; nnU-Net
# imports timm, which needs a torchvision built for the installed torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
stamp="$VENV/.nnunetv2_hidiff_installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV with $($PYTHON --version 2>&1)"
  if ! "$PYTHON" -m venv "$VENV"; then
    echo "[setup] error: '$PYTHON -m venv' failed. On Debian/Ubuntu install the venv module first" >&2
    echo "        (apt-get install python3-venv), then run this command again." >&2
    exit 1
  fi
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  echo "[setup] $VENV is up to date (delete $stamp to force a re-install)"
  exit 0
fi
"$VENV/bin/python" -m pip install --upgrade pip >/dev/null
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086  # TORCH_SPEC holds several requirements
  "$VENV/bin/python" -m pip install $TORCH_SPEC
fi
echo "[setup] installing nnunetv2_hidiff (editable) with test extras"
"$VENV/bin/python" -m pip install -e ".[test]"
touch "$stamp"
