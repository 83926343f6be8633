"""Codebook (weight-sharing) layers: b-bit indices bit-packed into uint8 plus a k-entry
float codebook (Gong et al. 2014; Han et al. 2016, Deep Compression).

Storage for n weights at b bits: ``ceil(n * b / 8)`` bytes of codes + ``4 * 2**b``
bytes of codebook, i.e. a ratio of about ``32 n / (b n + 32 k)`` against float32.
Pruned layers keep their CSR structure and quantize only the stored nonzeros
(``SparseLinear/SparseConv2d`` with ``bits > 0``), so zeros stay zero.

Execution expands ``codebook[codes]`` to a float weight once (cached) and runs
the dense op: for scalar codebooks a gather-based kernel on this CPU class is
slower than dense BLAS (a float table gather ran at 0.3-0.45x of dense), so the
packed form is a storage format here, reported as such.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime._layout import conv_geometry, dense_macs, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime.base import RuntimeLayer, bias_counts

_CHUNK = 1 << 20  # codes per step: the bit expansion of a 38M-weight layer would take gigabytes at once


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a uint8 stream, little-endian within bytes."""
    c = codes.flatten().to(torch.int64)
    if c.numel() and (c.min() < 0 or c.max() >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits}) to pack at {bits} bits")
    if bits == 8:
        return c.to(torch.uint8)
    shifts, weights = torch.arange(bits, dtype=torch.int64), torch.arange(8, dtype=torch.int64)
    out = []
    for part in c.split(_CHUNK):  # _CHUNK is a multiple of 8: every chunk but the last fills whole bytes
        stream = ((part[:, None] >> shifts) & 1).flatten()  # (len * bits,)
        stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)]).view(-1, 8)
        out.append((stream << weights).sum(1).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as int64."""
    if bits == 8:
        return packed[:n].to(torch.int64)
    shifts, weights = torch.arange(8, dtype=torch.int64), torch.arange(bits, dtype=torch.int64)
    out = []
    for part in packed.split(_CHUNK // 8 * bits):  # whole groups of 8 codes per chunk
        b = ((part.to(torch.int64)[:, None] >> shifts) & 1).flatten()
        b = b[: b.numel() // bits * bits].view(-1, bits)
        out.append((b << weights).sum(1))
    return torch.cat(out)[:n] if out else torch.zeros(0, dtype=torch.int64)


def code_stream(codes: torch.Tensor, bits: int, n: int) -> tuple[str, object, dict]:
    """The ``codes`` buffer (``n`` packed ``bits``-bit codes) as an entropy stream
    (:meth:`RuntimeLayer.entropy_streams`)."""
    return ("codes", unpack_bits(codes, bits, n).numpy(), {"kind": "codes", "bits": bits, "n": n})


class _CodebookBase(RuntimeLayer):
    shape: tuple[int, ...]

    def _init_codebook(self, bits: int, bias_len: int | None) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"bits={bits}; use 1..8")
        self.bits = bits
        n = math.prod(self.shape)
        self.register_buffer("codes", torch.zeros(math.ceil(n * bits / 8), dtype=torch.uint8))
        self.codebook = nn.Parameter(torch.zeros(2**bits))
        self.bias = nn.Parameter(torch.zeros(bias_len)) if bias_len else None
        self._cache: tuple | None = None

    def set_codes(self, codes: torch.Tensor, codebook: torch.Tensor) -> None:
        self.codes = pack_bits(codes, self.bits)
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self._cache = None

    def weight_counts(self) -> tuple[int, int]:
        """(weights + bias, nonzero weights + nonzero bias) for measurement."""
        b, bnz = bias_counts(self.bias)
        return math.prod(self.shape) + b, int(torch.count_nonzero(self.weight())) + bnz

    def expanded_numel(self) -> int:
        return math.prod(self.shape)

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return dense_macs(self, y)

    def lowered(self, **info) -> nn.Module:
        """The layer computing ``codebook[codes]`` in the graph from the packed codes (exact; ONNX
        Runtime folds it to the dense weight at session creation, the file keeps the codes)."""
        from torchslim.runtime.compact import CodebookWeight, computed_layer

        weight = CodebookWeight(self.indices(), self.bits, self.codebook, self.shape)
        return computed_layer(self, weight, self.bias)

    def as_dense(self) -> nn.Module:
        """The kernel is the dense op on the expanded codebook weight."""
        return dense_module(self, self.weight(), self.bias)

    def indices(self) -> torch.Tensor:
        return unpack_bits(self.codes, self.bits, math.prod(self.shape)).view(self.shape)

    def entropy_streams(self) -> list[tuple[str, object, dict]]:
        """The codebook indices as ``bits``-bit symbols (Deep Compression's Huffman stage)."""
        return [code_stream(self.codes, self.bits, math.prod(self.shape))]

    def weight(self) -> torch.Tensor:
        """``codebook[codes]``; differentiable w.r.t. the codebook (summed gradients per centroid)."""
        if torch.is_grad_enabled() and self.codebook.requires_grad:
            return self.codebook[self.indices()]
        key = (self.codebook._version, self.codebook.data_ptr())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.codebook.detach()[self.indices()])
        return self._cache[1]


class CodebookLinear(_CodebookBase):
    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.shape = (out_features, in_features)
        self._init_codebook(bits, out_features if bias else None)

    def spec_args(self) -> dict:
        return dict(**linear_geometry(self), bits=self.bits, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bits={self.bits}"


class CodebookConv2d(_CodebookBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        dilation: list,
        groups: int,
        bits: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_codebook(bits, out_channels if bias else None)

    def spec_args(self) -> dict:
        return dict(**conv_geometry(self), bits=self.bits, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bits={self.bits}"
