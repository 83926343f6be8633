"""Binary-network benchmark: packed xnor-popcount kernels against float32 torch, and
binarized vgg_small models (BWN, XNOR-Net, BNN, DoReFa 2-bit) against the float model and
torch.ao static int8, in one run.

Sections (``--only`` picks some):
  kernel  binary conv (256 -> 256, 3x3, 16x16 maps, batch 16, padding 1) and binary
          linear (M=256, K=4608, N=256) against float32 conv / matmul of the same shape.
  float, bwn, xnor, bnn, kbit2, peer
          the float baseline; each method fine-tuned from it (Adam, cosine; first conv and last
          linear float), converted to packed layers; accuracy, file bytes (whole-model latency of
          the artifacts: benchmarks/speed.py, measured alone on a quiet machine); exactness:
          max |packed logits - fake-binarized logits| over the test set, the share of identical
          predictions, and the fraction of binary-layer input signs that differ (values within
          float rounding of 0 can flip; each packed layer is exact on equal inputs). XNOR-Net and
          BNN train with Bi-Real real-valued shortcuts, ReActNet's learned sign thresholds (BNN
          also with XNOR-Net++'s learned scales, for the hidden FC layer that no BatchNorm follows) and
          knowledge distillation from the float model (Hinton KD on logits, T=4, alpha=0.9) for
          8 epochs; BWN and DoReFa 2-bit train 4 epochs without them. torch.ao static int8 is the peer.
          resnet20_xnor: the same XNOR-Net recipe on resnet20 for 5 epochs (its 1x1 projection
          shortcuts float).

Writes benchmarks/results/binary.{json,md}, binary_kernel.{json,md} and the artifacts
benchmarks/artifacts/vgg_small_{xnor,bnn,bwn}.slim and resnet20_xnor.slim.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import benchmark

import torchslim as ts
from torchslim.api import method_callbacks
from torchslim.binary import BNN, BWN, XNOR, KBit
from torchslim.data import DataConfig, make_loaders
from torchslim.distill import Distill
from torchslim.measure import measure, write_report
from torchslim.runtime.binary import PackedBinaryConv2d, PackedBinaryLinear
from torchslim.train import TrainConfig, fit

from _common import compare, parse, parser, run_sections, state_bytes, torch_ao_int8

ROOT = Path(__file__).resolve().parent
ART, CACHE, RES = ROOT / "artifacts", ROOT / "cache", ROOT / "results"
SHAPE = (1, 28, 28)
NAME = "vgg_small"
FT = {"epochs": 4, "optimizer": "adam", "lr": 0.0005, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
LONG = {**FT, "epochs": 8}
# tag: (model, config, fine-tuning, distil from the float model)
METHODS = {
    "bwn": (NAME, BWN(), FT, False),
    "xnor": (NAME, XNOR(shortcut=True, threshold=True), LONG, True),
    "bnn": (NAME, BNN(shortcut=True, threshold=True, learned_scale=True), LONG, True),
    # the same BNN recipe with a 2.5x longer schedule: the gap to float against training length
    "bnn_long": (NAME, BNN(shortcut=True, threshold=True, learned_scale=True), {**FT, "epochs": 20}, True),
    # no shortcuts: signs are all that passes between binary convs, so the eager engine runs the
    # binary blocks in bits (each conv emits the next one's packed words)
    "bnn_plain": (NAME, BNN(threshold=True, learned_scale=True), LONG, True),
    "kbit2": (NAME, KBit(weight_bits=2, act_bits=2), FT, False),
    # resnet20's 1x1 projection shortcuts stay float (binarized 1x1 convs lose much accuracy)
    # 5 epochs: resnet20's fake-binary epoch takes about 9 minutes on one core
    "resnet20_xnor": (
        "resnet20",
        XNOR(shortcut=True, threshold=True, exclude=("re:.*shortcut.*",)),
        {**FT, "epochs": 5},
        True,
    ),
}
FLOATS = {"float": NAME, "float_resnet20": "resnet20"}
COLUMNS = [
    "model",
    "method",
    "setting",
    "top1",
    "delta_pp",
    "bytes",
    "bytes_ratio",
    "max_abs_logit_diff",
    "same_prediction_pct",
    "sign_flip_fraction",
    "train_seconds",
]


def _ms(stmt: str, **g) -> float:
    t = benchmark.Timer(stmt, globals=g, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=1.0).median * 1e3


@torch.no_grad()
def kernel() -> list[dict]:
    torch.manual_seed(0)
    rows = []
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    packed = PackedBinaryConv2d(256, 256, [3, 3], [1, 1], [1, 1])
    packed.set_weight(torch.where(conv.weight < 0, -1.0, 1.0), torch.ones(256), torch.zeros(256))
    x = torch.randn(16, 256, 16, 16)
    assert torch.equal(packed(x), F.conv2d(torch.where(x < 0, -1.0, 1.0), packed.float_weight(), padding=1))
    rows.append(
        {
            "layer": "conv 256->256 3x3, 16x16, batch 16, pad 1",
            "float32_ms": _ms("m(x)", m=conv, x=x),
            "packed_ms": _ms("m(x)", m=packed, x=x),
        }
    )
    # both channels-last, as the eager engine runs a binary model (oneDNN's NHWC conv against the
    # packed conv's NHWC packing and output)
    xl = x.contiguous(memory_format=torch.channels_last)
    conv_l = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    assert torch.equal(packed(xl), packed(x))
    rows.append(
        {
            "layer": "conv 256->256 3x3, 16x16, batch 16, pad 1, channels-last",
            "float32_ms": _ms("m(x)", m=conv_l, x=xl),
            "packed_ms": _ms("m(x)", m=packed, x=xl),
        }
    )
    lin = nn.Linear(4608, 256, bias=False)
    plin = PackedBinaryLinear(4608, 256)
    plin.set_weight(torch.where(lin.weight < 0, -1.0, 1.0), torch.ones(256), torch.zeros(256))
    xl = torch.randn(256, 4608)
    rows.append(
        {
            "layer": "linear M=256, K=4608, N=256",
            "float32_ms": _ms("m(x)", m=lin, x=xl),
            "packed_ms": _ms("m(x)", m=plin, x=xl),
        }
    )
    for r in rows:
        r.update(speedup=round(r["float32_ms"] / r["packed_ms"], 2), threads=torch.get_num_threads())
        print(json.dumps(r), flush=True)
    return rows


@torch.no_grad()
def _exactness(packed: nn.Module, fake: nn.Module, loader) -> dict:
    """Logit difference and prediction agreement over the test set, and the fraction of binary-layer
    inputs whose sign differs between the two (a value within float rounding of 0 may flip)."""

    def taps(model, types):
        seen: list = []
        hs = [
            m.register_forward_pre_hook(lambda mod, a: seen.append(a[0] < 0))
            for m in model.modules()
            if isinstance(m, types) and getattr(m, "binary_input", True) and getattr(m, "binary_activations", True)
        ]
        return seen, hs

    from torchslim.binary import BinaryConv2d, BinaryLinear

    diff, agree, n, flips, total = 0.0, 0, 0, 0, 0
    for x, _ in loader:
        s_p, h_p = taps(packed, (PackedBinaryConv2d, PackedBinaryLinear))
        s_f, h_f = taps(fake, (BinaryConv2d, BinaryLinear))
        a, b = packed(x), fake(x)
        for h in h_p + h_f:
            h.remove()
        diff = max(diff, float((a - b).abs().max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(x)
        flips += sum(int((p != f).sum()) for p, f in zip(s_p, s_f))
        total += sum(p.numel() for p in s_p)
    return {
        "max_abs_logit_diff": diff,
        "same_prediction_pct": round(100 * agree / n, 3),
        "sign_flip_fraction": flips / total if total else 0.0,
    }


def _float_row(name: str, data_dir) -> dict:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    path = ART / f"{name}.slim"
    return {
        "model": name,
        "method": "float32",
        "setting": "baseline",
        **measure(ts.load(path), SHAPE, loader=loaders.test, path=path, latency=False),
    }


def method(tag: str, data_dir, base: dict) -> list[dict]:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    name, cfg, ft, kd = METHODS[tag]
    model = ts.compress_(ts.load(ART / f"{name}.slim"), cfg)
    callbacks = method_callbacks(model)
    if kd:
        callbacks.append(Distill(ts.load(ART / f"{name}.slim").eval(), T=4.0, alpha=0.9, cache={}))
    hist = fit(
        model,
        loaders.train,
        TrainConfig(**ft),
        val_loader=loaders.val,
        callbacks=callbacks,
        checkpoint_dir=CACHE / f"binary_{tag}",
        desc=tag,
    )
    model.eval()
    fake = copy.deepcopy(model)
    ts.convert_(model)
    path = CACHE / f"binary_{tag}" / "model.slim"
    stage = {**cfg.to_dict(), "finetune": ft}
    ts.save(model, path, recipe={"model": {"from": f"{name}.slim"}, "stages": [stage]})
    packed = ts.load(path)
    extras = [k for k in ("shortcut", "threshold", "learned_scale") if getattr(cfg, k, False)] + (
        ["KD T=4 a=0.9"] if kd else []
    )
    r = {
        "model": name,
        "method": cfg.method,
        "setting": f"{ft['epochs']} ep Adam from float; first/last float" + "".join(f"; {e}" for e in extras),
        **measure(packed, SHAPE, loader=loaders.test, path=path, latency=False),
        **_exactness(packed, fake, loaders.test),
        "train_seconds": round(hist["seconds"]),
    }
    print(json.dumps({k: r.get(k) for k in COLUMNS}), flush=True)
    if tag in ("xnor", "bnn", "bnn_long", "bnn_plain", "bwn", "resnet20_xnor"):
        shutil.copyfile(path, ART / (f"{tag}.slim" if tag.startswith(name) else f"{name}_{tag}.slim"))
    return [compare(r, base)]


def peer(data_dir, base: dict) -> list[dict]:
    loaders = make_loaders(DataConfig(dir=data_dir), seed=0)
    model = torch_ao_int8(ts.load(ART / f"{NAME}.slim").eval(), True, loaders.train)
    r = {
        "model": NAME,
        "method": "torch.ao static int8",
        "setting": "FX, x86 qconfig; bytes = torch.save(state_dict)",
        **measure(model, SHAPE, loader=loaders.test, nbytes=state_bytes(model), latency=False),
    }
    return [compare(r, base)]


SECTIONS = [*FLOATS, *METHODS, "peer"]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=["kernel", *SECTIONS], choices=["kernel", *SECTIONS])
    a = parse(ap)
    cache = CACHE / "binary_sections.json"

    def base(name: str) -> dict:  # the model's float row of this run, or the cached one
        tag = next(t for t, n in FLOATS.items() if n == name)
        return json.loads(cache.read_text())[tag][0]

    runners = {"kernel": kernel}
    runners.update({t: (lambda n=n: [_float_row(n, a.data_dir)]) for t, n in FLOATS.items()})
    runners.update({t: (lambda t=t: method(t, a.data_dir, base(METHODS[t][0]))) for t in METHODS})
    runners["peer"] = lambda: peer(a.data_dir, base(NAME))
    sections = run_sections(cache, a.only, runners)
    if "kernel" in sections:
        write_report(
            sections["kernel"],
            RES / "binary_kernel",
            ["layer", "float32_ms", "packed_ms", "speedup", "threads"],
            title="Packed xnor-popcount layers vs float32 torch (same logical shape)",
        )
    if all(k in sections for k in SECTIONS):
        write_report(
            [r for k in SECTIONS for r in sections[k]],
            RES / "binary",
            COLUMNS,
            title="Binary networks on Fashion-MNIST (test split), float and torch.ao int8 in the same run",
        )


if __name__ == "__main__":
    main()
