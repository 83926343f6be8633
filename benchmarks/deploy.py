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

import torch

import torchslim as ts
from torchslim import engines
from torchslim.data import DataConfig, make_loaders
from torchslim.export.onnx import export_onnx
from torchslim.measure import evaluate, latency_ms, write_report
from torchslim.measure.latency import cpu_info

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
ART, CACHE = ROOT / "artifacts", ROOT / "cache" / "deploy"
SHAPE = (1, 28, 28)
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


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
    a = parse(ap)
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in ARTIFACTS:
        model = ts.load(ART / f"{name}.slim")
        path = export_onnx(model, torch.zeros(1, 1, 28, 28), CACHE / f"{name}.onnx")
        runs = {"eager": ts.engine(model), "ort": engines.onnx_runner(path)}
        row = {
            "artifact": f"{name}.slim",
            "onnx_bytes": os.path.getsize(path),
            "top1": round(evaluate(runs["eager"], test)["top1"], 2),
            "ort_top1": round(evaluate(runs["ort"], test)["top1"], 2),
            "threads": torch.get_num_threads(),
            "cpu": cpu_info(),
        }
        for b in (1, 256):
            for engine, run in runs.items():
                row[f"{engine}_b{b}_ms"] = round(latency_ms(run, SHAPE, b), 3)
        row["ort_speedup_b256"] = round(row["eager_b256_ms"] / row["ort_b256_ms"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    for name, row in zip(ARTIFACTS, rows):  # after all other timings: no compile worker runs behind them
        if a.no_compile:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                t0 = time.perf_counter()
                compiled = ts.engine(ts.load(ART / f"{name}.slim"), "compile")
                row["compile_seconds"] = round(time.perf_counter() - t0, 1)
                for b in (1, 256):
                    row[f"compile_b{b}_ms"] = round(latency_ms(compiled, SHAPE, b), 3)
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
