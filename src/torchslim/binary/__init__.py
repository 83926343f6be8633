"""Binary and low-bit networks.

Methods (each keeps the first conv and the last linear in float unless ``layers``
names them):

* ``binary.connect`` (Courbariaux et al. 2015, BinaryConnect): ``W_b = sign(W)``
  (deterministic, or stochastic with ``p(+1) = hard_sigmoid(W)``), float activations.
* ``binary.bwn`` (Rastegari et al. 2016): ``W_b = alpha_o sign(W)``, ``alpha_o = mean|W_o|``.
* ``binary.bnn`` (Courbariaux et al. 2016): binary weights and binary activations.
* ``binary.xnor`` (Rastegari et al. 2016): ``(sign(I) * sign(W)) . K alpha`` with ``K`` the
  window mean of ``mean_c |I|``.
* ``binary.kbit`` (Zhou et al. 2016, DoReFa): k-bit weights and k-bit activations in [0, 1].

Prepare swaps layers for fake-binary training layers whose latent float weights the
callback clips to [-1, 1] after every optimizer step; with binary activations the
ReLU that feeds a binarized layer is removed, so the block reads
BatchNorm -> sign -> binary conv (max-pool commutes with sign). Convert packs the
bits (``PackedBinaryConv2d/Linear``, xnor-popcount kernels; BatchNorm folded into
the per-channel scale) or, for ``kbit``, bit-packed codebook layers behind a k-bit
activation quantizer. Design-rule warnings (from the survey): binarizing a 1x1
conv, activations above 4 bits, binarizing the first or last layer.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from torchslim.binary.quantizers import bwn_scale, get_quantizer
from torchslim.core.config import MethodConfig
from torchslim.core.fold import bn_affine, fold_all
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import get_module, set_module
from torchslim.runtime.binary import PackedBinaryConv2d, PackedBinaryLinear, input_scale_map
from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
from torchslim.train.callbacks import Callback


@dataclass(frozen=True)
class BinaryConnect(MethodConfig):
    """Binary weights, float activations. ``stochastic``: sample signs in training."""

    stochastic: bool = False


@dataclass(frozen=True)
class BWN(MethodConfig):
    """Binary weights scaled by ``alpha = mean|W|`` per filter, float activations."""


@dataclass(frozen=True)
class BNN(MethodConfig):
    """Binary weights and activations (no scaling)."""


@dataclass(frozen=True)
class XNOR(MethodConfig):
    """Binary weights (alpha) and activations (input scale map K)."""


@dataclass(frozen=True)
class KBit(MethodConfig):
    """DoReFa k-bit weights and activations."""

    weight_bits: int = 2
    act_bits: int = 2

    def validate(self) -> None:
        for f in ("weight_bits", "act_bits"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 8:
                raise ValueError(f"KBit.{f}={v!r} is out of range; use an integer in [1, 8]")


# --- training layers ----------------------------------------------------------------------

class _BinaryMixin:
    """Quantizer names and scaling flags shared by the conv and linear training layers."""

    def _init_binary(self, weight_q: str, input_q: str | None, weight_scale: bool, input_scale: bool) -> None:
        self.weight_q, self.input_q = weight_q, input_q
        self.weight_scale, self.input_scale = weight_scale, input_scale

    def binary_weight(self) -> torch.Tensor:
        """The quantized weight, unscaled (+/-1 for the sign quantizers)."""
        q = get_quantizer(self.weight_q)
        return q(self.weight, self.training) if self.weight_q == "stochastic_sign" else q(self.weight)

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return get_quantizer(self.input_q)(x) if self.input_q else x

    def scaled(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y * alpha (* K) + bias``. The scales multiply the +/-1 product afterwards, so the product
        is an exact integer in float32 (a zero stays exactly zero, as in the packed kernel)."""
        shape = (1, -1) + (1,) * (y.dim() - 2)
        if self.weight_scale:
            y = y * bwn_scale(self.weight).view(shape)
        if self.input_scale:
            y = y * (input_scale_map(x, self.kernel_size, self.stride, self.padding) if y.dim() == 4
                     else x.abs().mean(1, keepdim=True))
        return y if self.bias is None else y + self.bias.view(shape)


