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
from typing import ClassVar

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from torchslim.binary.quantizers import Quantizer, bwn_scale, get_quantizer
from torchslim.core.config import MethodConfig, check_int
from torchslim.core.fold import bn_affine, fold_all
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import get_module, same_layer, set_module
from torchslim.runtime.activation import KBitAct
from torchslim.runtime.binary import PackedBinaryConv2d, PackedBinaryLinear, input_scale_map
from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
from torchslim.train.callbacks import Callback


@dataclass(frozen=True)
class _BinaryConfig(MethodConfig):
    """Shared shape of the binary configs: each names its quantizers (objects with a ``precision``
    and their own gradient) and its scaling; prepare and convert dispatch on those, not on the type."""

    weight_scale: ClassVar[bool] = False  # BWN's alpha = mean|W| per filter
    input_scale: ClassVar[bool] = False  # XNOR-Net's K map

    def weight_quantizer(self) -> Quantizer:
        return get_quantizer("ste_sign")

    def input_quantizer(self) -> Quantizer | None:
        """None: float activations."""
        return None


@dataclass(frozen=True)
class BinaryConnect(_BinaryConfig):
    """Binary weights, float activations. ``stochastic``: sample signs in training."""

    stochastic: bool = False

    def weight_quantizer(self) -> Quantizer:
        return get_quantizer("stochastic_sign" if self.stochastic else "ste_sign")


@dataclass(frozen=True)
class BWN(_BinaryConfig):
    """Binary weights scaled by ``alpha = mean|W|`` per filter, float activations."""

    weight_scale: ClassVar[bool] = True


@dataclass(frozen=True)
class BNN(_BinaryConfig):
    """Binary weights and activations (no scaling)."""

    def input_quantizer(self) -> Quantizer | None:
        return get_quantizer("ste_sign")


@dataclass(frozen=True)
class XNOR(_BinaryConfig):
    """Binary weights (alpha) and activations (input scale map K)."""

    weight_scale: ClassVar[bool] = True
    input_scale: ClassVar[bool] = True

    def input_quantizer(self) -> Quantizer | None:
        return get_quantizer("ste_sign")


@dataclass(frozen=True)
class KBit(_BinaryConfig):
    """DoReFa k-bit weights and activations."""

    weight_bits: int = 2
    act_bits: int = 2

    def weight_quantizer(self) -> Quantizer:
        return get_quantizer(f"dorefa_weight{self.weight_bits}")

    def input_quantizer(self) -> Quantizer | None:
        return get_quantizer(f"dorefa{self.act_bits}")

    def validate(self) -> None:
        check_int(self, "weight_bits", 1, 8)
        check_int(self, "act_bits", 1, 8)


# --- training layers ----------------------------------------------------------------------


