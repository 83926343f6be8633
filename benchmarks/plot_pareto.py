"""Accuracy against file size and against latency for every committed artifact, one colour per
base model, with each model's Pareto front: docs/pareto_bytes.png and docs/pareto_latency.png.
Reads benchmarks/results/artifacts.json (``update_results.py``) and the benchmark rows' latency
at batch 256 (measured by the benchmark scripts on an otherwise idle machine)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RES, DOCS = ROOT / "results", ROOT.parent / "docs"
BASES = ("lenet300_100", "lenet5", "mobilenetv2_w0.5", "vgg_small_w12", "vgg_small", "resnet20")


def base_of(artifact: str) -> str:
    return next(b for b in BASES if artifact.startswith(b))


def latency_b256() -> dict[str, float]:
    out: dict[str, float] = {}
    for f in RES.glob("*.json"):
        rows = json.loads(f.read_text())
        for r in rows if isinstance(rows, list) else []:
            if r.get("artifact") and r.get("latency_b256_ms") and r["artifact"] not in out:
                out[r["artifact"]] = r["latency_b256_ms"]
    return out


def plot(points: list[tuple[str, float, float]], xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, base in enumerate(BASES):
        pts = sorted((x, y, a) for a, x, y in points if base_of(a) == base)
        if not pts:
            continue
        color = f"C{i}"
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=base, s=18)
        front, best = [], -1.0
        for x, y, _ in pts:  # smallest x first: a point is on the front if more accurate
            if y > best:
                front.append((x, y))
                best = y
        ax.plot(*zip(*front), color=color, alpha=0.5, drawstyle="steps-post")
        for x, y, a in pts:
            ax.annotate(
                a.removesuffix(".slim").removeprefix(base).strip("_") or "float",
                (x, y),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 on the Fashion-MNIST test split (%)")
    ax.set_ylim(80, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    arts = json.loads((RES / "artifacts.json").read_text())
    plot([(a["artifact"], a["bytes"], a["top1"]) for a in arts], "file bytes (.slim)", DOCS / "pareto_bytes.png")
    lat = latency_b256()
    plot(
        [(a["artifact"], lat[a["artifact"]], a["top1"]) for a in arts if a["artifact"] in lat],
        "latency at batch 256 (ms, 2 threads)",
        DOCS / "pareto_latency.png",
    )
    print(f"wrote {DOCS / 'pareto_bytes.png'}, {DOCS / 'pareto_latency.png'}")


if __name__ == "__main__":
    main()
