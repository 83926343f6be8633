"""Export forms that keep a packed weight packed: the dense layer whose weight the graph computes
from the compact tensors, so an ONNX file stays near the ``.slim`` size.

* codebook weights (k-means, Deep Compression values): ``Gather(codebook, codes)``;
* product-quantized weights (PQ, Q-CNN): ``Gather`` of each sub-vector's codeword from its
  subspace's codebook (codes offset by ``subspace * k`` into the stacked codebooks);
* sparse weights: ``ScatterElements(zeros, positions, values)`` with the positions stored as
  gaps (int16 where every gap fits, else int32) and summed in the graph (``CumSum``);
* binary weights: packed bits, ``2 b - 1``.

Codes of 1, 2, 4 or 8 bits stay packed and are unpacked with integer ``Div`` / ``Mod`` (opset 17
has no bitwise AND); other widths are stored one code per byte. Every input of these subgraphs
is an initializer, so ONNX Runtime folds them to the dense weight when it creates the session:
the file is small, the speed is the dense layer's, the values are exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime.codebook import pack_bits

GRAPH_BITS = (1, 2, 4, 8)  # code widths the graph unpacks (whole codes per byte)


def graph_codes(codes: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """(uint8 stream, bits per code in it) for integer ``codes`` in [0, 2**bits): packed at
    ``bits`` where the graph can unpack that width, else one code per byte."""
    width = bits if bits in GRAPH_BITS else 8
    return pack_bits(codes.flatten(), width), width


def unpack_in_graph(stream: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes of a little-endian ``bits``-bit uint8 stream (bits in 1, 2, 4, 8), in
    ops ONNX opset 17 has: code ``k`` of a byte is ``(byte // 2**(k bits)) mod 2**bits``."""
    b = stream.to(torch.int32)
    if bits == 8:
        return b[:n].long()
    per = 8 // bits
    div = torch.tensor([2 ** (k * bits) for k in range(per)], dtype=torch.int32)
    return torch.remainder(torch.div(b.unsqueeze(1), div, rounding_mode="floor"), 2**bits).flatten()[:n].long()


class CodebookWeight(nn.Module):
    """``codebook[codes]`` of ``shape``: the codes packed (see :func:`graph_codes`)."""

    def __init__(self, codes: torch.Tensor, bits: int, codebook: torch.Tensor, shape: tuple) -> None:
        super().__init__()
        stream, self.width = graph_codes(codes, bits)
        self.register_buffer("stream", stream)
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.shape, self.n = tuple(shape), codes.numel()

    def forward(self) -> torch.Tensor:
        return self.codebook[unpack_in_graph(self.stream, self.width, self.n)].view(self.shape)


class ProductWeight(nn.Module):
    """A product-quantized weight of ``shape``: row ``r`` is the concatenation over subspaces ``j``
    of codeword ``codes[r, j]`` of codebook ``j`` (Jegou et al. 2011; Gong et al. 2014); ``codes
    (rows, m)`` packed (see :func:`graph_codes`), ``codebooks (m, k, d)`` stacked to ``(m k, d)``."""

    def __init__(self, codes: torch.Tensor, bits: int, codebooks: torch.Tensor, shape: tuple) -> None:
        super().__init__()
        stream, self.width = graph_codes(codes, bits)
        m, k, d = codebooks.shape
        self.register_buffer("stream", stream)
        self.register_buffer("codebooks", codebooks.detach().float().reshape(m * k, d).clone())
        self.register_buffer("offsets", torch.arange(m, dtype=torch.int64) * k)  # m entries, not rows * m
        self.rows, self.m, self.shape = codes.shape[0], m, tuple(shape)

    def forward(self) -> torch.Tensor:
        idx = unpack_in_graph(self.stream, self.width, self.rows * self.m).view(self.rows, self.m) + self.offsets
        return self.codebooks[idx].reshape(self.shape)


class ScatterWeight(nn.Module):
    """A dense weight of ``shape`` that is zero except at the flat ``positions`` (increasing), whose
    values ``values`` gives: a tensor, or a :class:`CodebookWeight` of the stored values."""

    def __init__(self, positions: torch.Tensor, values: torch.Tensor | CodebookWeight, shape: tuple) -> None:
        super().__init__()
        gaps = torch.diff(positions.long(), prepend=torch.zeros(1, dtype=torch.long))
        small = gaps.numel() == 0 or int(gaps.max()) < 2**15
        self.register_buffer("gaps", gaps.to(torch.int16 if small else torch.int32))
        if isinstance(values, CodebookWeight):
            self.values = values
        else:
            self.register_buffer("value_tensor", values.detach().float().clone())
            self.values = None
        self.shape = tuple(shape)

    def forward(self) -> torch.Tensor:
        vals = self.values() if self.values is not None else self.value_tensor
        pos = torch.cumsum(self.gaps.long(), 0)
        n = math.prod(self.shape)
        # zeros expanded from one element: torch.zeros(n) would be traced into an n-element constant
        return vals.new_zeros(1).expand(n).scatter(0, pos, vals).view(self.shape)


class SignWeight(nn.Module):
    """A +/-1 weight of ``shape`` stored as packed bits (1 = +1)."""

    def __init__(self, signs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("stream", pack_bits((signs.flatten() > 0).long(), 1))
        self.shape, self.n = tuple(signs.shape), signs.numel()

    def forward(self) -> torch.Tensor:
        return (unpack_in_graph(self.stream, 1, self.n).float() * 2 - 1).view(self.shape)


class ComputedConv2d(nn.Module):
    """``conv2d(x, weight(), bias)`` with the geometry of ``like`` (a conv layer or spec holder)."""

    def __init__(self, like: nn.Module, weight: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_of = weight
        self.stride, self.padding = tuple(like.stride), tuple(like.padding)
        self.dilation, self.groups = tuple(like.dilation), like.groups
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight_of(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class ComputedLinear(nn.Module):
    """``linear(x, weight(), bias)``."""

    def __init__(self, weight: nn.Module, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_of = weight
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_of(), self.bias)


def computed_layer(like: nn.Module, weight: nn.Module, bias: torch.Tensor | None) -> nn.Module:
    """The conv (``like`` has ``kernel_size``) or linear layer that computes its weight in the graph."""
    if hasattr(like, "kernel_size"):
        return ComputedConv2d(like, weight, bias)
    return ComputedLinear(weight, bias)