class BinaryConv2d(nn.Conv2d, _BinaryMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(F.conv2d(self.binary_input(x), self.binary_weight(), None, self.stride, self.padding,
                                    self.dilation, self.groups), x)


class BinaryLinear(nn.Linear, _BinaryMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(F.linear(self.binary_input(x), self.binary_weight()), x)


class KBitAct(nn.Module):
    """DoReFa k-bit activation quantizer in front of a k-bit layer (kept at run time)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_quantizer(f"dorefa{self.bits}")(x)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _training_layer(m: nn.Module, **flags) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        new = BinaryConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                           m.bias is not None, m.padding_mode)
    else:
        new = BinaryLinear(m.in_features, m.out_features, m.bias is not None)
    new._init_binary(**flags)
    new.load_state_dict(m.state_dict())
    with torch.no_grad():
        if flags["weight_q"] in ("ste_sign", "stochastic_sign") and not flags["weight_scale"]:
            new.weight.clamp_(-1, 1)
    return new.to(m.weight.device)


# --- prepare: layer choice, design rules, ReLU removal ---------------------------------------

_PASS = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _chosen(model: nn.Module, config: MethodConfig) -> list[str]:
    layers = [(n, m) for n, m, _ in select(model, config, (nn.Conv2d, nn.Linear))]
    every = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_last = {every[0], every[-1]} if every else set()
    names = []
    for n, m in layers:
        if n in first_last:
            if not config.layers:          # default: first conv and last linear stay float
                continue
            warnings.warn(f"{config.method}: binarizing {n!r}, the first or last layer, usually costs much "
                          "accuracy (the survey's design rule keeps them in float)")
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            warnings.warn(f"{config.method}: binarizing the 1x1 convolution {n!r}; 1x1 convs lose much more "
                          "accuracy than k x k convs when binarized (exclude it to keep it in float)")
        names.append(n)
    if not names:
        warnings.warn(f"{config.method}: no layer selected; nothing binarized")
    return names


def _drop_feeding_relus(model: nn.Module, binary_input: set[str]) -> None:
    """Replace each nn.ReLU whose output reaches only binary-input layers (through pooling etc.)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many types on untraceable code
        warnings.warn(f"binary: cannot trace the model ({type(e).__name__}); ReLUs before binary layers are "
                      "kept, so their sign is always +1: remove them by hand")
        return
    mods = dict(model.named_modules())

    def feeds_only_binary(node: fx.Node) -> bool:
        ok = bool(node.users)
        for u in node.users:
            if u.op == "call_module" and u.target in binary_input:
                continue
            if u.op == "call_module" and isinstance(mods.get(u.target), _PASS):
                ok = ok and feeds_only_binary(u)
            else:
                return False
        return ok

    for node in graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU) and feeds_only_binary(node):
            set_module(model, node.target, nn.Identity())


class _Clip(Callback):
    """Clip latent binary weights to [-1, 1] after every optimizer step."""

    @torch.no_grad()
    def after_step(self, model, step):
        for m in model.modules():
            if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.weight_q in ("ste_sign", "stochastic_sign"):
                m.weight.clamp_(-1, 1)


def _flags(config: MethodConfig) -> dict:
    return {
        BinaryConnect: dict(weight_q="stochastic_sign" if getattr(config, "stochastic", False) else "ste_sign",
                            input_q=None, weight_scale=False, input_scale=False),
        BWN: dict(weight_q="ste_sign", input_q=None, weight_scale=True, input_scale=False),
        BNN: dict(weight_q="ste_sign", input_q="ste_sign", weight_scale=False, input_scale=False),
        XNOR: dict(weight_q="ste_sign", input_q="ste_sign", weight_scale=True, input_scale=True),
    }.get(type(config)) or dict(weight_q=f"dorefa_weight{config.weight_bits}", input_q=f"dorefa{config.act_bits}",
                                weight_scale=False, input_scale=False)


# --- convert: pack ---------------------------------------------------------------------------

def _packed(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        if m.weight_q.startswith("dorefa_weight"):
            bits = int(m.weight_q[len("dorefa_weight"):])
            w = m.binary_weight()                                    # values 2 i / (2^k - 1) - 1
            codes = torch.round((w + 1) / 2 * (2 ** bits - 1)).long()
            book = torch.arange(2 ** bits, dtype=torch.float32) * 2 / (2 ** bits - 1) - 1
            if isinstance(m, nn.Conv2d):
                new = CodebookConv2d(m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride),
                                     list(m.padding), list(m.dilation), m.groups, bits, m.bias is not None)
            else:
                new = CodebookLinear(m.in_features, m.out_features, bits, m.bias is not None)
            new.set_codes(codes, book)
            new.codebook.requires_grad_(False)
            if m.bias is not None:
                new.bias.data.copy_(m.bias)
            return nn.Sequential(KBitAct(int(m.input_q[len("dorefa"):])), new)
        sign = torch.where(m.weight < 0, -1.0, 1.0)
        scale = bwn_scale(m.weight).flatten() if m.weight_scale else torch.ones(sign.shape[0])
        bias = m.bias if m.bias is not None else torch.zeros(sign.shape[0])
        binary_in = m.input_q == "ste_sign"
        if isinstance(m, nn.Conv2d):
            new = PackedBinaryConv2d(m.in_channels, m.out_channels, list(m.kernel_size), list(m.stride),
                                     list(m.padding), m.input_scale, binary_in)
        else:
            new = PackedBinaryLinear(m.in_features, m.out_features, m.input_scale, binary_in)
        new.set_weight(sign, scale, bias)
        return new


@torch.no_grad()
def _fold_scale(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A packed layer with ``bn`` folded into its per-channel scale and bias."""
    s, t = bn_affine(bn)
    layer.scale, layer.bias = (layer.scale * s).clone(), (layer.bias * s + t).clone()
    return layer


def _fold_following_bn(model: nn.Module) -> None:
    """Fold a BatchNorm that directly follows a packed binary layer into its scale and bias."""
    if any(isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear)) for m in model.modules()):
        fold_all(model, _fold_scale, {nn.BatchNorm2d: PackedBinaryConv2d, nn.BatchNorm1d: PackedBinaryLinear})


class _BinaryMethod(Method):
    @classmethod
    def prepare(cls, model: nn.Module, config: MethodConfig) -> nn.Module:
        flags = _flags(config)
        if isinstance(config, KBit) and config.act_bits > 4:
            warnings.warn(f"binary.kbit: act_bits={config.act_bits} > 4 gains little over 4 bits and costs "
                          "kernel efficiency (the survey's design rule)")
        names = _chosen(model, config)
        if flags["input_q"] == "ste_sign":
            _drop_feeding_relus(model, set(names))
        for n in names:
            set_module(model, n, _training_layer(get_module(model, n), **flags))
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: MethodConfig) -> nn.Module:
        was = model.training
        model.eval()
        for n, m in list(model.named_modules()):
            if isinstance(m, (BinaryConv2d, BinaryLinear)):
                set_module(model, n, _packed(m))
        _fold_following_bn(model)
        return model.train(was)

    @classmethod
    def callbacks(cls, model, config):
        return [_Clip()]


for _name, _cfg in (("binary.connect", BinaryConnect), ("binary.bwn", BWN), ("binary.bnn", BNN),
                    ("binary.xnor", XNOR), ("binary.kbit", KBit)):
    register_method(_name)(type(f"{_cfg.__name__}Method", (_BinaryMethod,), {"config_cls": _cfg}))

__all__ = ["BNN", "BWN", "XNOR", "BinaryConnect", "BinaryConv2d", "BinaryLinear", "KBit", "KBitAct"]
