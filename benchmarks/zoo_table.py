"""Every registered method on every foreign architecture of tests/zoo.py (plain PyTorch models that
are not in the registry): prepare with ``example_inputs`` -> convert -> save -> load onto a fresh
instance -> export to ONNX and run in ONNX Runtime. Writes benchmarks/results/zoo.{json,md}:
``ok`` (outputs as tests/test_zoo.py and tests/test_onnx.py require), ``ok, skips N`` (layers kept
as they were, with a warning naming them), ``refused`` (a ValueError naming the reason), or the
error. The same pairs are asserted in the test suite; this table is the summary."""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

import torchslim as ts
from torchslim.measure import write_report

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))
from test_zoo import CONFIGS  # noqa: E402

from zoo import ZOO, build, sample  # noqa: E402


def outcome(method: str, name: str, tmp: Path) -> str:
    g = torch.Generator().manual_seed(5)
    x = sample(name, 4, g)  # a tuple for the multi-input model
    data = [(sample(name, 16, g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    model = build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ts.compress_(model, CONFIGS[method], data=data, example_inputs=x)
        except ValueError as e:
            return f"refused: {str(e).split('(')[0].removeprefix(method).strip(': ')[:40]}"
        ts.convert_(model)
        ts.save(model, tmp / "m.slim")
        loaded = ts.load(tmp / "m.slim", model=ZOO[name]()).eval()
        onnx_ok = "onnx"
        try:
            ts.export_onnx(loaded, x, tmp / "m.onnx")
        except Exception as e:  # noqa: BLE001 - reported in the table
            onnx_ok = f"no onnx ({type(e).__name__})"
    skips = [w for w in caught if "keeping" in str(w.message) or "skipping" in str(w.message)]
    return "ok" + (f", skips ({len(skips)} warning)" if skips else "") + f", {onnx_ok}"


def main() -> None:
    parse(parser(__doc__))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for method in sorted(CONFIGS):
            row = {"method": method}
            for name in ZOO:
                row[name] = outcome(method, name, Path(d))
            print(row, flush=True)
            rows.append(row)
    write_report(
        rows,
        ROOT / "results" / "zoo",
        ["method", *ZOO],
        title="Every method on foreign models (tests/zoo.py): prepare -> convert -> save -> load -> ONNX",
    )


if __name__ == "__main__":
    main()
