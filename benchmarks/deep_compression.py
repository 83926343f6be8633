"""Deep Compression benchmark (Han et al. 2016): float -> pruned -> k-means -> Huffman,
with the file size after every stage, as in the paper's tables; and the same storage after
sparse variational dropout (Molchanov et al. 2017) instead of magnitude pruning.

Starts from the float baselines (benchmarks/artifacts/<model>.slim) and runs one recipe per
model: AGP magnitude pruning to a higher sparsity than the magnitude-pruning benchmark (the paper
prunes LeNet's FC layers to 92-99 %), fine-tuned with KD from the float model, then k-means
codebooks with fewer bits where the layer allows (4-bit FC layers), a KD codebook fine-tune, and
the Huffman export. The ``sparse_vd`` section replaces the pruning stage by
``prune.variational_dropout`` (KL weight 1 / 55,000 ramped over 2 epochs, KD from the float
model). Writes benchmarks/results/deep_compression.{json,md} and
benchmarks/artifacts/<model>_{deep_compression,sparse_vd}.slim. Resumes from benchmarks/cache/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import measure, write_report
from torchslim.recipe import run_recipe

from _common import parse, parser, run_sections

ROOT = Path(__file__).resolve().parent
ART, CACHE = ROOT / "artifacts", ROOT / "cache"
KD = {"teacher": "original", "T": 4, "alpha": 0.5}
ADAM = {"optimizer": "adam", "weight_decay": 0.0, "schedule": "cosine", "seed": 0, "distill": KD}
STEPS = 430  # optimizer steps per epoch (55,000 training images, batch 128)
PIPELINE = {  # model -> (pruning stage fields, pruning epochs, k-means stage fields)
    # LeNet-5: 95 % overall (conv1 50 %, conv2 90 %, fc2 85 %); 6-bit convs, 4-bit FC layers
    "lenet5": (
        {"sparsity": 0.95, "overrides": {"0": {"sparsity": 0.5}, "2": {"sparsity": 0.9}, "7": {"sparsity": 0.85}}},
        20,
        {"bits": 4, "overrides": {"re:[02]": {"bits": 6}}},
    ),
    # LeNet-300-100: 95 % (fc3 80 %); 6-bit codes as in the paper
    "lenet300_100": ({"sparsity": 0.95, "overrides": {"5": {"sparsity": 0.8}}}, 30, {"bits": 6}),
}
SPARSE_VD = {  # model -> (variational dropout stage fields, epochs, k-means stage fields)
    "lenet5": ({"kl_weight": 1 / 55_000, "warmup_steps": 2 * STEPS}, 40, PIPELINE["lenet5"][2]),
    "lenet300_100": ({"kl_weight": 1 / 55_000, "warmup_steps": 2 * STEPS}, 40, PIPELINE["lenet300_100"][2]),
}
QUANT_EPOCHS = 3
COLUMNS = [
    "method",
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


def _stages(method: str, prune: dict, epochs: int) -> dict:
    if method == "deep_compression":
        agp = {"schedule": "agp", "n_steps": 10, "frequency": epochs * STEPS // 20}  # AGP over the first half
        return {"method": "prune.magnitude", "name": "prune", **agp, **prune}
    return {"method": "prune.variational_dropout", "name": "prune", **prune}


def pipeline(method: str, data_dir: str | None, test) -> list[dict]:
    """Float -> pruned (magnitude AGP or variational dropout) -> k-means -> Huffman, per model."""
    rows = []
    for name, (prune, epochs, quant) in (PIPELINE if method == "deep_compression" else SPARSE_VD).items():
        out = CACHE / f"{method}_{name}"
        recipe = {
            "name": f"{method}_{name}",
            "model": {"from": str(ART / f"{name}.slim")},
            "data": {"name": "fashion_mnist", "batch_size": 128},
            "stages": [
                {**_stages(method, prune, epochs), "finetune": {"epochs": epochs, "lr": 0.001, **ADAM}},
                {
                    "method": "quant.kmeans",
                    "name": "kmeans",
                    **quant,
                    "finetune": {"epochs": QUANT_EPOCHS, "lr": 0.0001, **ADAM},
                },
            ],
            "export": {"entropy": "huffman", "latency": False},
        }
        run_recipe(recipe, out, data_dir=data_dir)
        files = [
            ("float32", ART / f"{name}.slim"),
            ("pruned", out / "01_stage1_prune.slim"),
            ("pruned + k-means", out / "02_stage2_kmeans.slim"),
            ("+ Huffman", out / "model.slim"),
        ]
        base = None
        for stage, path in files:
            r = {
                "model": name,
                "stage": stage,
                "method": method,
                **measure(ts.load(path), (1, 28, 28), loader=test, path=path),
            }
            base = base or r
            r["delta_pp"] = round(r["top1"] - base["top1"], 2)
            r["ratio"] = round(base["bytes"] / r["bytes"], 1)
            rows.append(r)
            print({k: r.get(k) for k in COLUMNS}, flush=True)
        shutil.copyfile(out / "model.slim", ART / f"{name}_{method}.slim")
    return rows


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=["deep_compression", "sparse_vd"])
    a = parse(ap)
    test = make_loaders(DataConfig(dir=a.data_dir)).test
    methods = ("deep_compression", "sparse_vd")
    cache, results = CACHE / "deep_compression_sections.json", ROOT / "results" / "deep_compression.json"
    if not cache.exists() and results.exists():  # a section not rerun keeps its committed rows
        committed = json.loads(results.read_text())
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({m: [r for r in committed if r["method"] == m] for m in methods}))
    runners = {m: (lambda m=m: pipeline(m, a.data_dir, test)) for m in methods}
    sections = run_sections(cache, a.only, runners)
    rows = [r for k in methods for r in sections.get(k, [])]
    write_report(
        rows,
        ROOT / "results" / "deep_compression",
        COLUMNS,
        title="Deep Compression on Fashion-MNIST (test split): file size after each stage",
    )


if __name__ == "__main__":
    main()
