"""Deploy modules and kernels for compressed layers. Imports torch/numpy only.

Every class here follows one contract (``runtime/base.py``): it owns its spec,
its MAC rule and its weight counts. Importing this package registers them all.
"""

from torchslim.runtime.activation import KBitAct
from torchslim.runtime.base import RuntimeLayer, runtime_layer, runtime_layers
from torchslim.runtime.binary import PackedBinaryConv2d, PackedBinaryLinear
from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
from torchslim.runtime.product import ProductConv2d, ProductLinear
from torchslim.runtime.sparse import SparseConv2d, SparseLinear, choose_kernel
from torchslim.runtime.uniform import UniformConv2d, UniformLinear

__all__ = [
    "CodebookConv2d",
    "CodebookLinear",
    "KBitAct",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "ProductConv2d",
    "ProductLinear",
    "RuntimeLayer",
    "SparseConv2d",
    "SparseLinear",
    "UniformConv2d",
    "UniformLinear",
    "choose_kernel",
    "runtime_layer",
    "runtime_layers",
]
