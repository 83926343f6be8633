"""Uniform (affine) integer layers: per-output-channel b-bit weight codes, optionally
with 8-bit activations run on PyTorch's x86 int8 kernels (Jacob et al. 2018).

Weights, symmetric: ``s_c = max|W_c| / (2^(b-1) - 1)``, ``q = clamp(round(W / s_c))``,
``W ~ s_c q``; affine: ``s_c = (max W_c - min W_c) / (2^b - 1)``,
``z_c = round(-min W_c / s_c)``, ``W ~ s_c (q - z_c)``. The file stores the codes
bit-packed to b bits, the scales and zero points, not float32 weights.

With 8-bit activations (``act`` = input scale/zero point, output scale/zero point) the
layer runs ``torch.ops.quantized.conv2d`` / ``linear`` (fbgemm/oneDNN, int8 x int8 ->
int32, requantized to uint8): a float input is quantized first, a quantized input (from
an earlier int8 layer, possibly through ReLU / max-pool / flatten, which work on
quantized tensors) is used as is, and the output stays quantized unless
``out_float`` (its consumer cannot take a quantized tensor). Weight-only layers
(``act_bits=0``) expand the codes to float once at load: a storage format.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime._layout import conv_geometry, dense_macs, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime.base import RuntimeLayer, as_op, bias_counts, set_op_spec, tracing
from torchslim.runtime.codebook import code_stream, pack_bits, unpack_bits


def weight_qparams(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-output-channel (scale, zero_point, qmin, qmax) of ``w``, as in the module docstring."""
    flat = w.detach().flatten(1).float()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (flat.abs().amax(1) / qmax).clamp(min=1e-12)
        return scale, torch.zeros_like(scale, dtype=torch.int64), -qmax, qmax
    qmax = 2**bits - 1
    lo, hi = flat.amin(1).clamp(max=0), flat.amax(1).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zp = torch.round(-lo / scale).clamp(0, qmax).to(torch.int64)
    return scale, zp, 0, qmax


def quantize_weight(w: torch.Tensor, bits: int, symmetric: bool):
    """(integer codes in [qmin, qmax], scale, zero_point, qmin, qmax)."""
    scale, zp, qmin, qmax = weight_qparams(w, bits, symmetric)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(torch.round(w.detach().float() / scale.view(shape)) + zp.view(shape), qmin, qmax)
    return q.to(torch.int64), scale, zp, qmin, qmax


