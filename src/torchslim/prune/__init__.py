"""Pruning and sparsity: magnitude (unstructured), filters (structured), regularizers, sensitivity."""
from torchslim.prune.regularize import GroupLasso, Slimming
from torchslim.prune.sensitivity import auto_overrides, sensitivity
from torchslim.prune.structured import Filters
from torchslim.prune.unstructured import Magnitude, sparsity

__all__ = ["Filters", "GroupLasso", "Magnitude", "Slimming", "auto_overrides", "sensitivity", "sparsity"]
