"""The real-architecture sweep's CI subset (tests/foreign.py): every registered method on
``foreign.CI_ARCHS`` (timm / torchvision definitions, random init). Every cell must work, skip
the layers it cannot handle with one warning, or refuse with a ValueError naming the reason:
never crash, never give silently wrong outputs, never change nothing silently.

timm needs torchvision, which does not import beside the CPU torch 2.13.0 wheel of the default
environment, so when this interpreter lacks them the subset runs in ``.venv-zoo`` (made by
``bash setup.sh --zoo``, as CI does) in one subprocess; without either the tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torchslim as ts
from foreign import CI_ARCHS, available

ROOT = Path(__file__).resolve().parent.parent
ZOO_PYTHON = ROOT / ".venv-zoo" / "bin" / "python"
METHODS = sorted(ts.list_methods())


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> dict:
    if available():
        python = sys.executable
    elif ZOO_PYTHON.exists():
        python = str(ZOO_PYTHON)
    else:
        pytest.skip("timm / torchvision are not importable and .venv-zoo does not exist: bash setup.sh --zoo")
    out = tmp_path_factory.mktemp("foreign") / "cells"
    env = {**os.environ, "ORT_LOGGING_LEVEL": "3"}
    cmd = [python, str(ROOT / "benchmarks" / "foreign_zoo.py"), "--jobs", "2", "--out", str(out)]
    proc = subprocess.run([*cmd, "--archs", *CI_ARCHS], capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    return {(c["method"], c["arch"]): c for c in data["cells"]}


@pytest.mark.parametrize("arch", CI_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_method_on_real_architecture(cells, method, arch):
    """Catches every failure class the sweep found: crashes (reload of resized timm norm layers,
    train-only branches, token-shaped inputs), silently wrong outputs (converted != prepared,
    ONNX Runtime != torch, non-finite) and silent no-ops."""
    cell = cells[method, arch]
    assert cell["outcome"] in ("ok", "refused", "warned"), cell["summary"]
    if cell["outcome"] in ("refused", "warned"):
        assert len(cell["detail"]) > 20, "a refusal must say why"
