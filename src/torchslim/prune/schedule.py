"""Sparsity schedules for gradual pruning during fine-tuning.

* ``oneshot``: the target sparsity at once, before fine-tuning.
* ``steps``: ``n`` equal increments, one every ``frequency`` optimizer steps
  (prune -> retrain -> prune more, Han et al. 2015).
* ``agp``: automated gradual pruning (Zhu & Gupta 2017),
  ``s_t = s_f + (s_i - s_f) * (1 - t / (n * dt))**3`` for t = dt, 2 dt, ..., n dt:
  prune fast while redundancy is high, slowly near the target.
"""

from __future__ import annotations

SCHEDULES = ("oneshot", "steps", "agp")


def progress_at(schedule: str, step: int, n_steps: int, frequency: int) -> float | None:
    """Fraction of the final sparsity to apply after optimizer ``step`` (0-based), or None
    when the schedule does nothing at that step. With s_i = 0: ``steps`` gives k/n, ``agp``
    gives 1 - (1 - k/n)**3 at the k-th event."""
    if schedule == "oneshot":
        return None
    k, rem = divmod(step + 1, frequency)
    if rem or k < 1 or k > n_steps:
        return None
    frac = k / n_steps
    return frac if schedule == "steps" else 1.0 - (1.0 - frac) ** 3
