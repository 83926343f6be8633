"""Product-quantized layers (Gong et al. 2014; Jegou et al. 2011): each weight row is split
into ``m`` sub-vectors of length ``d``; sub-space ``j`` has its own codebook of ``k``
d-dimensional codewords and every row stores one ``log2 k``-bit index per sub-space.

Weight ``W (rows, m*d)``: ``W[r, j*d:(j+1)*d] = codebooks[j, codes[r, j]]``.
Storage: ``rows * m * log2(k) / 8`` bytes of indices + ``4 * m * k * d`` of codebooks.

Two kernels, chosen by measurement (``choose_kernel`` in ``runtime.sparse`` style):

* ``dense``: expand the weight once (cached) and run the dense op;
* ``lut`` (Linear only): per input, a table ``T[n, j, c] = <x_n[j], codebooks[j, c]>``
  (``m * k`` inner products of length d) and each output is a sum of m table
  look-ups, ``y[n, r] = sum_j T[n, j, codes[r, j]]`` (Wu et al. 2016, Q-CNN's inference).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime._layout import conv_geometry, dense_macs, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime.base import RuntimeLayer
from torchslim.runtime.codebook import pack_bits, unpack_bits
from torchslim.runtime.timing import choose_module_kernel

PQ_KERNELS = ("dense", "lut")


class _ProductBase(RuntimeLayer):
    rows: int
    cols: int

    def _init_pq(self, sub_dim: int, bits: int, bias: bool, kernel: str, timing: dict | None) -> None:
        if self.cols % sub_dim:
            raise ValueError(f"row length {self.cols} is not a multiple of sub_dim={sub_dim}")
        if kernel not in PQ_KERNELS:
            raise ValueError(f"kernel={kernel!r}; use one of {list(PQ_KERNELS)}")
        self.sub_dim, self.bits, self.kernel = sub_dim, bits, kernel
        self.timing = dict(timing or {})
        self.m = self.cols // sub_dim
        self.register_buffer("codes", torch.zeros(math.ceil(self.rows * self.m * bits / 8), dtype=torch.uint8))
        self.codebooks = nn.Parameter(torch.zeros(self.m, 2**bits, sub_dim))
        self.bias = nn.Parameter(torch.zeros(self.rows)) if bias else None
        self._cache: tuple | None = None

    def set_codes(self, codes: torch.Tensor, codebooks: torch.Tensor) -> None:
        """``codes (rows, m)`` int, ``codebooks (m, k, d)``."""
        self.codes = pack_bits(codes, self.bits)
        self.codebooks = nn.Parameter(codebooks.detach().clone().float())
        self._cache = None

    def indices(self) -> torch.Tensor:
        return unpack_bits(self.codes, self.bits, self.rows * self.m).view(self.rows, self.m)

    def weight_counts(self) -> tuple[int, int]:
        b = self.bias.numel() if self.bias is not None else 0
        return self.rows * self.cols + b, int(torch.count_nonzero(self.weight2d())) + b

    def expanded_numel(self) -> int:
        return self.rows * self.cols

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return dense_macs(self, y)

    def lowered(self, **info) -> nn.Module:
        """The dense layer with the codewords expanded (exact)."""
        return dense_module(self, self.weight2d(), self.bias)

    def weight2d(self) -> torch.Tensor:
        """(rows, cols) weight; differentiable w.r.t. the codebooks when training."""

        def build():
            idx = self.indices()  # (rows, m)
            j = torch.arange(self.m).expand_as(idx)
            return self.codebooks[j, idx].reshape(self.rows, self.cols)  # (rows, m, d) -> (rows, cols)

        if torch.is_grad_enabled() and self.codebooks.requires_grad:
            return build()
        key = (self.codebooks._version, self.codebooks.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, build(), self.indices())
        return self._cache[1]


class ProductLinear(_ProductBase):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        sub_dim: int,
        bits: int,
        bias: bool = True,
        kernel: str = "dense",
        timing: dict | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.rows, self.cols = out_features, in_features
        self._init_pq(sub_dim, bits, bias, kernel, timing)

    def spec_args(self) -> dict:
        return dict(
            **linear_geometry(self),
            sub_dim=self.sub_dim,
            bits=self.bits,
            bias=self.bias is not None,
            kernel=self.kernel,
            timing=self.timing,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dense" or (torch.is_grad_enabled() and self.codebooks.requires_grad):
            return F.linear(x, self.weight2d(), self.bias)
        self.weight2d()  # fills the cached indices
        idx = self._cache[2]  # (rows, m)
        lead = x.shape[:-1]
        xs = x.reshape(-1, self.m, self.sub_dim)  # (N, m, d)
        table = torch.einsum("nmd,mkd->nmk", xs, self.codebooks.detach())  # (N, m, k)
        y = table.gather(2, idx.t().unsqueeze(0).expand(xs.shape[0], -1, -1))  # (N, m, rows)
        y = y.sum(1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def tune(self, example: torch.Tensor) -> str:
        """Re-time the lookup-table and dense kernels on ``example`` (:func:`choose_pq_kernel`)."""
        return choose_pq_kernel(self, example)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, sub_dim={self.sub_dim}, bits={self.bits}, kernel={self.kernel}"
        )


class ProductConv2d(_ProductBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        dilation: list,
        groups: int,
        sub_dim: int,
        bits: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._init_pq(sub_dim, bits, bias, "dense", None)

    def spec_args(self) -> dict:
        return dict(**conv_geometry(self), sub_dim=self.sub_dim, bits=self.bits, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight2d().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, sub_dim={self.sub_dim}, "
            f"bits={self.bits}"
        )


def choose_pq_kernel(
    module: ProductLinear, example: torch.Tensor, batches: tuple[int, ...] = (1, 256), min_run_time: float = 0.2
) -> str:
    """Keep ``lut`` only where it beats the expanded dense weight at every batch size (:func:`pick`)."""
    return choose_module_kernel(module, PQ_KERNELS, "dense", example, batches, min_run_time)
