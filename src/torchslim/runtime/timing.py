"""The one kernel-timing helper: every "keep the faster form" decision goes through here.

Sparse vs dense kernels, PQ lookup tables vs the expanded weight, and factorized
vs dense layers are all decided by :func:`time_candidates` (median of repeated
runs with ``torch.utils.benchmark`` at each batch size) followed by the pure
rule :func:`pick`, which tests check on controlled timings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import benchmark


@torch.inference_mode()
def time_ms(
    fn: Callable[[torch.Tensor], Any], x: torch.Tensor, min_run_time: float = 0.2, threads: int | None = None
) -> float:
    """Median milliseconds of ``fn(x)`` after one warm-up call (lazy init, kernel compilation)."""
    fn(x)
    t = benchmark.Timer("fn(x)", globals={"fn": fn, "x": x}, num_threads=threads or torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median * 1e3


def time_candidates(
    candidates: dict[str, Callable[[Any], Any]],
    example: Any,
    batches: tuple[int, ...] = (1, 256),
    min_run_time: float = 0.2,
    layouts: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    rounds: int = 1,
) -> dict[str, dict[str, float]]:
    """``{"b<batch>": {name: ms}}`` for each candidate on ``example`` (one sample, batch dim 1; a
    tuple of such tensors for a multi-input model) repeated to each batch size; ``layouts[name]``
    gives that candidate its input in the memory layout it receives at run time (outside the timed
    region). With ``rounds`` > 1 the candidates are timed in turn that many times and each keeps its
    smallest median (a slow spell of the machine then hits every candidate, not only one)."""
    from torchslim.core import inputs

    layouts = layouts or {}
    timing: dict[str, dict[str, float]] = {}
    for b in batches:
        x = inputs.repeat(example, b)
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, fn in candidates.items():
                ms = time_ms(fn, layouts.get(name, lambda t: t)(x), min_run_time)
                best[name] = min(best.get(name, ms), ms)
        timing[f"b{b}"] = {name: round(ms, 4) for name, ms in best.items()}
    return timing


def pick(timing: dict[str, dict[str, float]], default: str) -> str:
    """The candidate strictly faster than ``default`` at every batch size (the fastest such one at
    the largest batch), else ``default``: a form that loses anywhere is not worth its risk."""
    names = set.intersection(*(set(v) for v in timing.values())) if timing else set()
    winners = [n for n in names if n != default and all(v[n] < v[default] for v in timing.values())]
    if not winners:
        return default
    last = timing[max(timing, key=lambda k: int(k[1:]))]
    return min(winners, key=lambda n: last[n])


def choose_module_kernel(
    module,
    kernels: tuple[str, ...],
    default: str,
    example: torch.Tensor,
    batches: tuple[int, ...] = (1, 256),
    min_run_time: float = 0.2,
    layouts: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> str:
    """Time ``module`` with each of its ``kernels`` (``module.kernel = k``; inputs as ``layouts`` gives,
    see :func:`time_candidates`) and keep the one :func:`pick` chooses. Side effects: sets
    ``module.kernel`` and ``module.timing``."""

    def run(kernel: str):
        def call(x: torch.Tensor) -> torch.Tensor:
            module.kernel = kernel
            return module(x)

        return call

    timing = time_candidates({k: run(k) for k in kernels}, example, batches, min_run_time, layouts)
    module.kernel, module.timing = pick(timing, default), timing
    return module.kernel
