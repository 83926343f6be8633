"""What each method costs on the models users bring, at their real input size (3x224x224).

Per architecture (timm definitions, random init) and method (its documented default config):
wall time and peak memory (the process's maximum resident set) of ``compress_`` + ``convert_`` +
``save``, the ``.slim`` bytes, and the converted model's latency against the float model in the
same engine (torchslim's ``eager``) at batch 1 and 32. Every cell runs in a fresh process, so its
peak memory is its own; methods that need calibration data get ``CALIB_BATCHES`` batches of
``CALIB_BATCH`` random images (the count is in the table).

Runs in the environment that has timm (``bash setup.sh --zoo`` makes ``.venv-zoo``):
    .venv-zoo/bin/python benchmarks/scale.py --archs resnet18 resnet50
Cells are cached in benchmarks/results/scale.json as they finish (``--redo`` reruns the named
ones); benchmarks/results/scale.md is rewritten from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from _common import parser  # noqa: E402

OUT = ROOT / "results" / "scale"
ARCHS = ("resnet18", "resnet50", "mobilenetv2_100", "efficientnet_b0")
SHAPE = (3, 224, 224)
CALIB_BATCHES, CALIB_BATCH = 2, 8
BATCHES = (1, 32)


def cell(arch: str, method: str) -> dict:
    """One (architecture, method) cell, measured in this process (run it in a fresh one)."""
    import resource
    import tempfile
    import warnings

    import timm
    import torch

    import torchslim as ts
    from torchslim.core.registry import get_method
    from torchslim.engines import build
    from torchslim.measure.latency import cpu_info, latency_ms

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    x = torch.randn(1, *SHAPE)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(CALIB_BATCH, *SHAPE, generator=g), torch.zeros(CALIB_BATCH, dtype=torch.long))] * CALIB_BATCHES
    row: dict = {"arch": arch, "method": method, "cpu": cpu_info(), "threads": torch.get_num_threads()}
    handler = get_method(method) if method != "float" else None
    row["calibration"] = f"{CALIB_BATCHES}x{CALIB_BATCH} images" if handler is not None and handler.needs_data else ""
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = Path(d) / "m.slim"
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        if handler is not None:
            try:
                ts.compress_(model, handler.config_cls(), data=data, example_inputs=x)
            except ValueError as e:
                return {**row, "outcome": "refused", "detail": str(e).splitlines()[0][:200]}
            ts.convert_(model)
        ts.save(model, path)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        row["model_mb_before"] = round(rss0 / 1024)
        row["bytes"] = path.stat().st_size
        row["warnings"] = sorted({str(w.message)[:160] for w in caught if "torchslim" in str(w.filename)})
    row["outcome"] = "ok"
    for b in BATCHES:
        try:
            run = build("eager", model, SHAPE)
            row["engine"] = "eager"
        except Exception:  # noqa: BLE001 - the plain module then
            run, row["engine"] = build("pytorch", model, SHAPE), "pytorch"
        row[f"b{b}_ms"] = round(latency_ms(run, SHAPE, b, min_run_time=2.0), 2)
    row["load"] = round(os.getloadavg()[0], 1)  # runnable processes (1-min average): above ~2 the timings are shared
    return row


def markdown(rows: list[dict]) -> str:
    base = {r["arch"]: r for r in rows if r["method"] == "float" and r.get("outcome") == "ok"}
    cpu = next((r["cpu"] for r in rows), "")
    lines = [
        "# What each method costs at 3x224x224",
        "",
        "Produced by `.venv-zoo/bin/python benchmarks/scale.py` (timm definitions, random init, the "
        "methods' default configs). Time and peak memory are those of compress_ + convert_ + save in "
        "a fresh process (peak includes the float model; `float` is the model saved unchanged); "
        "speed-ups are the float model's latency over the converted model's, both in torchslim's "
        f"`eager` engine, {next((r['threads'] for r in rows), 2)} threads, CPU: {cpu}. Random weights: "
        "the time of data-dependent searches (ranks, sensitivities) on trained weights can differ.",
        "",
        "Latency and seconds are only comparable where `load` (the 1-minute load average when the cell "
        "was timed) is at most about 2 on this 2-core machine; rows without it were measured while other "
        "jobs ran (4-6 processes): their seconds are upper bounds and their speed-ups are not valid.",
        "",
        "| arch | method | outcome | calibration | seconds | peak MB | s per GMAC | bytes ratio | "
        "speed-up b1 | speed-up b32 | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get(r["arch"], {})
        if r.get("outcome") != "ok":
            lines.append(f"| {r['arch']} | {r['method']} | {r.get('outcome')}: {r.get('detail', '')[:80]} ||||||||")
            continue
        ratio = {k: f"{b[k] / r[k]:.2f}x" if b.get(k) and r.get(k) else "" for k in ("bytes", "b1_ms", "b32_ms")}
        per = f"{r['seconds'] / b['gmacs']:.2f}" if b.get("gmacs") else ""
        lines.append(
            f"| {r['arch']} | {r['method']} | ok | {r['calibration']} | {r['seconds']} | {r['peak_mb']} | {per} | "
            f"{ratio['bytes']} | {ratio['b1_ms']} | {ratio['b32_ms']} | {r.get('load', '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--methods", nargs="+", default=None, help="default: float and every registered method")
    ap.add_argument("--redo", action="store_true", help="rerun the named cells even if cached")
    ap.add_argument("--limit", type=int, default=1200, help="seconds per cell before it is reported as slow")
    ap.add_argument("--cell", nargs=2, metavar=("ARCH", "METHOD"), help=argparse_suppress())
    a = ap.parse_args()
    if a.cell:
        print(json.dumps(cell(*a.cell)))
        return
    import torchslim as ts

    methods = a.methods or ["float"] + ts.list_methods()
    path = OUT.with_suffix(".json")
    cache = json.loads(path.read_text()) if path.exists() else {"rows": []}
    rows = {(r["arch"], r["method"]): r for r in cache["rows"]}
    for arch in a.archs:
        if (arch, "float") not in rows:
            methods = ["float"] + [m for m in methods if m != "float"]
        for method in methods:
            if (arch, method) in rows and not a.redo:
                continue
            t0 = time.perf_counter()
            try:
                p = subprocess.run(
                    [sys.executable, __file__, "--cell", arch, method],
                    capture_output=True,
                    text=True,
                    timeout=a.limit,
                )
                row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
                if row is None:
                    lines = p.stderr.strip().splitlines() or ["no output"]
                    err = next((x for x in reversed(lines) if "Error" in x or "Exception" in x), lines[-1])
                    row = {"arch": arch, "method": method, "outcome": "crash", "detail": err[:200]}
            except subprocess.TimeoutExpired:
                row = {"arch": arch, "method": method, "outcome": "slow", "detail": f"past {a.limit} s"}
            if method == "float" and row.get("outcome") == "ok":
                row["gmacs"] = _gmacs(arch)
            rows[(arch, method)] = row
            print(f"{arch:18s} {method:18s} {row.get('outcome')} {time.perf_counter() - t0:.0f} s", flush=True)
            path.write_text(json.dumps({"rows": list(rows.values())}, indent=1))
            OUT.with_suffix(".md").write_text(markdown(list(rows.values())))


def _gmacs(arch: str) -> float:
    import timm
    import torch

    from torchslim.measure.counts import count_macs

    torch.manual_seed(0)
    return round(count_macs(timm.create_model(arch, pretrained=False).eval(), SHAPE) / 1e9, 3)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
