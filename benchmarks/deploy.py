"""Deploy benchmark: each headline artifact exported to ONNX and run by ONNX Runtime beside
torchslim's own (eager) runtime, ``torch.compile`` (inductor, CPU) and the ``torch.export``
program, at the same thread count.

Per artifact: .slim and ONNX file bytes, top-1 on the Fashion-MNIST test split in torchslim and
in ONNX Runtime, latency at batch 1 and 256 in each engine, the time as a fraction of the float
model's in the same engine, and the CPU it ran on. Writes benchmarks/results/deploy.{json,md}.
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
ARTIFACTS = {  # artifact -> its float model (ratios are taken against it in the same engine)
    "lenet5": "lenet5",
    "vgg_small": "vgg_small",
    "resnet20": "resnet20",
    "vgg_small_filters": "vgg_small",
    "vgg_small_filters_ort": "vgg_small",
    "vgg_small_tucker": "vgg_small",
    "vgg_small_tucker_ort": "vgg_small",
    "vgg_small_int8": "vgg_small",
    "vgg_small_kmeans4": "vgg_small",
    "lenet5_deep_compression": "lenet5",
    "lenet5_magnitude": "lenet5",
    "vgg_small_xnor": "vgg_small",
}
ENGINES = ("eager", "ort", "compile", "export")
COLUMNS = [
    "artifact",
    "slim_bytes",
    "onnx_bytes",
    "onnx_vs_slim",
    "top1",
    "ort_top1",
    *(f"{e}_b{b}_ms" for b in (1, 256) for e in ENGINES),
    "ort_b1_vs_float",
    "ort_b256_vs_float",
    "eager_b256_vs_float",
    "threads",
    "cpu",
]


def _exported(model, b: int):
    """The torch.export program of the model at batch ``b`` (packed layers stay custom ops), as a
    runner (an exported module refuses ``eval()``)."""
    program = torch.export.export(model.eval(), (torch.zeros(b, *SHAPE),)).module()
    return engines.Runner("export", program, keep=program)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for minutes)")
    a = parse(ap)
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in ARTIFACTS:
        model = ts.load(ART / f"{name}.slim")
        path = export_onnx(model, torch.zeros(1, *SHAPE), CACHE / f"{name}.onnx")
        runs = {"eager": ts.engine(model), "ort": engines.onnx_runner(path)}
        row = {
            "artifact": f"{name}.slim",
            "slim_bytes": os.path.getsize(ART / f"{name}.slim"),
            "onnx_bytes": os.path.getsize(path),
            "top1": round(evaluate(runs["eager"], test)["top1"], 2),
            "ort_top1": round(evaluate(runs["ort"], test)["top1"], 2),
            "threads": torch.get_num_threads(),
            "cpu": cpu_info(),
        }
        row["onnx_vs_slim"] = round(row["onnx_bytes"] / row["slim_bytes"], 2)
        for b in (1, 256):
            for engine, run in runs.items():
                row[f"{engine}_b{b}_ms"] = round(latency_ms(run, SHAPE, b), 3)
            try:
                row[f"export_b{b}_ms"] = round(latency_ms(_exported(model, b), SHAPE, b), 3)
            except Exception as e:  # noqa: BLE001 - report, do not stop the benchmark
                row["export_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(json.dumps(row), flush=True)
        rows[name] = row
    for name, row in rows.items():  # after all other timings: no compile worker runs behind them
        if a.no_compile:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # a fresh compile cache per artifact: models of one class share their forward's code,
                # and past 8 compiled variants (2 batch sizes each) dynamo silently runs it eagerly
                torch._dynamo.reset()
                t0 = time.perf_counter()
                compiled = ts.engine(ts.load(ART / f"{name}.slim"), "compile")
                row["compile_seconds"] = round(time.perf_counter() - t0, 1)
                for b in (1, 256):
                    row[f"compile_b{b}_ms"] = round(latency_ms(compiled, SHAPE, b), 3)
            except Exception as e:  # noqa: BLE001 - report, do not stop the benchmark
                row["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(json.dumps(row), flush=True)
    for name, row in rows.items():
        base = rows[ARTIFACTS[name]]
        for engine, b in (("ort", 1), ("ort", 256), ("eager", 256)):
            row[f"{engine}_b{b}_vs_float"] = round(row[f"{engine}_b{b}_ms"] / base[f"{engine}_b{b}_ms"], 2)
    write_report(
        list(rows.values()),
        ROOT / "results" / "deploy",
        COLUMNS,
        title="Deploy: torchslim eager vs ONNX Runtime vs torch.compile vs torch.export (Fashion-MNIST test split); "
        "*_vs_float: time as a fraction of the float model's in the same engine",
    )


if __name__ == "__main__":
    main()
