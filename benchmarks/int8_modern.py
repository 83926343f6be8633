"""int8 on modern blocks: post-training int8 of a MobileNetV3-like net (depthwise convs,
squeeze-excitation, SiLU / hardswish, a residual add; the foreign-zoo model of tests/zoo.py,
written in plain PyTorch) trained on Fashion-MNIST, as a user would quantize their own model.

Reports the float model's top-1 and, for each setting, the int8 model's top-1 and its top-1
agreement with the float model on the whole test split (target: >= 99 %), the agreement on the
calibration batches, and how many layers stayed float. Writes
benchmarks/results/int8_modern.{json,md}; the float model is trained once and cached in
benchmarks/cache/int8_modern/.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import layer_table, write_report
from torchslim.quant import Uniform
from torchslim.train import TrainConfig, fit, seed_everything

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
CACHE, RES = ROOT / "cache" / "int8_modern", ROOT / "results"
sys.path.insert(0, str(ROOT.parent / "tests"))
from zoo import MobileNetV3Like  # noqa: E402

EPOCHS = 20
SETTINGS = [  # (name, config)
    ("7-bit activation ranges (for CPUs without VNNI)", Uniform(reduce_range=True)),
    ("8-bit activation ranges", Uniform(reduce_range=False)),
    ("8-bit, float fallback to 99.5 % calibration agreement", Uniform(reduce_range=False, min_agreement=0.995)),
    ("8-bit, float fallback to 99 % calibration agreement", Uniform(reduce_range=False, min_agreement=0.99)),
    ("8-bit, bias correction", Uniform(reduce_range=False, bias_correction=True)),
    ("7-bit, bias correction", Uniform(reduce_range=True, bias_correction=True)),
    (
        "8-bit, bias correction, float fallback to 99 %",
        Uniform(reduce_range=False, bias_correction=True, min_agreement=0.99),
    ),
    ("8-bit, MSE ranges", Uniform(reduce_range=False, act_range="mse")),
    ("8-bit, MSE ranges, bias correction", Uniform(reduce_range=False, act_range="mse", bias_correction=True)),
    (
        "8-bit, AdaRound (1,000 steps), bias correction",
        Uniform(reduce_range=False, adaround_steps=1000, bias_correction=True),
    ),
    (
        "8-bit, MSE ranges, AdaRound, bias correction",
        Uniform(reduce_range=False, act_range="mse", adaround_steps=1000, bias_correction=True),
    ),
    (
        "8-bit, MSE ranges, bias correction, float fallback to 99 %",
        Uniform(reduce_range=False, act_range="mse", bias_correction=True, min_agreement=0.99),
    ),
    ("4-bit weights, 8-bit activations", Uniform(bits=4, reduce_range=False)),
    ("4-bit weights, AdaRound (1,000 steps)", Uniform(bits=4, reduce_range=False, adaround_steps=1000)),
]
COLUMNS = ["setting", "top1", "agreement", "calib_agreement", "int8_layers", "int8_macs_pct", "kept_float"]


class Gray(nn.Module):
    """Fashion-MNIST's one channel as the three the model takes."""

    def forward(self, x):
        return x.expand(-1, 3, -1, -1)


def build() -> nn.Module:
    seed_everything(0)
    return nn.Sequential(Gray(), MobileNetV3Like())


@torch.no_grad()
def predictions(model: nn.Module, loader) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).argmax(1) for x, _ in loader])


def main() -> None:
    a = parse(parser(__doc__))
    loaders = make_loaders(DataConfig(dir=a.data_dir), seed=0)
    labels = torch.cat([y for _, y in loaders.test])
    CACHE.mkdir(parents=True, exist_ok=True)
    if (CACHE / "float.slim").exists():
        model = ts.load(CACHE / "float.slim", model=build())
    else:
        model = build()
        fit(
            model,
            loaders.train,
            TrainConfig(epochs=EPOCHS, lr=0.05, seed=0),
            val_loader=loaders.val,
            checkpoint_dir=CACHE,
        )
        ts.save(model, CACHE / "float.slim")
    ref = predictions(model, loaders.test)
    rows = [{"setting": "float32", "top1": round(100 * float((ref == labels).float().mean()), 2), "agreement": 100.0}]
    print(json.dumps(rows[-1]), flush=True)
    for name, cfg in SETTINGS:
        q = build()
        q.load_state_dict(model.state_dict())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calib = make_loaders(DataConfig(dir=a.data_dir), seed=0).train  # the same batches for every setting
            ts.convert_(ts.compress_(q, cfg, data=calib, example_inputs=torch.zeros(1, 1, 28, 28)))
        pred = predictions(q, loaders.test)
        kinds = [type(m).__name__ for m in q.modules()]
        macs = {r["name"]: (r["macs"], r["type"]) for r in layer_table(q, (1, 28, 28))}
        total = sum(m for m, _ in macs.values())
        rows.append(
            {
                "setting": name,
                "top1": round(100 * float((pred == labels).float().mean()), 2),
                "agreement": round(100 * float((pred == ref).float().mean()), 2),
                "float_layers": sum(k in ("Conv2d", "Linear") for k in kinds),
                "int8_layers": sum(k.startswith("Uniform") for k in kinds),
                "int8_macs_pct": round(100 * sum(m for m, t in macs.values() if t.startswith("Uniform")) / total, 1),
                "kept_float": " ".join(n for n, (_, t) in macs.items() if t in ("Conv2d", "Linear")),
                "calib_agreement": next(
                    (round(100 * e["calib_agreement"], 2) for e in q.torchslim.log if "calib_agreement" in e), None
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    write_report(
        rows, RES / "int8_modern", COLUMNS, title="int8 PTQ of a MobileNetV3-like net (Fashion-MNIST test split)"
    )


if __name__ == "__main__":
    main()
