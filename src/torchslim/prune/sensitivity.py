"""Sensitivity analysis (as in Distiller; Li et al. 2017, sec. 3.2): prune one layer
at a time at several ratios, evaluate, and see which layers tolerate pruning.

``auto_overrides`` turns the table into per-layer ratios for a target accuracy
drop: each layer gets the largest tested ratio whose drop, alone, stays within
``max_drop`` percentage points.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch.nn as nn
from torch.utils.data import DataLoader

from torchslim.api import compress_
from torchslim.core.registry import get_method
from torchslim.core.select import select
from torchslim.measure.accuracy import evaluate

RATIO_FIELD = {"prune.magnitude": "sparsity", "prune.filters": "ratio"}


def sensitivity(
    model: nn.Module,
    loader: DataLoader,
    method: str = "prune.magnitude",
    ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    layers: Sequence[str] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Rows ``{layer, ratio, top1, drop}`` from pruning each layer alone (the model is not changed)."""
    if method not in RATIO_FIELD:
        raise ValueError(f"sensitivity supports {sorted(RATIO_FIELD)}, got {method!r}")
    cfg_cls = get_method(method).config_cls
    field = RATIO_FIELD[method]
    base = evaluate(model, loader)["top1"]
    kw = {"layers": tuple(layers)} if layers else {}
    names = [n for n, _, _ in select(model, cfg_cls(**kw), (nn.Conv2d, nn.Linear))]
    if method == "prune.filters":
        last = names[-1:]  # the classifier's outputs are the classes
        names = [n for n in names if n not in last]
    rows = [{"layer": "(none)", "ratio": 0.0, "top1": base, "drop": 0.0}]
    for name in names:
        for r in ratios:
            trial = copy.deepcopy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compress_(trial, cfg_cls(**{field: r, "layers": (name,)}))
            top1 = evaluate(trial, loader)["top1"]
            rows.append({"layer": name, "ratio": r, "top1": top1, "drop": base - top1})
        if progress:
            print(
                f"[sensitivity] {name}: "
                + " ".join(f"{r['ratio']:.1f}->{r['top1']:.2f}" for r in rows if r["layer"] == name),
                flush=True,
            )
    return rows


def auto_overrides(rows: list[dict], max_drop: float, method: str = "prune.magnitude") -> dict[str, dict]:
    """Per-layer ``overrides`` (for the method's config) with the largest ratio whose drop <= max_drop."""
    field = RATIO_FIELD[method]
    out: dict[str, dict] = {}
    for layer in dict.fromkeys(r["layer"] for r in rows if r["layer"] != "(none)"):
        ok = [r["ratio"] for r in rows if r["layer"] == layer and r["drop"] <= max_drop]
        out[layer] = {field: max(ok) if ok else 0.0}
    return out


def plot_sensitivity(rows: list[dict], path) -> None:
    """Accuracy against ratio, one line per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = rows[0]["top1"]
    for layer in dict.fromkeys(r["layer"] for r in rows[1:]):
        pts = [(0.0, base)] + [(r["ratio"], r["top1"]) for r in rows if r["layer"] == layer]
        ax.plot(*zip(*pts), marker="o", label=layer)
    ax.set_xlabel("pruning ratio of the layer alone")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
