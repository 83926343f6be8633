"""Float baselines: train every registry model on Fashion-MNIST with a fixed seed.

Writes benchmarks/results/baselines.{json,md} and the headline float models to
benchmarks/artifacts/<model>.slim. Each model trains through a recipe in
benchmarks/cache/<model>/, so a rerun resumes (or skips finished models).

    python benchmarks/baselines.py [--models lenet5 vgg_small] [--data-dir D]
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure.report import measure, write_report
from torchslim.recipe import run_recipe

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
HEADLINE = ("lenet5", "lenet300_100", "vgg_small", "resnet20")

ADAM = {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
SGD = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0005, "schedule": "onecycle", "seed": 0}
# model -> (model kwargs, train settings, augment). Light models: Adam, no augmentation.
# Conv nets with BatchNorm: SGD one-cycle with crop+flip. The two mobile backbones are
# slow to train on a 2-core CPU, so they get width 0.5 and fewer epochs.
SETTINGS = {
    "lenet5": ({}, {**ADAM, "epochs": 15}, False),
    "lenet300_100": ({}, {**ADAM, "epochs": 15}, False),
    "vgg_small": ({}, {**SGD, "epochs": 15}, True),
    "resnet20": ({}, {**SGD, "lr": 0.1, "epochs": 15}, True),
    "lenet5_classic": ({}, {**ADAM, "epochs": 15}, False),
    "shufflenetv2": ({"width_mult": 0.5}, {**SGD, "lr": 0.1, "epochs": 3}, True),
    "mobilenetv2": ({"width_mult": 0.5}, {**SGD, "lr": 0.1, "epochs": 2}, True),
}
COLUMNS = [
    "model",
    "method",
    "kwargs",
    "epochs",
    "top1",
    "top5",
    "bytes",
    "params",
    "nonzeros",
    "macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "threads",
    "train_seconds",
]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", nargs="*", default=list(SETTINGS))
    a = parse(ap)
    rows = []
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    for name in a.models:
        kwargs, train, augment = SETTINGS[name]
        recipe = {
            "name": f"baseline_{name}",
            "model": {"name": name, "kwargs": kwargs},
            "data": {"name": "fashion_mnist", "batch_size": 128, "augment": augment},
            "train": train,
            "stages": [],
        }
        out = ROOT / "cache" / name
        trained = run_recipe(recipe, out, data_dir=a.data_dir, latency=False)[0]
        # Measured again from the saved file, so that a rerun on a quiet machine refreshes latency.
        model = ts.load(out / "model.slim")
        shape = (model.torchslim.arch["kwargs"]["in_channels"],) + (model.torchslim.arch["kwargs"]["input_size"],) * 2
        row = {
            "model": name,
            "method": "float",
            **measure(model, shape, loader=test, path=out / "model.slim"),
            "train_seconds": trained.get("train_seconds"),
        }
        rows.append({**row, "kwargs": " ".join(f"{k}={v}" for k, v in kwargs.items()), "epochs": train["epochs"]})
        if name in HEADLINE:
            (ROOT / "artifacts").mkdir(exist_ok=True)
            shutil.copyfile(out / "model.slim", ROOT / "artifacts" / f"{name}.slim")
        write_report(
            rows, ROOT / "results" / "baselines", COLUMNS, title="Float baselines on Fashion-MNIST (test split)"
        )


if __name__ == "__main__":
    main()
