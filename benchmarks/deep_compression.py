"""Deep Compression benchmark (Han et al. 2016): float -> pruned -> k-means -> Huffman,
with the file size after every stage, as in the paper's tables.

Starts from the float baselines (benchmarks/artifacts/<model>.slim) and the pruned
models of benchmarks/pruning.py (benchmarks/artifacts/<model>_magnitude.slim), so the
pruning stage is not trained twice; the quantization stage (k-means + codebook
fine-tuning) and the Huffman export run here through a recipe. Writes
benchmarks/results/deep_compression.{json,md} and
benchmarks/artifacts/<model>_deep_compression.slim.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import measure, write_report
from torchslim.recipe import run_recipe

from _common import parse, parser

ROOT = Path(__file__).resolve().parent
ART, CACHE = ROOT / "artifacts", ROOT / "cache"
QUANT = {  # model -> k-means stage (Han et al.: 8-bit convs, 5-bit FC for LeNet-5; 6-bit for LeNet-300-100)
    "lenet5": {"bits": 5, "overrides": {"re:[02]": {"bits": 8}}},
    "lenet300_100": {"bits": 6},
}
FT = {"epochs": 2, "optimizer": "adam", "lr": 0.0001, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
COLUMNS = [
    "model",
    "stage",
    "top1",
    "delta_pp",
    "bytes",
    "ratio",
    "nonzeros",
    "macs",
    "effective_macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "threads",
]


def main() -> None:
    ap = parser(__doc__)
    a = parse(ap)
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    rows = []
    for name, quant in QUANT.items():
        pruned = ART / f"{name}_magnitude.slim"
        out = CACHE / f"deep_compression_{name}"
        recipe = {
            "name": f"deep_compression_{name}",
            "model": {"from": str(pruned)},
            "data": {"name": "fashion_mnist", "batch_size": 128},
            "stages": [{"method": "quant.kmeans", "name": "kmeans", **quant, "finetune": FT}],
            "export": {"entropy": "huffman", "latency": False},
        }
        run_recipe(recipe, out, data_dir=a.data_dir)
        files = [
            ("float32", ART / f"{name}.slim"),
            ("pruned", pruned),
            ("pruned + k-means", out / "01_stage1_kmeans.slim"),
            ("+ Huffman", out / "model.slim"),
        ]
        base = None
        for stage, path in files:
            r = {
                "model": name,
                "stage": stage,
                "method": "deep_compression",
                **measure(ts.load(path), (1, 28, 28), loader=test, path=path),
            }
            base = base or r
            r["delta_pp"] = round(r["top1"] - base["top1"], 2)
            r["ratio"] = round(base["bytes"] / r["bytes"], 1)
            rows.append(r)
            print({k: r.get(k) for k in COLUMNS}, flush=True)
        shutil.copyfile(out / "model.slim", ART / f"{name}_deep_compression.slim")
    write_report(
        rows,
        ROOT / "results" / "deep_compression",
        COLUMNS,
        title="Deep Compression on Fashion-MNIST (test split): file size after each stage",
    )


if __name__ == "__main__":
    main()