def act_codes(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 codes ``clamp(round(x / s) + z, 0, 255)``: one formula for deploy and fake quant,
    so that both round ties alike (the library quantizers multiply by 1/s instead)."""
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 255)


class _UniformBase(RuntimeLayer):
    shape: tuple[int, ...]

    def _init_uniform(self, bits: int, symmetric: bool, act_bits: int, out_float: bool, bias: bool) -> None:
        if not 2 <= bits <= 8:
            raise ValueError(f"bits={bits}; use 2..8")
        if act_bits not in (0, 8):
            raise ValueError(f"act_bits={act_bits}; use 0 (weights only) or 8")
        if act_bits and not symmetric:
            raise ValueError(
                "8-bit activations need symmetric weights (the x86 int8 kernels take qint8 weights with zero point 0)"
            )
        self.bits, self.symmetric, self.act_bits, self.out_float = bits, symmetric, act_bits, out_float
        n, c = math.prod(self.shape), self.shape[0]
        self.register_buffer("codes", torch.zeros(math.ceil(n * bits / 8), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(c))
        self.register_buffer("zero_point", torch.zeros(c, dtype=torch.int32))
        # input scale, input zero point, output scale, output zero point (8-bit activations)
        self.register_buffer("act", torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
        self.bias = nn.Parameter(torch.zeros(c), requires_grad=False) if bias else None
        self._cache: tuple | None = None

    def validate(self) -> None:
        """Scales are positive (a weight scale of 0 loaded and gave NaN / constant outputs), zero
        points inside the code range, the code stream as long as the weight needs."""
        if self.act.numel() != 4 or self.scale.numel() != self.shape[0] or self.zero_point.numel() != self.shape[0]:
            raise ValueError(
                f"act holds {self.act.numel()} values (want 4), scale / zero_point {self.scale.numel()} / "
                f"{self.zero_point.numel()} (want {self.shape[0]})"
            )
        if not bool((self.scale > 0).all()):
            raise ValueError("scale holds values <= 0; every weight scale must be positive")
        if self.act_bits and not (float(self.act[0]) > 0 and float(self.act[2]) > 0):
            raise ValueError(f"activation scales {float(self.act[0])}, {float(self.act[2])}: must be positive")
        if self.act_bits and not (0 <= float(self.act[1]) <= 255 and 0 <= float(self.act[3]) <= 255):
            raise ValueError("activation zero points outside 0..255")
        want = math.ceil(math.prod(self.shape) * self.bits / 8)
        if self.codes.numel() != want:
            raise ValueError(f"codes hold {self.codes.numel()} bytes, want {want}")

    @property
    def _offset(self) -> int:
        """Codes are stored unsigned: symmetric ``q`` is stored as ``q + 2^(b-1)``."""
        return 2 ** (self.bits - 1) if self.symmetric else 0

    def set_weight(self, w: torch.Tensor, bias: torch.Tensor | None, round_up: torch.Tensor | None = None) -> None:
        """Store ``w`` on its per-channel grid: rounded to nearest, or, given ``round_up`` (0 / 1 per
        weight, AdaRound's learned rounding), ``clamp(floor(w / s) + round_up)`` (symmetric only)."""
        q, scale, zp, qmin, qmax = quantize_weight(w, self.bits, self.symmetric)
        if round_up is not None:
            shape = (-1,) + (1,) * (w.dim() - 1)
            q = torch.clamp(torch.floor(w.detach().float() / scale.view(shape)) + round_up, qmin, qmax).to(q.dtype)
        self.codes = pack_bits(q + self._offset, self.bits)
        self.scale, self.zero_point = scale.float(), zp.to(torch.int32)
        if bias is not None:
            self.bias.data.copy_(bias.detach())
        self._cache = None

    def entropy_streams(self) -> list[tuple[str, object, dict]]:
        """The stored (offset) weight codes as ``bits``-bit symbols."""
        return [code_stream(self.codes, self.bits, math.prod(self.shape))]

    def int_weight(self) -> torch.Tensor:
        """Integer codes in [qmin, qmax], shape of the weight."""
        return (unpack_bits(self.codes, self.bits, math.prod(self.shape)) - self._offset).view(self.shape)

    def weight(self) -> torch.Tensor:
        """``s_c (q - z_c)`` as float."""
        shape = (-1,) + (1,) * (len(self.shape) - 1)
        return ((self.int_weight() - self.zero_point.view(shape)) * self.scale.view(shape)).float()

    def weight_counts(self) -> tuple[int, int]:
        w = self.weight()
        b, bnz = bias_counts(self.bias)
        return w.numel() + b, int(torch.count_nonzero(w)) + bnz

    def expanded_numel(self) -> int:
        return math.prod(self.shape)

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return dense_macs(self, y)

    def lowered(self, input_qparams: tuple[float, int] | None = None, **info) -> nn.Module:
        """Weight-only: the dense layer on the dequantized weight (exact). int8: the fake-quant graph
        (QuantizeLinear / DequantizeLinear around the conv / gemm in ONNX, which ONNX Runtime fuses
        into its int8 kernels). ``input_qparams``: (scale, zero point) of the int8 tensor the layer
        receives at run time from the previous int8 layer; the input is then already on that grid,
        and quantizing it again with the same parameters changes nothing but lets the runtime
        see a quantized input (as the int8 kernels do)."""
        dense = dense_module(self, self.weight(), self.bias)
        if not self.act_bits:
            return dense
        return UniformQDQ(self, dense, input_qparams or (float(self.act[0]), int(self.act[1])))

    def _uniform_args(self) -> dict:
        return dict(
            bits=self.bits,
            symmetric=self.symmetric,
            act_bits=self.act_bits,
            out_float=self.out_float,
            bias=self.bias is not None,
        )

    def _state_key(self) -> tuple:
        return tuple(t.data_ptr() for t in (self.codes, self.scale, self.act)) + (self.codes._version,)

    def _prepared(self):
        """Expanded float weight, or the prepacked int8 weight; rebuilt when the buffers change."""
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            if self.act_bits:
                qw = torch._make_per_channel_quantized_tensor(
                    self.int_weight().to(torch.int8), self.scale.double(), self.zero_point.to(torch.int64), 0
                )
                self._cache = (key, self._prepack(qw))
            else:
                self._cache = (key, self.weight())
        return self._cache[1]

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_quantized:
            return x
        scale, zp = float(self.act[0]), int(self.act[1])
        return torch._make_per_tensor_quantized_tensor(act_codes(x.float(), scale, zp).to(torch.uint8), scale, zp)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return y.dequantize() if self.out_float else y

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, act_bits={self.act_bits}, out_float={self.out_float}"


class UniformLinear(_UniformBase):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int = 8,
        symmetric: bool = True,
        act_bits: int = 0,
        out_float: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.shape = (out_features, in_features)
        self._init_uniform(bits, symmetric, act_bits, out_float, bias)
        set_op_spec(self)

    def spec_args(self) -> dict:
        return dict(**linear_geometry(self), **self._uniform_args())

    def _prepack(self, qw):
        return torch.ops.quantized.linear_prepack(qw, None if self.bias is None else self.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing():  # torch.export / torch.compile: one custom op that runs the int8 kernels
            return as_op(self, x)
        if not self.act_bits:
            return F.linear(x, self._prepared(), self.bias)
        y = torch.ops.quantized.linear(self._quantize_input(x), self._prepared(), float(self.act[2]), int(self.act[3]))
        return self._finish(y)


class UniformConv2d(_UniformBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        dilation: list,
        groups: int,
        bits: int = 8,
        symmetric: bool = True,
        act_bits: int = 0,
        out_float: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_uniform(bits, symmetric, act_bits, out_float, bias)
        set_op_spec(self)

    def spec_args(self) -> dict:
        return dict(**conv_geometry(self), **self._uniform_args())

    def _prepack(self, qw):
        return torch.ops.quantized.conv2d_prepack(
            qw,
            None if self.bias is None else self.bias.detach().float(),
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            self.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing():  # torch.export / torch.compile: one custom op that runs the int8 kernels
            return as_op(self, x)
        if not self.act_bits:
            return F.conv2d(x, self._prepared(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        y = torch.ops.quantized.conv2d(self._quantize_input(x), self._prepared(), float(self.act[2]), int(self.act[3]))
        return self._finish(y)


class UniformQDQ(nn.Module):
    """An int8 layer as fake quantization: ``Q/DQ(x) -> op(x, Q/DQ(W)) + b -> Q/DQ(y)``.

    The export form of :class:`UniformConv2d` / :class:`UniformLinear`. Inputs and outputs are
    quantized with ``fake_quantize_per_tensor_affine`` (uint8, the layer's scales and zero points),
    weights per output channel on their stored grid (symmetric codes in [-127, 127], so the ONNX
    range [-128, 127] leaves them unchanged). Values equal the int8 kernels' outside rounding ties.
    """

    def __init__(self, layer: _UniformBase, dense: nn.Module, input_qparams: tuple[float, int]) -> None:
        super().__init__()
        self.dense = dense
        self.register_buffer("w_scale", layer.scale.detach().float().clone())
        self.register_buffer("w_zero", torch.zeros(layer.scale.numel(), dtype=torch.int32))
        self.in_q, self.out_q = input_qparams, (float(layer.act[2]), int(layer.act[3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_quantized:
            x = x.dequantize()
        x = torch.fake_quantize_per_tensor_affine(x, self.in_q[0], self.in_q[1], 0, 255)
        w = torch.fake_quantize_per_channel_affine(self.dense.weight, self.w_scale, self.w_zero, 0, -128, 127)
        if isinstance(self.dense, nn.Conv2d):
            d = self.dense
            y = F.conv2d(x, w, d.bias, d.stride, d.padding, d.dilation, d.groups)
        else:
            y = F.linear(x, w, self.dense.bias)
        return torch.fake_quantize_per_tensor_affine(y, self.out_q[0], self.out_q[1], 0, 255)
