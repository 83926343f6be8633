"""Data-parallel training: two CPU processes under torchrun end with identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from torchslim.export import read_slim


def test_two_process_ddp_identical_weights(fashion_dir, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29581",
        str(worker),
        str(fashion_dir),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, _ = read_slim(tmp_path / "rank0.slim")
    b, _ = read_slim(tmp_path / "rank1.slim")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) or "running" in k or "num_batches" in k, k
