"""Every registered method on real timm / torchvision architectures (tests/foreign.py: random init,
no weights): compress_ -> forward -> convert_ -> forward -> train-mode forward -> save ->
load(fresh) -> ONNX Runtime, each cell ok / skips / refused or a failure (crash, wrong, no-op).

Runs in the environment that has timm (``bash setup.sh --zoo`` makes ``.venv-zoo``):
    .venv-zoo/bin/python benchmarks/foreign_zoo.py --jobs 2
Cells are cached in benchmarks/results/foreign_zoo.json as they finish (a rerun skips them;
``--redo`` reruns the named ones); the Markdown table is rewritten from the cache at the end."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))
from _common import parser  # noqa: E402

OUT = ROOT / "results" / "foreign_zoo"


def _one(method: str, arch: str, limit: int) -> dict:
    import signal

    import torch

    torch.set_num_threads(1)
    from foreign import CellTimeout, run_cell

    def too_slow(*_) -> None:
        raise CellTimeout(f"the cell ran past {limit} s")

    signal.signal(signal.SIGALRM, too_slow)  # the worker runs cells in its main thread
    signal.alarm(limit)
    try:
        with tempfile.TemporaryDirectory() as d:
            return run_cell(method, arch, Path(d)).as_dict()
    finally:
        signal.alarm(0)


def _cpu() -> str:
    from torchslim.measure.latency import cpu_info

    return cpu_info()


def markdown(cells: list[dict], archs: list[str], methods: list[str]) -> str:
    by = {(c["method"], c["arch"]): c for c in cells}
    counts = Counter(c["outcome"] for c in cells)
    skips = sum(1 for c in cells if c["outcome"] == "ok" and c["skipped"])
    lines = [
        "# Every method on real timm / torchvision architectures",
        "",
        "Produced by `.venv-zoo/bin/python benchmarks/foreign_zoo.py` (tests/foreign.py: random init, "
        "no weights; compress_ -> forward -> convert_ -> forward -> train-mode forward -> save -> "
        "load(fresh instance) -> ONNX Runtime).",
        "",
        f"{len(cells)} cells: {counts['ok']} ok ({skips} of them skip layers with one warning), "
        f"{counts['refused']} refused with a clear error, {counts['warned']} warned at compress_ that the "
        f"outputs are not finite, {counts['crash']} crash, {counts['slow']} slow (past the cell limit), "
        f"{counts['wrong']} silently wrong, {counts['no-op']} silent no-op.",
        "",
    ]
    for a in archs:
        lines.append(f"- `{a}`: " + "; ".join(f"{m}: {by[m, a]['summary']}" for m in methods if (m, a) in by))
    lines += ["", "| method | " + " | ".join(archs) + " |", "|---" * (len(archs) + 1) + "|"]
    for m in methods:
        row = []
        for a in archs:
            c = by.get((m, a))
            mark = ("*" if c and c["skipped"] else "") + ("°" if c and c.get("onnx", "ok") != "ok" else "")
            row.append("" if c is None else {"ok": "ok" + mark}.get(c["outcome"], c["outcome"]))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    lines += [
        "",
        "`ok*`: ok, with the layers the method cannot handle kept as they were (one warning names them); "
        "`°`: export_onnx refused with a clear error (an operator ONNX cannot express at this input size).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--archs", nargs="*", help="architectures (default: all of tests/foreign.py)")
    ap.add_argument("--methods", nargs="*", help="methods (default: every registered one)")
    ap.add_argument("--jobs", type=int, default=2, help="processes, one thread each")
    ap.add_argument("--redo", action="store_true", help="rerun the named cells even when cached")
    ap.add_argument(
        "--cell-limit", type=int, default=300, help="seconds one cell may take (1 thread) before it counts as slow"
    )
    ap.add_argument("--out", type=Path, default=OUT, help="results path without suffix (.json and .md are written)")
    a = ap.parse_args()
    out = a.out
    from foreign import ARCHS, available
    from test_zoo import CONFIGS

    if not available():
        sys.exit("timm / torchvision do not import here: run bash setup.sh --zoo, then use .venv-zoo/bin/python")
    archs, methods = a.archs or list(ARCHS), a.methods or sorted(CONFIGS)
    cache = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    cells = {(c["method"], c["arch"]): c for c in cache.get("cells", [])}
    todo = [(m, ar) for ar in archs for m in methods if a.redo or (m, ar) not in cells]
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    def write() -> None:
        import timm
        import torch

        allc = sorted(cells.values(), key=lambda c: (c["arch"], c["method"]))
        meta = {"torch": torch.__version__, "timm": timm.__version__, "cpu": _cpu()}
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cells": allc}, indent=1) + "\n")
        order = [x for x in ARCHS if any(c["arch"] == x for c in allc)]
        out.with_suffix(".md").write_text(markdown(allc, order, sorted(CONFIGS)))

    with ProcessPoolExecutor(a.jobs) as pool:
        futs = {pool.submit(_one, m, ar, a.cell_limit): (m, ar) for m, ar in todo}
        for i, f in enumerate(as_completed(futs), 1):
            m, ar = futs[f]
            try:
                c = f.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (segfault, memory) is a crash too
                c = {
                    "method": m,
                    "arch": ar,
                    "outcome": "crash",
                    "step": "process",
                    "detail": repr(e)[:200],
                    "skipped": [],
                    "warnings": [],
                    "seconds": {},
                    "summary": f"crash: {e!r}"[:120],
                }
            cells[m, ar] = c
            print(f"[{i}/{len(todo)}] {ar:28s} {m:18s} {c['summary']}", flush=True)
            if i % 10 == 0 or i == len(todo):
                write()
    write()


if __name__ == "__main__":
    main()
