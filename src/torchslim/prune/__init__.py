"""Pruning and sparsity: magnitude (unstructured), filters (structured), regularizers, sensitivity."""
from torchslim.prune.unstructured import Magnitude, sparsity

__all__ = ["Magnitude", "sparsity"]
