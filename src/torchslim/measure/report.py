"""Measurement of a model and reports: terminal table, JSON, Markdown, plots."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from torchslim.core.state import slim_state
from torchslim.core.surgery import input_shape as own_input_shape
from torchslim.measure.accuracy import evaluate
from torchslim.measure.counts import count_nonzeros, count_params, layer_table
from torchslim.measure.latency import allocator, cpu_info, latency_ms

# The keys every benchmark row carries (benchmark convention).
ROW_KEYS = (
    "model",
    "method",
    "top1",
    "bytes",
    "params",
    "nonzeros",
    "macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "threads",
)


def file_bytes(model: nn.Module) -> int:
    """Bytes of the model saved as a ``.slim`` file (written to a temp dir)."""
    from torchslim.export.slim import save

    with tempfile.TemporaryDirectory() as d:
        return save(model, Path(d) / "m.slim")


def batch_that_fits(model: nn.Module, want: int, share: float = 0.1) -> int:
    """``want``, or the largest batch whose float32 layer outputs (``load``'s measured bytes per
    sample, twice for the workspace) take at most ``share`` of this machine's memory."""
    per_sample = 2 * slim_state(model).activation_bytes
    if not per_sample:
        return want
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return want
    return max(1, min(want, int(share * memory) // per_sample))


def measure(
    model: nn.Module,
    input_shape: tuple | None = None,
    *,
    loader: DataLoader | None = None,
    path: str | os.PathLike | None = None,
    latency: bool = True,
    big_batch: int = 256,
    min_run_time: float = 1.0,
    nbytes: int | None = None,
    engine: str = "eager",
) -> dict[str, Any]:
    """Accuracy, size, MACs and latency of ``model`` side by side in one dict.

    Args:
        input_shape: the model's input without the batch; by default its own
            (:func:`torchslim.core.surgery.input_shape`: the example given to ``compress_``, the
            shape recorded in its ``.slim`` file, or a registry model's).
        loader: evaluation data (test split for reported numbers); None skips accuracy.
        path: the model's ``.slim`` file; its size is reported, else the model is
            saved to a temporary file to measure bytes.
        nbytes: the stored size of a model that has no ``.slim`` form (peer tools).
        engine: what runs the model for accuracy and latency (:mod:`torchslim.engines`:
            eager (torchslim's runtime), pytorch (the modules as they are), compile,
            onnxruntime, or auto = the fastest of them on this model; its
            candidates' timings are reported); sizes and MACs are the model's own.
    """
    if input_shape is None:
        input_shape = own_input_shape(model)
        if input_shape is None:
            raise ValueError("the model's input shape is unknown: pass it, report(model, (C, H, W))")
    model.eval()
    rows = layer_table(model, input_shape)
    out: dict[str, Any] = {
        "bytes": nbytes if nbytes is not None else os.path.getsize(path) if path else file_bytes(model),
        "params": count_params(model),
        "nonzeros": count_nonzeros(model),
        "macs": sum(r["macs"] for r in rows),
        "effective_macs": sum(r["effective_macs"] for r in rows),
        "threads": torch.get_num_threads(),
    }
    run = model
    if loader is not None or latency:
        from torchslim import engines

        if engine == "auto":
            run, out["engine_timings_ms"] = engines.choose(model, input_shape, big_batch)
        else:
            run = engines.build(engine, model, input_shape)
    if loader is not None:
        out.update(evaluate(run, loader))
    if latency:
        out["engine"] = getattr(run, "name", "eager")
        if getattr(run, "layout", None):
            out["layout"] = run.layout
        out["latency_b1_ms"] = latency_ms(run, input_shape, 1, min_run_time=min_run_time)
        fits = batch_that_fits(model, big_batch)
        if fits < big_batch:  # a model whose activations of big_batch samples would not fit in memory
            out["latency_b256_ms"] = None
            warnings.warn(f"batch {big_batch} would not fit in memory; latency measured at batch {fits}")
        out[f"latency_b{fits}_ms"] = latency_ms(run, input_shape, fits, min_run_time=min_run_time)
        out["cpu"] = cpu_info()
        out["allocator"] = allocator()
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def to_markdown(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """GitHub Markdown table of ``rows``."""
    columns = list(columns or _columns(rows))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text table for the terminal."""
    columns = list(columns or _columns(rows))
    cells = [columns] + [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(s.rjust(w) for s, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _columns(rows: Iterable[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and not isinstance(r[k], (dict, list))]
    return cols


def write_report(
    rows: Sequence[dict], stem: str | os.PathLike, columns: Sequence[str] | None = None, title: str | None = None
) -> tuple[Path, Path]:
    """Write ``stem.json`` (the rows) and ``stem.md`` (a table) and return both paths."""
    from torchslim._files import atomic_write

    stem = Path(stem)
    jp, mp = stem.with_suffix(".json"), stem.with_suffix(".md")
    atomic_write(jp, json.dumps(list(rows), indent=1) + "\n")
    atomic_write(mp, (f"# {title}\n\n" if title else "") + to_markdown(rows, columns))
    return jp, mp


def plot_tradeoff(
    rows: Sequence[dict],
    path: str | os.PathLike,
    x: str = "macs",
    y: str = "top1",
    label: str = "method",
    logx: bool = True,
) -> Path:
    """Scatter ``y`` against ``x`` (accuracy against size / MACs), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r[x], r[y])
        ax.annotate(str(r.get(label, "")), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
