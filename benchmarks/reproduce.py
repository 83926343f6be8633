"""Benchmarks for the papers of the reproduction table that no other benchmark measures.

Sections (``--only`` picks some):
  binaryconnect  Courbariaux et al. 2015, BinaryConnect, on lenet300_100 (the paper's MNIST
                 result is an MLP): every layer's weights binarized (deterministic sign), float
                 activations, 10 epochs (Adam, cosine) from the float model. Artifact
                 lenet300_100_binaryconnect.slim.

Writes benchmarks/results/reproduce.{json,md}.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torchslim as ts
from torchslim.binary import BinaryConnect
from torchslim.core.api import method_callbacks
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import measure, write_report
from torchslim.train import TrainConfig, fit

from _common import compare, parse, parser, run_sections

ROOT = Path(__file__).resolve().parent
ART, CACHE, RES = ROOT / "artifacts", ROOT / "cache", ROOT / "results"
SHAPE = (1, 28, 28)
ADAM = {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
COLUMNS = ["paper", "model", "method", "setting", "top1", "delta_pp", "bytes", "bytes_ratio", "params", "macs"]


def _row(paper: str, model_name: str, method: str, setting: str, model, loaders, path=None) -> dict:
    r = {
        "paper": paper,
        "model": model_name,
        "method": method,
        "setting": setting,
        **measure(model, SHAPE, loader=loaders.test, path=path, latency=False),
    }
    print(json.dumps({k: r.get(k) for k in COLUMNS}), flush=True)
    return r


def _float(name: str, loaders) -> dict:
    return _row("", name, "float", "baseline", ts.load(ART / f"{name}.slim"), loaders, ART / f"{name}.slim")


def binaryconnect(data_dir) -> list[dict]:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    base = _float("lenet300_100", loaders)
    cfg = BinaryConnect(layers=("1", "3", "5"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # binarizing the first and last layer warns: the paper does it
        model = ts.compress_(ts.load(ART / "lenet300_100.slim"), cfg)
    fit(
        model,
        loaders.train,
        TrainConfig(epochs=10, **ADAM),
        val_loader=loaders.val,
        callbacks=method_callbacks(model),
        checkpoint_dir=CACHE / "reproduce_binaryconnect",
        desc="binaryconnect",
    )
    ts.convert_(model)
    path = CACHE / "reproduce_binaryconnect" / "model.slim"
    ts.save(model, path, recipe={"model": {"from": "lenet300_100.slim"}, "stages": [cfg.to_dict()]})
    shutil.copyfile(path, ART / "lenet300_100_binaryconnect.slim")
    r = _row(
        "Courbariaux et al. 2015, BinaryConnect",
        "lenet300_100",
        cfg.method,
        "every layer's weights binary (deterministic), float activations, 10 ep Adam from float",
        ts.load(path),
        loaders,
        path,
    )
    return [base, compare(r, base)]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=["binaryconnect"])
    a = parse(ap)
    runners = {
        "binaryconnect": lambda: binaryconnect(a.data_dir),
    }
    sections = run_sections(CACHE / "reproduce_sections.json", a.only, runners)
    rows = [{"section": k, **r} for k in runners for r in sections.get(k, [])]
    write_report(
        rows, RES / "reproduce", ["section"] + COLUMNS, title="Papers without another benchmark, on Fashion-MNIST"
    )


if __name__ == "__main__":
    main()
