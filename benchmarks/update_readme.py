"""Copy the benchmark tables from benchmarks/results/*.md into README.md and docs/*.md between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` markers, so that the numbers in the
documentation are exactly the ones the benchmark scripts (and ``update_results.py``) wrote.
``results:headline`` is the README's one small table, built from the results rows that a
committed artifact backs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from _common import float_base

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"

# (artifact, label, results file): the README's headline rows
HEADLINE = [
    ("lenet5_deep_compression.slim", "Deep Compression: AGP pruning + k-means + Huffman", "deep_compression"),
    ("lenet5_sparse_vd.slim", "sparse variational dropout + k-means + Huffman", "deep_compression"),
    ("lenet5_magnitude.slim", "magnitude pruning (AGP + KD), 92.5 % sparse", "pruning"),
    ("vgg_small_filters.slim", "filter pruning (L1) to 49 % of MACs", "pruning"),
    ("resnet20_filters.slim", "filter pruning (L1) to 59 % of MACs", "pruning"),
    ("vgg_small_int8.slim", "uniform int8 weights + activations (PTQ)", "quantization"),
    ("vgg_small_kmeans4.slim", "k-means 4-bit codebooks, 1 epoch fine-tuning", "quantization"),
    ("vgg_small_tucker.slim", "Tucker-2 to 50 % of MACs", "lowrank"),
    ("lenet300_100_svd.slim", "truncated SVD to 30 % of MACs", "lowrank"),
    ("vgg_small_bwn.slim", "binary weights (BWN)", "binary"),
    ("vgg_small_xnor.slim", "XNOR-Net + Bi-Real shortcuts, learned thresholds, KD", "binary"),
    ("vgg_small_bnn.slim", "BNN + Bi-Real shortcuts, learned thresholds and scales, KD", "binary"),
    ("vgg_small_bnn_plain.slim", "BNN without shortcuts (bits between binary convs), learned thresholds, KD", "binary"),
]


def headline_table() -> str:
    lines = [
        "| method | model | top-1 (float) | accuracy delta | file smaller | speed-up b256 (vs PyTorch / same runtime) "
        "| artifact |",
        "|---|---|---|---|---|---|---|",
    ]
    speed_rows = json.loads((RES / "speed.json").read_text())
    for artifact, label, file in HEADLINE:
        rows = json.loads((RES / f"{file}.json").read_text())
        row = next(r for r in rows if r.get("artifact") == artifact)
        base = float_base(rows, row)
        model = row.get("model") or base.get("artifact", "").removesuffix(".slim")
        speed = next(
            (
                f"{r['vs_float_pytorch_b256']:.2f}x / {r['speedup_b256']:.2f}x"
                for r in speed_rows
                if r["artifact"] == artifact and r["engine"] == "eager"
            ),
            "",
        )
        lines.append(
            f"| {label} | {model} | {row['top1']:.2f} ({base['top1']:.2f}) | "
            f"{row['top1'] - base['top1']:+.2f} pp | {base['bytes'] / row['bytes']:.1f}x | {speed} | "
            f"[{artifact}](benchmarks/artifacts/{artifact}) |"
        )
    return "\n".join(lines)


# (paper, its headline claim as reported, its data, results file, row selector, what the row is)
PAPERS = [
    (
        "Han et al. 2015, pruning",
        "LeNet-5 12x fewer weights, no loss",
        "MNIST",
        "pruning",
        {"model": "lenet5", "method": "torchslim prune.magnitude"},
        "lenet5, AGP + KD",
    ),
    (
        "Han et al. 2016, Deep Compression",
        "LeNet-5 39x, LeNet-300-100 40x smaller, no loss",
        "MNIST",
        "deep_compression",
        {"method": "deep_compression", "model": "lenet5", "stage": "+ Huffman"},
        "lenet5, whole file",
    ),
    (
        "",
        "",
        "",
        "deep_compression",
        {"method": "deep_compression", "model": "lenet300_100", "stage": "+ Huffman"},
        "lenet300_100, whole file",
    ),
    (
        "Molchanov et al. 2017, sparse variational dropout",
        "LeNet-5 280x, LeNet-300-100 68x fewer weights, no loss",
        "MNIST",
        "deep_compression",
        {"method": "sparse_vd", "model": "lenet5", "stage": "+ Huffman"},
        "lenet5, + k-means + Huffman, whole file",
    ),
    (
        "",
        "",
        "",
        "deep_compression",
        {"method": "sparse_vd", "model": "lenet300_100", "stage": "+ Huffman"},
        "lenet300_100, + k-means + Huffman, whole file",
    ),
    (
        "Liu et al. 2017, network slimming",
        "VGGNet 20x fewer weights, no loss",
        "CIFAR-10",
        "reproduce",
        {"section": "slimming", "method": "prune.slimming"},
        "vgg_small, 50 % of channels, 2 + 2 epochs",
    ),
    (
        "Li et al. 2017, filter pruning",
        "VGG-16 -34 % FLOPs, no loss",
        "CIFAR-10",
        "pruning",
        {"model": "vgg_small", "method": "torchslim prune.filters", "setting": "L1, <= 50% MACs, 3 ep"},
        "vgg_small, L1",
    ),
    (
        "Jaderberg et al. 2014, spatial low-rank",
        "2.5x faster, no loss; 4.5x, < 1 % loss",
        "text characters",
        "lowrank",
        {"model": "vgg_small", "method": "lowrank.spatial"},
        "vgg_small",
    ),
    (
        "Denton et al. 2014, SVD",
        "FC weights 5-13x fewer, < 1 % loss",
        "ImageNet",
        "lowrank",
        {"model": "lenet300_100", "method": "lowrank.svd"},
        "lenet300_100",
    ),
    (
        "Lebedev et al. 2015, CP",
        "4.5x faster conv layer, 1 % top-5 loss",
        "ImageNet",
        "lowrank",
        {"section": "cp", "method": "lowrank.cp"},
        "vgg_small, fine-tuned at lr 0.001",
    ),
    (
        "Wu et al. 2016, Q-CNN",
        "15-20x smaller, 4-6x faster, ~1 % top-5 loss",
        "ImageNet",
        "quantization",
        {"method": "quant.qcnn"},
        "vgg_small, 1 bit/weight",
    ),
    (
        "Courbariaux et al. 2015, BinaryConnect",
        "MLP 1.29 % error, float 1.30 %",
        "MNIST",
        "reproduce",
        {"section": "binaryconnect", "method": "binary.connect"},
        "lenet300_100 (no BatchNorm: unscaled +/-1 weights blow activations up), every layer, 10 epochs",
    ),
    (
        "Rastegari et al. 2016, BWN",
        "AlexNet 32x smaller weights, no loss",
        "ImageNet",
        "binary",
        {"model": "vgg_small", "method": "binary.bwn"},
        "vgg_small",
    ),
    (
        "Rastegari et al. 2016, XNOR-Net",
        "AlexNet -12.4 pp top-1, 58x faster convs",
        "ImageNet",
        "binary",
        {"model": "vgg_small", "method": "binary.xnor"},
        "vgg_small, Bi-Real shortcuts + learned thresholds + KD, 8 epochs",
    ),
    (
        "",
        "",
        "",
        "binary",
        {"model": "resnet20", "method": "binary.xnor"},
        "resnet20, the same recipe, 5 epochs",
    ),
    (
        "Hubara et al. 2016, BNN",
        "88.6 % (-1.7 pp vs float)",
        "CIFAR-10",
        "binary",
        {"model": "vgg_small", "method": "binary.bnn", "artifact": "vgg_small_bnn.slim"},
        "vgg_small, Bi-Real shortcuts + learned thresholds and scales + KD, 8 epochs",
    ),
    (
        "Romero et al. 2015, FitNets",
        "thin student beats its teacher at 10x fewer weights",
        "CIFAR-10",
        "reproduce",
        {"section": "fitnets", "method": "distill (hints + KD)"},
        "vgg_small width-12 student of vgg_small, hint + KD, 6 epochs, seed 0",
    ),
]
NOT_MEASURED: list[tuple[str, str, str]] = []  # (paper, claim, data) of papers without a benchmark row yet


def reproduction_table() -> str:
    """Each paper's headline claim beside what torchslim measures for the same method on
    Fashion-MNIST, from the results files (ratio: bytes vs the float file, or MACs kept)."""
    lines = [
        "| paper | its claim (as reported) | its data | torchslim on Fashion-MNIST | top-1 delta | smaller / MACs |",
        "|---|---|---|---|---|---|",
    ]
    for paper, claim, data, file, want, what in PAPERS:
        rows = json.loads((RES / f"{file}.json").read_text())
        row = next(r for r in rows if all(r.get(k) == v for k, v in want.items()))
        base = float_base(rows, row)
        size = f"{base['bytes'] / row['bytes']:.1f}x file"
        if row.get("macs") and base.get("macs") and row["macs"] < base["macs"]:
            size += f", {100 * row['macs'] / base['macs']:.0f} % MACs"
        if row.get("nonzeros") and base.get("nonzeros") and row["nonzeros"] < row.get("params", 0):
            size += f", {base['nonzeros'] / row['nonzeros']:.1f}x fewer nonzeros"
        art = f" ([{row['artifact']}](benchmarks/artifacts/{row['artifact']}))" if row.get("artifact") else ""
        lines.append(
            f"| {paper} | {claim} | {data} | {what}: {row['top1']:.2f} % vs {base['top1']:.2f} %{art} | "
            f"{row['top1'] - base['top1']:+.2f} pp | {size} |"
        )
    summary = json.loads((RES / "distill.json").read_text())["summary"]
    kd, alone = (
        next(r for r in summary if r["student"] == "lenet5" and r.get("epochs") == 15 and r["mode"] == m)
        for m in ("KD", "alone")
    )
    lines.append(
        f"| Hinton et al. 2015, KD | small net 146 -> 74 test errors with KD | MNIST | lenet5 student of vgg_small, "
        f"15 ep, 3 seeds: {kd['top1_mean']:.2f} % with KD vs {alone['top1_mean']:.2f} % alone | "
        f"{kd['top1_mean'] - alone['top1_mean']:+.2f} pp (KD gain) | "
        f"{kd['teacher_macs_ratio']:.1f}x fewer MACs than the teacher |"
    )
    for paper, claim, data in NOT_MEASURED:
        lines.append(f"| {paper} | {claim} | {data} | not measured by a benchmark yet | | |")
    return "\n".join(lines)


def speed_table() -> str:
    """The README's speed table: each compressed artifact in torchslim's eager runtime at batch 256
    against its float model (benchmarks/results/speed.json), batch 1, the same run as an AVX2-only
    CPU (speed_avx2.json, where present), the target and the profile."""
    lines = [
        "| artifact | b256 ms | vs float (PyTorch) | vs float (same runtime) | b1 vs float (PyTorch / same) "
        "| AVX2-only b256 (PyTorch / same) | target | met | where the time goes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    avx2_path = RES / "speed_avx2.json"
    avx2 = {
        r["artifact"]: r
        for r in (json.loads(avx2_path.read_text()) if avx2_path.exists() else [])
        if r["engine"] == "eager" and "speedup_b256" in r
    }
    for r in json.loads((RES / "speed.json").read_text()):
        if r["engine"] != "eager" or "speedup_b256" not in r:
            continue
        a = avx2.get(r["artifact"])
        a_cell = f"{a['vs_float_pytorch_b256']:.2f}x / {a['speedup_b256']:.2f}x" if a else "not capped (fbgemm)"
        lines.append(
            f"| {r['artifact']} | {r['b256_ms']:.1f} | {r['vs_float_pytorch_b256']:.2f}x | {r['speedup_b256']:.2f}x | "
            f"{r['vs_float_pytorch_b1']:.2f}x / {r['speedup_b1']:.2f}x | {a_cell} | "
            f"{r.get('target_b256', '')} | {'yes' if r.get('met') else 'no' if 'met' in r else ''} | "
            f"{r.get('where_time_goes_b256', '')} |"
        )
    return "\n".join(lines)


def deploy_table() -> str:
    """The README's deploy table: per artifact, ONNX Runtime's top-1 beside torchslim's, the ONNX
    file beside the .slim file, and ONNX Runtime's time as a fraction of the float model's there
    (benchmarks/results/deploy.json)."""
    lines = [
        "| artifact | top-1 torchslim / ONNX Runtime | .slim / ONNX bytes | b256 ms: eager / ORT / compile / export "
        "| ORT time vs float b1 / b256 |",
        "|---|---|---|---|---|",
    ]
    for r in json.loads((RES / "deploy.json").read_text()):
        keys = (f"{e}_b256_ms" for e in ("eager", "ort", "compile", "export"))
        times = " / ".join(f"{r[k]:.1f}" if r.get(k) else "-" for k in keys)
        lines.append(
            f"| {r['artifact']} | {r['top1']:.2f} / {r['ort_top1']:.2f} | {r['slim_bytes']:,} / {r['onnx_bytes']:,} "
            f"| {times} | {r['ort_b1_vs_float']:.2f} / {r['ort_b256_vs_float']:.2f} |"
        )
    return "\n".join(lines)


def table(name: str) -> str | None:
    if name == "headline":
        return headline_table()
    if name == "deploy-summary":
        return deploy_table()
    if name == "speed-summary":
        return speed_table()
    if name == "reproduction":
        return reproduction_table()
    md = RES / f"{name}.md"
    if not md.exists():
        return None
    return "\n".join(line for line in md.read_text().splitlines() if not line.startswith("# ")).strip()


def update(path: Path) -> None:
    text = path.read_text()
    for name in re.findall(r"<!-- results:([\w-]+) -->", text):
        body = table(name)
        if body is not None:
            text = re.sub(
                rf"<!-- results:{name} -->.*?<!-- /results:{name} -->",
                lambda _m, n=name, b=body: f"<!-- results:{n} -->\n{b}\n<!-- /results:{n} -->",
                text,
                flags=re.S,
            )
    path.write_text(text)


def main() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        update(path)


if __name__ == "__main__":
    main()
