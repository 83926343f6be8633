"""Quantization benchmark on vgg_small: k-means codebooks, product quantization against
Q-CNN, uniform int8/int4 against torch.ao's dynamic and static int8, float baseline in
the same run. (Deep Compression on the LeNets is benchmarks/deep_compression.py.)

Sections (``--only`` picks some):
  kmeans   4-bit k-means on every layer: linear / density / random initialisation
           before fine-tuning, and linear init + 1 epoch of codebook fine-tuning.
  pq       PQ and Q-CNN at the same code size (sub-vectors of 4, 4-bit codes = 1 bit
           per weight) before any fine-tuning; lookup-table vs dense latency of the
           1152->256 classifier layer at batch 1 and 256.
  uniform  int8 PTQ (int8 weights and activations on the x86 int8 kernels), int4
           weights with int8 activations (PTQ, and QAT for 1 epoch), int8 weights only,
           and torch.ao dynamic (Linear only) and static (FX, x86) int8 as peers.

Writes benchmarks/results/quantization.{json,md} and the headline models
benchmarks/artifacts/vgg_small_kmeans4.slim and vgg_small_int8.slim.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import evaluate, latency_ms, measure, write_report
from torchslim.quant import PQ, QCNN, KMeans, Uniform
from torchslim.train import TrainConfig, fit

from _common import compare, parse, parser, run_sections, state_bytes, torch_ao_int8

ROOT = Path(__file__).resolve().parent
ART, CACHE, RES = ROOT / "artifacts", ROOT / "cache", ROOT / "results"
SHAPE = (1, 28, 28)
NAME = "vgg_small"
COLUMNS = [
    "section",
    "method",
    "setting",
    "top1_before_ft",
    "top1",
    "delta_pp",
    "bytes",
    "bytes_ratio",
    "latency_b1_ms",
    "latency_b256_ms",
    "speedup_b1",
    "speedup_b256",
    "threads",
]
KMEANS_FT = {"epochs": 1, "optimizer": "adam", "lr": 0.0001, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
QAT_FT = {"epochs": 1, "optimizer": "sgd", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}


class _Run:
    def __init__(self, data_dir):
        self.loaders = make_loaders(DataConfig(dir=data_dir, augment=False), seed=0)
        self.test = self.loaders.test
        self._base: dict | None = None

    def model(self) -> nn.Module:
        return ts.load(ART / f"{NAME}.slim")

    def base(self) -> dict:
        """The float baseline, measured once in this run."""
        if self._base is None:
            self._base = {
                "section": "baseline",
                "method": "float32",
                "setting": "",
                **measure(self.model(), SHAPE, loader=self.test, path=ART / f"{NAME}.slim"),
            }
        return self._base

    def row(self, model, section, method, setting, path=None, before=None, nbytes=None) -> dict:
        r = {
            "section": section,
            "method": method,
            "setting": setting,
            "top1_before_ft": before,
            **measure(model.eval(), SHAPE, loader=self.test, path=path, min_run_time=1.0, nbytes=nbytes),
        }
        compare(r, self.base())
        print(json.dumps({k: r.get(k) for k in COLUMNS}), flush=True)
        return r

    def tuned(self, model: nn.Module, tag: str, ft: dict) -> tuple[nn.Module, float, Path]:
        """Fine-tune a prepared model (codebook fine-tuning / QAT), convert and save it."""
        before = evaluate(ts.convert_(copy.deepcopy(model)), self.test)["top1"]
        fit(
            model,
            self.loaders.train,
            TrainConfig(**ft),
            val_loader=self.loaders.val,
            checkpoint_dir=CACHE / tag,
            desc=tag,
        )
        ts.convert_(model)
        path = CACHE / tag / "model.slim"
        ts.save(model, path, recipe={"model": {"from": f"{NAME}.slim"}, "finetune": ft})
        return ts.load(path), before, path


def kmeans(run: _Run) -> list[dict]:
    rows = []
    for init in ("linear", "density", "random"):
        m = ts.convert_(ts.compress_(run.model(), KMeans(bits=4, init=init)))
        rows.append(run.row(m, "kmeans", "quant.kmeans", f"4 bits, {init} init, no fine-tuning"))
    model, before, path = run.tuned(
        ts.compress_(run.model(), KMeans(bits=4, init="linear")), "quant_kmeans4", KMEANS_FT
    )
    rows.append(
        run.row(model, "kmeans", "quant.kmeans", "4 bits, linear init, codebook fine-tuning 1 ep", path, before)
    )
    shutil.copyfile(path, ART / f"{NAME}_kmeans4.slim")
    return rows


def pq(run: _Run) -> list[dict]:
    rows = []
    # 16 codewords per sub-space (a sub-space needs more rows than codewords: vgg_small's layers have
    # 32-256 rows); the 1-channel first conv has 9-long rows and stays float.
    fields = {"sub_dim": 4, "bits": 4, "exclude": ("0.0",)}
    models = {
        "PQ": ts.convert_(ts.compress_(run.model(), PQ(**fields))),
        "Q-CNN": ts.convert_(ts.compress_(run.model(), QCNN(**fields), data=run.loaders.train)),
    }
    for label, m in models.items():
        rows.append(
            run.row(
                m, "pq", f"quant.{'pq' if label == 'PQ' else 'qcnn'}", "d=4, 4-bit codes (1 bit/weight), no fine-tuning"
            )
        )
    layer = dict(models["Q-CNN"].named_modules())["2.0"]
    chosen = (layer.kernel, layer.lut_batch)  # what convert measured and kept (kernel=auto)
    dense = dict(run.model().named_modules())["2.0"]
    for b in (1, 4, 16, 256):
        r = {
            "section": "pq",
            "method": "classifier layer 1152->256",
            "setting": f"batch {b}",
            "threads": torch.get_num_threads(),
            "chosen": f"{chosen[0]} up to batch {chosen[1]}" if chosen[1] else chosen[0],
        }
        r["float_ms"] = latency_ms(dense, (1152,), b, min_run_time=1.0)
        for k in ("lut", "dense"):
            layer.kernel, layer.lut_batch = k, None  # each kernel at every batch
            r[f"pq_{k}_ms"] = latency_ms(layer, (1152,), b, min_run_time=1.0)
        r["lut_speedup"] = round(r["float_ms"] / r["pq_lut_ms"], 2)
        print(json.dumps(r), flush=True)
        rows.append(r)
    layer.kernel, layer.lut_batch = chosen
    return rows


def uniform(run: _Run) -> list[dict]:
    rows, train = [], run.loaders.train
    for tag, cfg, setting in [
        ("int8", Uniform(), "int8 weights + activations, PTQ (x86 int8 kernels)"),
        ("w4a8", Uniform(bits=4), "int4 weights + int8 activations, PTQ"),
        ("w8", Uniform(act_bits=0), "int8 weights only, PTQ (float compute)"),
    ]:
        m = ts.convert_(ts.compress_(run.model().eval(), cfg, data=train))
        path = CACHE / f"quant_{tag}.slim"
        ts.save(
            m,
            path,
            recipe={"model": {"from": f"{NAME}.slim"}, "stages": [{"method": "quant.uniform", **cfg.to_dict()}]},
        )
        rows.append(run.row(ts.load(path), "uniform", "quant.uniform", setting, path))
        if tag == "int8":
            shutil.copyfile(path, ART / f"{NAME}_int8.slim")
    model, before, path = run.tuned(
        ts.compress_(run.model().eval(), Uniform(bits=4), data=train), "quant_w4a8_qat", QAT_FT
    )
    rows.append(run.row(model, "uniform", "quant.uniform", "int4 weights + int8 activations, QAT 1 ep", path, before))
    for static in (False, True):
        peer = torch_ao_int8(run.model().eval(), static, train)
        label = "static int8 (FX, x86 qconfig)" if static else "dynamic int8 (Linear layers)"
        rows.append(
            run.row(peer, "uniform", "torch.ao", label + "; bytes = torch.save(state_dict)", nbytes=state_bytes(peer))
        )
    return rows


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=["kmeans", "pq", "uniform"])
    a = parse(ap)
    run = _Run(a.data_dir)
    sections = run_sections(
        CACHE / "quantization_sections.json",
        a.only,
        {"kmeans": lambda: kmeans(run), "pq": lambda: pq(run), "uniform": lambda: uniform(run)},
    )
    model_rows = [run.base()] + [r for k in ("kmeans", "pq", "uniform") for r in sections.get(k, []) if "top1" in r]
    write_report(
        model_rows,
        RES / "quantization",
        COLUMNS,
        title=f"Quantization of {NAME} on Fashion-MNIST (test split), float baseline and torch.ao in the same run",
    )
    lut = [r for r in sections.get("pq", []) if "float_ms" in r]
    if lut:
        write_report(
            lut,
            RES / "pq_lut_kernel",
            ["method", "setting", "float_ms", "pq_lut_ms", "pq_dense_ms", "lut_speedup", "chosen", "threads"],
            title="Product-quantized classifier layer: lookup-table kernel vs dense float",
        )


if __name__ == "__main__":
    main()
