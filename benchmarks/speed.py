"""Speed benchmark: whole-model latency of each headline artifact against its float model, in
the same engine and against the float model in its fastest engine, at batch 1 and 256, on this
CPU (recorded with its ISA flags) at the same thread count; plus where the time goes.

Engines (torchslim.engines): pytorch (the modules as they are: the plain-PyTorch
reference), eager (torchslim's runtime: packed kernels, strided max pooling), onnxruntime (the
exported ONNX graph) and, with --compile, torch.compile (inductor; compiling takes minutes).
Targets are the speed-ups at batch 256 against the float32 model in plain PyTorch; each row says
whether its target is met, and ``speedup_*`` against the float model in the same engine says
how much of it the compression itself gives. For every artifact the eager run is profiled per
layer type (share of the batch-256 time), so that a miss shows where its time goes. Every model
runs in every engine once per round, ``--rounds`` rounds over all of them in turn, and each
entry keeps its fastest round: this VM's speed drifts for minutes at a time, so timing one model
after another put some ratios' two sides in different stretches (in one run XNOR vgg_small 27 ms
against 20-21 ms in interleaved rounds minutes later).

Writes benchmarks/results/speed.{json,md}. Run it alone on a quiet machine.

``--isa avx2`` runs the same table as an AVX2-only CPU would (the project's machines differ: some
have AVX-512 / VNNI / VPOPCNTDQ, some AVX2 only): oneDNN is capped at AVX2
(``ONEDNN_MAX_CPU_ISA``) and numba compiles for Haswell (AVX2, FMA, scalar popcnt), so float,
binary, sparse and lookup-table kernels run the AVX2 code they would run there; PyTorch's int8
kernels (fbgemm) pick their ISA themselves and are not capped, so the int8 row is left out.
Writes benchmarks/results/speed_avx2.{json,md}.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers busy while others are timed
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.surgery import leaf_modules
from torchslim.measure import latency_ms, write_report
from torchslim.measure.latency import AVX2_ONLY_ENV, allocator, cpu_info

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
ART, RES = ROOT / "artifacts", ROOT / "results"
SHAPE = (1, 28, 28)
# artifact -> (float baseline, target speed-up at batch 256 vs float eager, at batch 1 or None)
TARGETS = {
    "vgg_small_xnor": ("vgg_small", 4.0, None),
    "vgg_small_bnn": ("vgg_small", 4.0, None),
    "vgg_small_bnn_plain": ("vgg_small", 4.0, None),
    "resnet20_xnor": ("resnet20", None, None),
    "vgg_small_int8": ("vgg_small", None, None),
    "vgg_small_filters": ("vgg_small", 1.8, None),
    "resnet20_filters": ("resnet20", 1.5, None),
    "vgg_small_tucker": ("vgg_small", 1.5, None),
    "vgg_small_lowrank_auto": ("vgg_small", None, None),
    "lenet5_magnitude": ("lenet5", 1.5, 2.0),
    "lenet5_deep_compression": ("lenet5", None, None),
    "vgg_small_kmeans4": ("vgg_small", None, None),
    "vgg_small_bwn": ("vgg_small", None, None),
    "vgg_small_cp": ("vgg_small", None, None),
    "lenet300_100_svd": ("lenet300_100", None, None),
}
COLUMNS = [
    "artifact",
    "engine",
    "b1_ms",
    "b256_ms",
    "speedup_b1",
    "speedup_b256",
    "vs_float_pytorch_b256",
    "vs_best_float_b256",
    "target_b256",
    "met",
    "where_time_goes_b256",
]


def profile(model: nn.Module, batch: int = 256, reps: int = 5) -> dict[str, float]:
    """Share of the forward time per leaf-layer type (eager; forward pre/post hooks), in %."""
    spent: dict[str, float] = defaultdict(float)
    start: dict[int, float] = {}
    hooks = []
    for _, m in leaf_modules(model):
        hooks.append(m.register_forward_pre_hook(lambda mod, a: start.__setitem__(id(mod), time.perf_counter())))
        hooks.append(
            m.register_forward_hook(
                lambda mod, a, o: spent.__setitem__(
                    type(mod).__name__, spent[type(mod).__name__] + time.perf_counter() - start[id(mod)]
                )
            )
        )
    x = torch.randn(batch, *SHAPE)
    with torch.no_grad():
        model(x)
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        total = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    out = {k: round(100 * v / total, 1) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    out["(between layers)"] = round(100 - sum(out.values()), 1)
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes per model)")
    ap.add_argument("--only", nargs="*", help="artifacts to run (default: all)")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native", help="avx2: as on an AVX2-only CPU")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds over all models (the fastest kept)")
    a = parse(ap)
    if a.isa == "avx2" and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":  # again, with the caps set
        import sys

        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ONLY_ENV})
    names = ["pytorch", "eager", "onnxruntime"] + (["compile"] if a.compile else [])
    avx2 = a.isa == "avx2"
    cpu = cpu_info() + (", run as AVX2-only: oneDNN capped at AVX2, numba for Haswell" if avx2 else "")
    out = RES / ("speed_avx2" if avx2 else "speed")
    chosen = [
        n
        for n in TARGETS
        if (not a.only or n in a.only) and (ART / f"{n}.slim").exists() and not (avx2 and n == "vgg_small_int8")
    ]  # fbgemm's int8 kernels are not capped by --isa avx2
    seq = list(dict.fromkeys(x for n in chosen for x in (TARGETS[n][0], n)))  # each float model before its own
    models = {n: ts.load(ART / f"{n}.slim") for n in seq}
    runs, t = {}, {n: {} for n in seq}
    for n in seq:
        for engine in names:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs[n, engine] = ts.engine(models[n], engine)  # what users call
            except Exception as e:  # noqa: BLE001 - an engine that cannot run the model is reported
                t[n][engine] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    # Every model in every engine timed once per round, the rounds over all of them in turn, and the
    # smallest median of the rounds kept: this VM's speed drifts over minutes (other tenants; the
    # same model 20-40 % slower for a while), and only ever adds time, so each entry gets several
    # chances spread over the whole run, and a ratio compares times from the same stretch of it.
    for rnd in range(a.rounds):
        for (n, engine), run in runs.items():
            if "error" in t[n].get(engine, {}):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = {f"b{b}": round(latency_ms(run, SHAPE, b, min_run_time=0.5), 3) for b in (1, 256)}
            except Exception as e:  # noqa: BLE001
                t[n][engine] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                continue
            prev = t[n].get(engine, {})
            t[n][engine] = {k: min(v, prev.get(k, v)) for k, v in got.items()}
        print(f"round {rnd + 1}/{a.rounds} done", flush=True)
    rows = []
    for n in seq:
        if n not in TARGETS:  # a float baseline
            for engine, te in t[n].items():
                rows.append(
                    {"artifact": f"{n}.slim", "engine": engine, **_ms(te), "cpu": cpu, "allocator": allocator()}
                )
                print(json.dumps(rows[-1]), flush=True)
            continue
        base, target, target_b1 = TARGETS[n]
        fb = t[base]
        best = min((x["b256"] for x in fb.values() if "b256" in x), default=None)
        prof = profile(runs[n, "eager"])
        for engine, te in t[n].items():
            r = {
                "artifact": f"{n}.slim",
                "engine": engine,
                **_ms(te),
                "cpu": cpu,
                "allocator": allocator(),
                "threads": torch.get_num_threads(),
            }
            if "b256" in te and "b256" in fb.get(engine, {}):
                r["speedup_b1"] = round(fb[engine]["b1"] / te["b1"], 2)
                r["speedup_b256"] = round(fb[engine]["b256"] / te["b256"], 2)
                r["vs_float_pytorch_b256"] = round(fb["pytorch"]["b256"] / te["b256"], 2)
                r["vs_best_float_b256"] = round(best / te["b256"], 2)
                r["vs_float_pytorch_b1"] = round(fb["pytorch"]["b1"] / te["b1"], 2)
            if target is not None:
                r["target_b256"] = f">= {target}x" + (f" (b1 >= {target_b1}x)" if target_b1 else "")
                if "vs_float_pytorch_b256" in r:
                    r["met"] = r["vs_float_pytorch_b256"] >= target and (
                        target_b1 is None or r["vs_float_pytorch_b1"] >= target_b1
                    )
            if engine == "eager":
                r["profile_b256"] = prof
                r["where_time_goes_b256"] = ", ".join(f"{k} {v:.0f}%" for k, v in list(prof.items())[:3])
            rows.append(r)
            print(json.dumps(r), flush=True)
    if a.only:  # keep the other artifacts' rows of the last full run
        done = {r["artifact"] for r in rows}
        old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else []
        order = [a for n, (b, *_) in TARGETS.items() for a in (f"{b}.slim", f"{n}.slim")]
        rows = sorted([r for r in old if r["artifact"] not in done] + rows, key=lambda r: order.index(r["artifact"]))
    write_report(
        rows,
        out,
        COLUMNS,
        title=f"Whole-model latency vs float, per engine ({cpu}, {torch.get_num_threads()} threads)",
    )


def _ms(t: dict) -> dict:
    return {"b1_ms": t.get("b1"), "b256_ms": t.get("b256"), **({"error": t["error"]} if "error" in t else {})}


if __name__ == "__main__":
    main()
