"""Deploy benchmark: each headline artifact exported to ONNX and run by ONNX Runtime beside
torchslim's own (eager) runtime and ``torch.compile`` (inductor, CPU), at the same thread count.

Per artifact: ONNX file bytes, top-1 on the Fashion-MNIST test split in torchslim and in ONNX
Runtime, latency at batch 1 and 256 in each engine, and the CPU it ran on. Writes
benchmarks/results/deploy.{json,md}.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers busy while others are timed
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.export.onnx import export_onnx
from torchslim.measure import engines, write_report
from torchslim.measure.latency import cpu_info
from torchslim.runtime.timing import time_ms
from torchslim.train import evaluate

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
ART, CACHE = ROOT / "artifacts", ROOT / "cache" / "deploy"
ARTIFACTS = [
    "lenet5",
    "vgg_small",
    "resnet20",
    "vgg_small_filters",
    "vgg_small_tucker",
    "vgg_small_int8",
    "lenet5_deep_compression",
    "vgg_small_xnor",
]
COLUMNS = [
    "artifact",
    "onnx_bytes",
    "top1",
    "ort_top1",
    "eager_b1_ms",
    "ort_b1_ms",
    "compile_b1_ms",
    "eager_b256_ms",
    "ort_b256_ms",
    "compile_b256_ms",
    "ort_speedup_b256",
    "threads",
    "cpu",
]


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would steal CPU
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
    a = parse(ap)
    threads = torch.get_num_threads()
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in ARTIFACTS:
        model = ts.load(ART / f"{name}.slim")
        path = export_onnx(model, torch.zeros(1, 1, 28, 28), CACHE / f"{name}.onnx")
        sess = ort_session(path, threads)
        eager = engines.build("eager", model, (1, 28, 28))  # torchslim's runtime
        run_ort = lambda x, s=sess: s.run(None, {"input": x.numpy()})[0]
        correct = total = 0
        for x, y in test:
            correct += int((np.argmax(run_ort(x), 1) == y.numpy()).sum())
            total += len(y)
        row = {
            "artifact": f"{name}.slim",
            "onnx_bytes": os.path.getsize(path),
            "top1": round(evaluate(model, test)["top1"], 2),
            "ort_top1": round(100 * correct / total, 2),
            "threads": threads,
            "cpu": cpu_info(),
        }
        for b in (1, 256):
            x = torch.randn(b, 1, 28, 28)
            with torch.no_grad():
                row[f"eager_b{b}_ms"] = round(time_ms(eager, x, 1.0), 3)
                row[f"ort_b{b}_ms"] = round(time_ms(run_ort, x, 1.0), 3)
        row["ort_speedup_b256"] = round(row["eager_b256_ms"] / row["ort_b256_ms"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for name, row in zip(ARTIFACTS, rows):
        model = ts.load(ART / f"{name}.slim")
        if not a.no_compile:  # after all other timings: compile workers never run behind them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    compiled = torch.compile(model)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        compiled(torch.zeros(1, 1, 28, 28))
                    row["compile_seconds"] = round(time.perf_counter() - t0, 1)
                    for b in (1, 256):
                        with torch.no_grad():
                            row[f"compile_b{b}_ms"] = round(time_ms(compiled, torch.randn(b, 1, 28, 28), 1.0), 3)
                except Exception as e:  # noqa: BLE001 - report, do not stop the benchmark
                    row["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(json.dumps(row), flush=True)
    write_report(
        rows,
        ROOT / "results" / "deploy",
        COLUMNS,
        title="Deploy: torchslim eager vs ONNX Runtime vs torch.compile (Fashion-MNIST test split)",
    )


if __name__ == "__main__":
    main()
