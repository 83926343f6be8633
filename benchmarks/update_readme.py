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
    ("lenet5_magnitude.slim", "magnitude pruning (AGP + KD), 92.5 % sparse", "pruning"),
    ("vgg_small_filters.slim", "filter pruning (L1) to 49 % of MACs", "pruning"),
    ("resnet20_filters.slim", "filter pruning (L1) to 59 % of MACs", "pruning"),
    ("vgg_small_int8.slim", "uniform int8 weights + activations (PTQ)", "quantization"),
    ("vgg_small_kmeans4.slim", "k-means 4-bit codebooks, 1 epoch fine-tuning", "quantization"),
    ("vgg_small_tucker.slim", "Tucker-2 to 50 % of MACs", "lowrank"),
    ("lenet300_100_svd.slim", "truncated SVD to 30 % of MACs", "lowrank"),
    ("vgg_small_bwn.slim", "binary weights (BWN)", "binary"),
    ("vgg_small_xnor.slim", "XNOR-Net (binary weights + activations)", "binary"),
]


def headline_table() -> str:
    lines = [
        "| method | model | top-1 (float) | accuracy delta | file smaller | speedup b256 | artifact |",
        "|---|---|---|---|---|---|---|",
    ]
    for artifact, label, file in HEADLINE:
        rows = json.loads((RES / f"{file}.json").read_text())
        row = next(r for r in rows if r.get("artifact") == artifact)
        base = float_base(rows, row)
        model = row.get("model") or base.get("artifact", "").removesuffix(".slim")
        speed = (
            f"{base['latency_b256_ms'] / row['latency_b256_ms']:.2f}x"
            if row.get("latency_b256_ms") and base.get("latency_b256_ms")
            else ""
        )
        lines.append(
            f"| {label} | {model} | {row['top1']:.2f} ({base['top1']:.2f}) | "
            f"{row['top1'] - base['top1']:+.2f} pp | {base['bytes'] / row['bytes']:.1f}x | {speed} | "
            f"[{artifact}](benchmarks/artifacts/{artifact}) |"
        )
    return "\n".join(lines)


def deploy_table() -> str:
    """The README's deploy table: per artifact, ONNX Runtime's top-1 beside torchslim's and the
    batch-256 latency in each engine (benchmarks/results/deploy.json)."""
    lines = [
        "| artifact | top-1 torchslim / ONNX Runtime | ONNX bytes | b256 ms: eager / ORT / compile | ORT vs eager |",
        "|---|---|---|---|---|",
    ]
    for r in json.loads((RES / "deploy.json").read_text()):
        times = " / ".join(
            f"{r[k]:.1f}" if r.get(k) else "-" for k in ("eager_b256_ms", "ort_b256_ms", "compile_b256_ms")
        )
        lines.append(
            f"| {r['artifact']} | {r['top1']:.2f} / {r['ort_top1']:.2f} | {r['onnx_bytes']:,} | {times} | "
            f"{r['ort_speedup_b256']:.2f}x |"
        )
    return "\n".join(lines)


def table(name: str) -> str | None:
    if name == "headline":
        return headline_table()
    if name == "deploy-summary":
        return deploy_table()
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
