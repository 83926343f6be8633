"""Benchmarks for the papers of the reproduction table that no other benchmark measures.

Sections (``--only`` picks some):
  slimming       Liu et al. 2017, network slimming, on vgg_small from the float model: 2 epochs
                 with the L1 penalty on BatchNorm gammas (1e-3), 50 % of the channels removed by
                 one global gamma ranking, 2 epochs of fine-tuning (SGD, as the filter-pruning
                 benchmark). Artifact vgg_small_slimming.slim.
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
from torchslim.prune.regularize import Slimming
from torchslim.train import TrainConfig, fit

from _common import compare, parse, parser, run_sections

ROOT = Path(__file__).resolve().parent
ART, CACHE, RES = ROOT / "artifacts", ROOT / "cache", ROOT / "results"
SHAPE = (1, 28, 28)
SGD_FT = {"optimizer": "sgd", "lr": 0.02, "weight_decay": 0.0005, "schedule": "cosine", "seed": 0}
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


def slimming(data_dir) -> list[dict]:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    base = _float("vgg_small", loaders)
    cfg = Slimming(penalty=1e-3, ratio=0.5)
    model = ts.compress_(ts.load(ART / "vgg_small.slim"), cfg)
    sparse = TrainConfig(epochs=2, **SGD_FT)
    fit(
        model,
        loaders.train,
        sparse,
        val_loader=loaders.val,
        callbacks=method_callbacks(model),
        checkpoint_dir=CACHE / "reproduce_slimming_l1",
        desc="slimming L1",
    )
    ts.convert_(model)
    fit(
        model,
        loaders.train,
        TrainConfig(epochs=2, **SGD_FT),
        val_loader=loaders.val,
        checkpoint_dir=CACHE / "reproduce_slimming_ft",
        desc="slimming ft",
    )
    path = CACHE / "reproduce_slimming" / "model.slim"
    ts.save(model, path, recipe={"model": {"from": "vgg_small.slim"}, "stages": [cfg.to_dict()]})
    shutil.copyfile(path, ART / "vgg_small_slimming.slim")
    r = _row(
        "Liu et al. 2017, network slimming",
        "vgg_small",
        cfg.method,
        "L1 on BN gammas 1e-3, 2 ep; 50 % of channels removed (global); 2 ep fine-tuning",
        ts.load(path),
        loaders,
        path,
    )
    return [base, compare(r, base)]


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
    ap.add_argument("--only", nargs="*", default=["slimming", "binaryconnect"])
    a = parse(ap)
    runners = {
        "slimming": lambda: slimming(a.data_dir),
        "binaryconnect": lambda: binaryconnect(a.data_dir),
    }
    sections = run_sections(CACHE / "reproduce_sections.json", a.only, runners)
    rows = [{"section": k, **r} for k in runners for r in sections.get(k, [])]
    write_report(
        rows, RES / "reproduce", ["section"] + COLUMNS, title="Papers without another benchmark, on Fashion-MNIST"
    )


if __name__ == "__main__":
    main()
