"""Command-line options every benchmark script shares."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (use 1 per process when training several at once; latency is "
        "only comparable when measured alone with the default)",
    )
    return ap


def parse(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the options, and keep freed memory in the C allocator as the command line does, so the
    latencies here are the ones ``torchslim eval`` gives (torchslim.measure.latency.keep_freed_memory)."""
    from torchslim.measure.latency import keep_freed_memory

    keep_freed_memory()
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    return a


def compare(row: dict, base: dict | None) -> dict:
    """Add the ratios against the float baseline's row (same run) to ``row``."""
    if base is not None:
        row["delta_pp"] = round(row["top1"] - base["top1"], 2)
        row["bytes_ratio"] = round(base["bytes"] / row["bytes"], 2)
        row["macs_ratio"] = round(row["macs"] / base["macs"], 3)
        if row.get("latency_b256_ms") and base.get("latency_b256_ms"):
            row["speedup_b256"] = round(base["latency_b256_ms"] / row["latency_b256_ms"], 2)
        if row.get("latency_b1_ms") and base.get("latency_b1_ms"):
            row["speedup_b1"] = round(base["latency_b1_ms"] / row["latency_b1_ms"], 2)
    return row


def run_sections(path, only: list[str], runners: dict) -> dict:
    """Run the named sections, caching each one's rows in the JSON file ``path``.

    A section is rerun only when named, so one part of a benchmark can be redone
    (e.g. latency on a quiet machine) without the others.
    """
    import json
    from pathlib import Path

    path = Path(path)
    for name in only:
        rows = runners[name]()
        # re-read before writing: two processes may run different sections of one benchmark
        sections = json.loads(path.read_text()) if path.exists() else {}
        sections[name] = rows
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sections, indent=1))
    return json.loads(path.read_text()) if path.exists() else {}


ROUNDINGS = (None, 8, 16)  # channel counts: any, or multiples of 8 / 16 (ONNX Runtime's NCHWc blocks)
ORT_COLUMNS = ["model", "round_to", "macs_ratio", "ort_b1_vs_float", "ort_b256_vs_float", "float_ort_b256_ms"] + [
    "chosen",
    "threads",
    "cpu",
]


def ort_rounding_rows(name: str, float_model, build, folder) -> tuple[list[dict], int | None]:
    """Time ``build(round_to)`` for each of ``ROUNDINGS`` in ONNX Runtime against ``float_model``.

    ORT's convolutions run blocked NCHWc kernels only when channel counts are multiples of the
    block (8 on AVX2, 16 on AVX-512) and fall back to im2col + GEMM otherwise, so a model with
    half the MACs and arbitrary channel counts can run no faster than the float one there. The
    structure alone is timed (latency does not depend on the weights), interleaved with the float
    model, 3 rounds, the minimum kept. Returns the rows and the rounding fastest at batch 256."""
    from pathlib import Path

    import torch

    from torchslim.core.surgery import input_shape
    from torchslim.engines import onnx_runner
    from torchslim.export.onnx import export_onnx
    from torchslim.measure import count_macs, latency_ms
    from torchslim.measure.latency import cpu_info

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = input_shape(float_model)
    x = torch.zeros(1, *shape)
    models = {"float": float_model, **{r: build(r) for r in ROUNDINGS}}
    runners = {k: onnx_runner(export_onnx(m, x, folder / f"round_{k}.onnx")) for k, m in models.items()}
    macs = {k: count_macs(m, shape) for k, m in models.items()}
    times = {k: {1: float("inf"), 256: float("inf")} for k in runners}
    for _ in range(3):
        for b in (1, 256):
            for k, run in runners.items():
                times[k][b] = min(times[k][b], latency_ms(run, shape, b))
    best = min(ROUNDINGS, key=lambda r: times[r][256])
    rows = [
        {
            "model": name,
            "round_to": r or "-",
            "macs_ratio": round(macs[r] / macs["float"], 3),
            "ort_b1_vs_float": round(times[r][1] / times["float"][1], 2),
            "ort_b256_vs_float": round(times[r][256] / times["float"][256], 2),
            "float_ort_b256_ms": round(times["float"][256], 2),
            "chosen": "yes" if r == best else "",
            "threads": torch.get_num_threads(),
            "cpu": cpu_info(),
        }
        for r in ROUNDINGS
    ]
    for r in rows:
        print(r, flush=True)
    return rows, best


def torch_ao_int8(model, static: bool, data, calib_batches: int = 16):
    """The peer: torch.ao dynamic int8 (Linear layers) or static int8 (FX graph mode, x86 qconfig)."""
    import warnings

    import torch
    import torch.nn as nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not static:
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (next(iter(data))[0],))
        with torch.no_grad():
            for i, (x, _) in enumerate(data):
                if i >= calib_batches:
                    break
                prepared(x)
        return convert_fx(prepared)


def state_bytes(model) -> int:
    """torch.save size of a peer's state dict (peer models have no .slim form)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


FLOAT = ("float", "float32")


def float_base(rows: list[dict], row: dict) -> dict | None:
    """The float baseline row a results row compares with: same model and section, else same model."""

    def is_float(b: dict) -> bool:
        return b.get("method") in FLOAT or b.get("stage") in FLOAT

    floats = [b for b in rows if is_float(b) and b.get("model") == row.get("model")]
    if not floats and row.get("section"):  # a student row: the teacher is its section's float row
        floats = [b for b in rows if is_float(b) and b.get("section") == row["section"]]
    return next((b for b in floats if b.get("section") == row.get("section")), floats[0] if floats else None)
