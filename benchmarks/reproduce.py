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

  fitnets        Romero et al. 2015, FitNets: the vgg_small width-12 student (6.9x fewer MACs)
                 trained for 6 epochs with a hint (its second conv block's output regressed onto
                 the teacher's by a 1x1 conv, squared error per element) plus Hinton KD (T=4,
                 alpha=0.5), seed 0, beside the same student with KD only and alone (seed 0 rows of
                 benchmarks/distill.py's ``students`` section, same schedule).

Writes benchmarks/results/reproduce.{json,md}.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

import torchslim as ts
from torchslim.api import method_callbacks
from torchslim.binary import BinaryConnect
from torchslim.data import DataConfig, make_loaders
from torchslim.distill import Distill
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


def _artifact_row(model, cfg, base: dict, artifact: str, paper: str, setting: str, loaders, run: str) -> list[dict]:
    """Save the converted ``model`` to ``CACHE/run`` (recipe: ``cfg`` on the base float file), copy
    it to the artifacts as ``artifact``, and return the float row and the file's row compared with it."""
    path = CACHE / run / "model.slim"
    ts.save(model, path, recipe={"model": {"from": f"{base['model']}.slim"}, "stages": [cfg.to_dict()]})
    shutil.copyfile(path, ART / artifact)
    r = _row(paper, base["model"], cfg.method, setting, ts.load(path), loaders, path)
    return [base, compare(r, base)]


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
    return _artifact_row(
        model,
        cfg,
        base,
        "vgg_small_slimming.slim",
        "Liu et al. 2017, network slimming",
        "L1 on BN gammas 1e-3, 2 ep; 50 % of channels removed (global); 2 ep fine-tuning",
        loaders,
        "reproduce_slimming",
    )


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
    return _artifact_row(
        model,
        cfg,
        base,
        "lenet300_100_binaryconnect.slim",
        "Courbariaux et al. 2015, BinaryConnect",
        "every layer's weights binary (deterministic), float activations, 10 ep Adam from float",
        loaders,
        "reproduce_binaryconnect",
    )


def fitnets(data_dir) -> list[dict]:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    teacher = ts.load(ART / "vgg_small.slim").eval()
    base = _float("vgg_small", loaders)
    torch.manual_seed(0)
    student = ts.create_model("vgg_small", width=12)
    # after the second block's pool; hint_weight 1 / (64 * 7 * 7): the squared error per element of the
    # teacher's feature (summed over the feature, the regressor's SGD diverged in the first epoch)
    hint = Distill(teacher, T=4.0, alpha=0.5, hints=[("0.13", "0.13")], hint_weight=1 / (64 * 7 * 7))
    fit(
        student,
        loaders.train,
        TrainConfig(epochs=6, **ADAM),
        callbacks=[hint],
        checkpoint_dir=CACHE / "reproduce_fitnets",
        desc="fitnets",
    )
    r = _row(
        "Romero et al. 2015, FitNets",
        "vgg_small_w12",
        "distill (hints + KD)",
        "hint 0.13 -> 0.13 (1x1 regressor, per-element MSE) + KD T=4 a=0.5, 6 ep Adam, seed 0",
        student,
        loaders,
    )
    rows = [base, compare(r, base)]
    distill = json.loads((RES / "distill.json").read_text())
    for mode in ("KD", "alone"):  # the same student, schedule and seed without the hint (benchmarks/distill.py)
        d = next(
            x
            for x in distill["students"]
            if x["student"] == "vgg_small_w12" and x["mode"] == mode and x["seed"] == 0 and x["epochs"] == 6
        )
        rows.append(
            {
                "paper": "",
                "model": "vgg_small_w12",
                "method": f"distill ({mode})" if mode == "KD" else "trained alone",
                "setting": "6 ep Adam, seed 0 (benchmarks/distill.py)",
                **{k: d.get(k) for k in ("top1", "params", "macs")},
            }
        )
        rows[-1]["delta_pp"] = round(rows[-1]["top1"] - base["top1"], 2)
    return rows


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=["slimming", "binaryconnect", "fitnets"])
    a = parse(ap)
    runners = {
        "slimming": lambda: slimming(a.data_dir),
        "binaryconnect": lambda: binaryconnect(a.data_dir),
        "fitnets": lambda: fitnets(a.data_dir),
    }
    sections = run_sections(CACHE / "reproduce_sections.json", a.only, runners)
    rows = [{"section": k, **r} for k in runners for r in sections.get(k, [])]
    write_report(
        rows, RES / "reproduce", ["section"] + COLUMNS, title="Papers without another benchmark, on Fashion-MNIST"
    )


if __name__ == "__main__":
    main()
