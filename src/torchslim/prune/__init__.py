"""Pruning and sparsity: magnitude (unstructured), filters (structured), regularizers, sensitivity."""

from torchslim.prune.filters import Filters
from torchslim.prune.magnitude import Magnitude, sparsity
from torchslim.prune.regularize import GroupLasso, Slimming
from torchslim.prune.sensitivity import auto_overrides, sensitivity

__all__ = ["Filters", "GroupLasso", "Magnitude", "Slimming", "auto_overrides", "sensitivity", "sparsity"]
