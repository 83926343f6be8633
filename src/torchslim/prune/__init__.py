"""Pruning and sparsity: magnitude (unstructured), variational dropout, filters (structured),
regularizers, sensitivity."""

from torchslim.prune.filters import Filters
from torchslim.prune.magnitude import Magnitude, sparsity
from torchslim.prune.regularize import DepGraph, GroupLasso, Slimming
from torchslim.prune.sensitivity import auto_overrides, sensitivity
from torchslim.prune.variational import VariationalDropout

__all__ = [
    "DepGraph",
    "Filters",
    "GroupLasso",
    "Magnitude",
    "Slimming",
    "VariationalDropout",
    "auto_overrides",
    "sensitivity",
    "sparsity",
]