class _BinaryMixin:
    """Quantizers and scaling flags shared by the conv and linear training layers."""

    def _init_binary(self, config: _BinaryConfig) -> None:
        self.weight_q, self.input_q = config.weight_quantizer(), config.input_quantizer()
        self.weight_scale, self.input_scale = config.weight_scale, config.input_scale

    @property
    def binary_activations(self) -> bool:
        """Inputs are signs (+/-1): the layer packs to an xnor-popcount kernel."""
        return self.input_q is not None and self.input_q.precision == 1

    def binary_weight(self) -> torch.Tensor:
        """The quantized weight, unscaled (+/-1 for the sign quantizers)."""
        return self.weight_q(self.weight, self.training)

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_q(x, self.training) if self.input_q is not None else x

    def scaled(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y * alpha (* K) + bias``. The scales multiply the +/-1 product afterwards, so the product
        is an exact integer in float32 (a zero stays exactly zero, as in the packed kernel)."""
        shape = (1, -1) + (1,) * (y.dim() - 2)
        if self.weight_scale:
            y = y * bwn_scale(self.weight).view(shape)
        if self.input_scale:
            y = y * (
                input_scale_map(x, self.kernel_size, self.stride, self.padding)
                if y.dim() == 4
                else x.abs().mean(1, keepdim=True)
            )
        return y if self.bias is None else y + self.bias.view(shape)


class BinaryConv2d(nn.Conv2d, _BinaryMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(
            F.conv2d(
                self.binary_input(x), self.binary_weight(), None, self.stride, self.padding, self.dilation, self.groups
            ),
            x,
        )


class BinaryLinear(nn.Linear, _BinaryMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(F.linear(self.binary_input(x), self.binary_weight()), x)


def _training_layer(m: nn.Module, config: _BinaryConfig) -> nn.Module:
    new = same_layer(m, BinaryConv2d if isinstance(m, nn.Conv2d) else BinaryLinear)
    new._init_binary(config)
    with torch.no_grad():
        if new.weight_q.clip_latent and not new.weight_scale:
            new.weight.clamp_(-1, 1)
    return new


# --- prepare: layer choice, design rules, ReLU removal ---------------------------------------

_PASS = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _chosen(model: nn.Module, config: MethodConfig) -> list[str]:
    layers = [(n, m) for n, m, _ in select(model, config, (nn.Conv2d, nn.Linear))]
    every = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_last = {every[0], every[-1]} if every else set()
    names, unsupported, pointwise = [], [], []
    for n, m in layers:
        if isinstance(m, nn.Conv2d) and (
            m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str)
        ):
            unsupported.append(n)  # the packed kernel: groups 1, dilation 1, numeric zero padding
            continue
        if n in first_last:
            if not config.layers:  # default: first conv and last linear stay float
                continue
            warnings.warn(
                f"{config.method}: binarizing {n!r}, the first or last layer, usually costs much "
                "accuracy (the survey's design rule keeps them in float)"
            )
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
            pointwise.append(n)
        names.append(n)
    if unsupported:
        warnings.warn(
            f"{config.method}: keeping {unsupported} in float: grouped / depthwise / dilated convs (or "
            "non-zero padding modes) have no packed binary kernel"
        )
    if pointwise:
        warnings.warn(
            f"{config.method}: binarizing the 1x1 convolutions {pointwise}; 1x1 convs lose much more "
            "accuracy than k x k convs when binarized (exclude them to keep them in float)"
        )
    if not names:
        warnings.warn(f"{config.method}: no layer selected; nothing binarized")
    return names


def _drop_feeding_relus(model: nn.Module, binary_input: set[str]) -> None:
    """Replace each nn.ReLU whose output reaches only binary-input layers (through pooling etc.)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many types on untraceable code
        warnings.warn(
            f"binary: cannot trace the model ({type(e).__name__}); ReLUs before binary layers are "
            "kept, so their sign is always +1: remove them by hand"
        )
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

    # A ReLU written as a function call cannot be removed from the user's forward code: say so.
    def binary_reached(node: fx.Node, seen: set) -> set[str]:
        out: set[str] = set()
        for u in node.users:
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_module" and u.target in binary_input:
                out.add(u.target)
            elif (u.op == "call_module" and isinstance(mods.get(u.target), _PASS)) or (
                u.op in ("call_function", "call_method") and _name(u.target) in _PASS_CALLS
            ):
                out |= binary_reached(u, seen)
        return out

    functional = {}
    for node in graph.nodes:
        if node.op in ("call_function", "call_method") and _name(node.target) in ("relu", "relu_"):
            reached = binary_reached(node, set())
            if reached:
                functional[node.name] = sorted(reached)
    if functional:
        warnings.warn(
            f"binary: ReLUs written as function calls in forward ({functional}) feed binary-input "
            "layers, whose sign input is then always +1; write them as nn.ReLU modules (prepare "
            "removes those) or remove them"
        )


_PASS_CALLS = ("max_pool2d", "flatten", "view", "reshape", "dropout", "cat")  # keep the sign of what passes


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


class _Clip(Callback):
    """Clip latent binary weights to [-1, 1] after every optimizer step."""

    @torch.no_grad()
    def after_step(self, model, step):
        for m in model.modules():
            if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.weight_q.clip_latent:
                m.weight.clamp_(-1, 1)


# --- convert: pack ---------------------------------------------------------------------------


def _packed(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        if m.weight_q.precision > 1:  # k-bit weights: a 2^k-entry codebook
            bits = m.weight_q.precision
            codes, book = m.weight_q.codes(m.binary_weight()), m.weight_q.codebook()
            if isinstance(m, nn.Conv2d):
                new = CodebookConv2d(
                    m.in_channels,
                    m.out_channels,
                    list(m.kernel_size),
                    list(m.stride),
                    list(m.padding),
                    list(m.dilation),
                    m.groups,
                    bits,
                    m.bias is not None,
                )
            else:
                new = CodebookLinear(m.in_features, m.out_features, bits, m.bias is not None)
            new.set_codes(codes, book)
            new.codebook.requires_grad_(False)
            if m.bias is not None:
                new.bias.data.copy_(m.bias)
            return nn.Sequential(KBitAct(m.input_q.precision), new)
        sign = torch.where(m.weight < 0, -1.0, 1.0)
        scale = bwn_scale(m.weight).flatten() if m.weight_scale else torch.ones(sign.shape[0])
        bias = m.bias if m.bias is not None else torch.zeros(sign.shape[0])
        binary_in = m.binary_activations
        if isinstance(m, nn.Conv2d):
            new = PackedBinaryConv2d(
                m.in_channels,
                m.out_channels,
                list(m.kernel_size),
                list(m.stride),
                list(m.padding),
                m.input_scale,
                binary_in,
            )
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
    def prepare(cls, model: nn.Module, config: _BinaryConfig) -> nn.Module:
        act_q = config.input_quantizer()
        if act_q is not None and act_q.precision > 4:
            warnings.warn(
                f"{config.method}: act_bits={act_q.precision} > 4 gains little over 4 bits and costs "
                "kernel efficiency (the survey's design rule)"
            )
        names = _chosen(model, config)
        if act_q is not None and act_q.precision == 1:
            _drop_feeding_relus(model, set(names))
        for n in names:
            set_module(model, n, _training_layer(get_module(model, n), config))
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


@register_method("binary.connect")
class BinaryConnectMethod(_BinaryMethod):
    config_cls = BinaryConnect


@register_method("binary.bwn")
class BWNMethod(_BinaryMethod):
    config_cls = BWN


@register_method("binary.bnn")
class BNNMethod(_BinaryMethod):
    config_cls = BNN


@register_method("binary.xnor")
class XNORMethod(_BinaryMethod):
    config_cls = XNOR


@register_method("binary.kbit")
class KBitMethod(_BinaryMethod):
    config_cls = KBit


__all__ = ["BNN", "BWN", "XNOR", "BinaryConnect", "BinaryConv2d", "BinaryLinear", "KBit", "KBitAct"]
