#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine (also works elsewhere without apt):
#   1. the Fashion-MNIST IDX files from the Debian package dataset-fashion-mnist (when apt exists),
#   2. a virtualenv in .venv,
#   3. PyTorch 2.13.0 (CPU build; installed first so that pip does not pull a CUDA build),
#   4. torchslim itself, editable, with its dev extras (pytest, hypothesis, matplotlib).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
FASHION=/usr/share/datasets/fashion-mnist

if [ ! -e "$FASHION/train-images-idx3-ubyte.gz" ] && [ ! -e "$FASHION/train-images-idx3-ubyte" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
    echo "== installing dataset-fashion-mnist (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
  else
    echo "== apt-get not found: put the Fashion-MNIST IDX files in a folder and pass --data-dir DIR" \
         "(or set TORCHSLIM_DATA_DIR=DIR)"
  fi
fi

echo "== virtualenv .venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "== torch 2.13.0 (CPU)"
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
echo "== torchslim[dev]"
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/torchslim list models >/dev/null
echo "== done: .venv/bin/torchslim run recipes/quickstart.yaml"
