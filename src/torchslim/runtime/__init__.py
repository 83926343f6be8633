"""Deploy modules and kernels for compressed layers. Imports torch/numpy only."""
from torchslim.runtime.sparse import SparseConv2d, SparseLinear, choose_kernel

__all__ = ["SparseConv2d", "SparseLinear", "choose_kernel"]
