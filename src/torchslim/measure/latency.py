"""Latency: median of repeated runs with ``torch.utils.benchmark``, thread count recorded."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.runtime.timing import time_ms


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int = 1,
    *,
    min_run_time: float = 1.0,
    threads: int | None = None,
) -> float:
    """Median milliseconds per forward pass of a batch of ``batch`` inputs of ``input_shape``."""
    model.eval()
    p = next(model.parameters(), None)
    x = torch.randn((batch, *input_shape), device=p.device if p is not None else "cpu")
    threads = threads or torch.get_num_threads()
    return time_ms(model, x, min_run_time, threads)
