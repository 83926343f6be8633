"""Pruning and sparsity: magnitude (unstructured), filters (structured), regularizers, sensitivity."""
from torchslim.prune.structured import Filters
from torchslim.prune.unstructured import Magnitude, sparsity

__all__ = ["Filters", "Magnitude", "sparsity"]
