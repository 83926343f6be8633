#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu machine (also works elsewhere without apt):
#   1. the Fashion-MNIST IDX files from the Debian package dataset-fashion-mnist (when apt exists),
#   2. a virtualenv in .venv,
#   3. PyTorch 2.13.0 (CPU build; installed first so that pip does not pull a CUDA build),
#   4. torchslim itself, editable, with its dev extras (pytest, hypothesis, matplotlib).
# `bash setup.sh --zoo` also makes .venv-zoo, the environment of the real-architecture sweep:
# timm and torchvision beside torch 2.14.1 (PyPI's torchvision does not import beside the CPU
# torch 2.13.0 wheel; 2.14.1 + torchvision 0.29.1 is a matching pair, a ~5.5 GB CUDA build that
# runs on the CPU). The default set-up stays light; the tests run the sweep's CI subset there.
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
if [ "${1:-}" = "--zoo" ]; then
  echo "== .venv-zoo: torch 2.14.1 + torchvision 0.29.1 + timm (real-architecture sweep)"
  [ -x .venv-zoo/bin/python ] || "$PY" -m venv .venv-zoo
  .venv-zoo/bin/python -c "import timm, torchvision" 2>/dev/null ||
    .venv-zoo/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" "timm==1.0.31"
  .venv-zoo/bin/pip install -q -e ".[dev]"
fi
echo "== done: .venv/bin/torchslim run recipes/quickstart.yaml"
