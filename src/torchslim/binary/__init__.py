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
activation quantizer.

Options of the binary-activation methods (``bnn``, ``xnor``) from the binary-training
literature; both stay compatible with the packed kernels:

* ``threshold`` (ReActNet, Liu et al. 2020, RSign): a learned per-input-channel
  threshold, ``sign(x_c - t_c)``; its gradient is the straight-through estimator's.
* ``learned_scale`` (Bulat & Tzimiropoulos 2019, XNOR-Net++): a per-filter scale ``Gamma_o``
  learned by backpropagation (initialized to ``mean|W_o|``) multiplies the +/-1 product in place
  of ``alpha``; it keeps a binary layer that no BatchNorm follows (a hidden FC layer) at the
  scale of its float input instead of at ``+/-n``. It is the packed layer's per-channel scale.
* ``shortcut`` (Bi-Real Net, Liu et al. 2018): each binary conv that a BatchNorm
  follows becomes ``BN(conv(sign(x))) + P(x)``, a real-valued shortcut (``P``: identity,
  ``stride x stride`` means, channels repeated ``out / in`` times), so the block passes
  its real activations on instead of only their signs. ReLUs feeding binary layers are
  removed as before. A conv whose shape does not allow ``P`` (channels not a multiple,
  not 'same' padding) or that no BatchNorm follows keeps no shortcut (warned).

Design-rule warnings (from the survey): binarizing a 1x1
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
from torchslim.core.fold import LeafTracer, bn_affine, conv_bn_pairs, fold_all
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import get_module, same_layer, set_module
from torchslim.runtime.activation import KBitAct
from torchslim.runtime.binary import (
    PackedBinaryConv2d,
    PackedBinaryLinear,
    input_scale_map,
    real_shortcut,
    shortcut_fits,
)
from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
from torchslim.train.callbacks import Callback


@dataclass(frozen=True)
class _BinaryConfig(MethodConfig):
    """Shared shape of the binary configs: each names its quantizers (objects with a ``precision``
    and their own gradient) and its scaling; prepare and convert dispatch on those, not on the type."""

    weight_scale: ClassVar[bool] = False  # BWN's alpha = mean|W| per filter
    input_scale: ClassVar[bool] = False  # XNOR-Net's K map
    threshold: ClassVar[bool] = False  # learned sign thresholds (binary activations only)
    learned_scale: ClassVar[bool] = False  # XNOR-Net++'s learned per-filter scale (binary activations only)
    shortcut: ClassVar[bool] = False  # Bi-Real real-valued shortcuts (binary activations only)

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
class _SignActs(_BinaryConfig):
    """Binary activations, with the optional learned threshold and real-valued shortcut."""

    threshold: bool = False
    shortcut: bool = False
    learned_scale: bool = False

    def input_quantizer(self) -> Quantizer | None:
        return get_quantizer("ste_sign")

    def validate(self) -> None:
        for name in ("threshold", "shortcut", "learned_scale"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}; use true or false")


@dataclass(frozen=True)
class BNN(_SignActs):
    """Binary weights and activations (no scaling)."""


@dataclass(frozen=True)
class XNOR(_SignActs):
    """Binary weights (alpha) and activations (input scale map K)."""

    weight_scale: ClassVar[bool] = True
    input_scale: ClassVar[bool] = True


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

    def _init_binary(self, config: _BinaryConfig, inputs: int) -> None:
        self.weight_q, self.input_q = config.weight_quantizer(), config.input_quantizer()
        self.weight_scale, self.input_scale = config.weight_scale, config.input_scale
        self.threshold = nn.Parameter(torch.zeros(inputs)) if config.threshold else None
        self.gamma = nn.Parameter(bwn_scale(self.weight.detach()).flatten().clone()) if config.learned_scale else None
        self.bn: nn.Module | None = None  # the BatchNorm inside a real-valued shortcut

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """``x - t`` per input channel (RSign), or ``x``."""
        if self.threshold is None:
            return x
        return x - self.threshold.view((1, -1) + (1,) * (x.dim() - 2))

    def block(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``BN(y) + P(x)`` for a layer with a real-valued shortcut, else ``y``."""
        if self.bn is None:
            return y
        return self.bn(y) + real_shortcut(x, self.out_channels, self.stride)

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
        if self.gamma is not None:
            y = y * self.gamma.view(shape)
        elif self.weight_scale:
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
        xs = self.shifted(x)
        y = F.conv2d(
            self.binary_input(xs), self.binary_weight(), None, self.stride, self.padding, self.dilation, self.groups
        )
        return self.block(self.scaled(y, xs), x)


class BinaryLinear(nn.Linear, _BinaryMixin):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:  # (batch, ..., features), e.g. a ViT's tokens: every leading position is a row
            return self.forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)
        xs = self.shifted(x)
        return self.scaled(F.linear(self.binary_input(xs), self.binary_weight()), xs)


def _training_layer(m: nn.Module, config: _BinaryConfig) -> nn.Module:
    new = same_layer(m, BinaryConv2d if isinstance(m, nn.Conv2d) else BinaryLinear)
    new._init_binary(config, m.in_channels if isinstance(m, nn.Conv2d) else m.in_features)
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


def _drop_feeding_relus(model: nn.Module, binary_input: set[str], real_shortcuts: bool = False) -> None:
    """Replace the nn.ReLU modules whose output reaches binary-input layers (through pooling etc.),
    where ``sign(relu(x))`` would always be +1. A ReLU module is replaced when every call of it feeds
    only binary-input layers; with real-valued shortcuts (Bi-Real Net has no ReLU before a sign) when
    any call of it reaches one. A ReLU module or function call left in place that reaches a binary
    layer is reported: the user's code must change there."""
    try:
        graph = LeafTracer().trace(model)  # packed layers of earlier methods are leaves
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

    calls: dict[str, list[tuple[bool, set[str]]]] = {}  # ReLU module -> (feeds only binary, reached) per call
    functional = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU):
            calls.setdefault(node.target, []).append((feeds_only_binary(node), binary_reached(node, set())))
        elif node.op in ("call_function", "call_method") and _name(node.target) in ("relu", "relu_"):
            reached = binary_reached(node, set())
            if reached:
                functional[node.name] = sorted(reached)
    kept = {}
    for name, uses in calls.items():
        reached = set().union(*(r for _, r in uses))
        if all(only for only, _ in uses) or (real_shortcuts and reached):
            set_module(model, name, nn.Identity())
        elif reached:
            kept[name] = sorted(reached)
    if kept:
        warnings.warn(
            f"binary: ReLU modules {kept} feed binary-input layers but are also used elsewhere, so they "
            "stay and those layers' sign input is +1 wherever the ReLU runs before them; give each use "
            "its own module, or use shortcut=True (Bi-Real: every ReLU before a sign is removed)"
        )
    if functional:
        warnings.warn(
            f"binary: ReLUs written as function calls in forward ({functional}) feed binary-input "
            "layers, whose sign input is then always +1; write them as nn.ReLU modules (prepare "
            "removes those) or remove them"
        )


_PASS_CALLS = ("max_pool2d", "flatten", "view", "reshape", "dropout", "cat")  # keep the sign of what passes


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _shortcut_bns(model: nn.Module, names: list[str]) -> dict[str, str]:
    """{binary conv: the BatchNorm that follows it} for the convs that take a real-valued shortcut."""
    pairs = dict(conv_bn_pairs(model, {nn.BatchNorm2d: nn.Conv2d}))
    convs = [n for n in names if isinstance(get_module(model, n), nn.Conv2d)]
    fits = {n: pairs[n] for n in convs if n in pairs and shortcut_fits(get_module(model, n))}
    left = [n for n in convs if n not in fits]
    if left:
        warnings.warn(
            f"shortcut: no real-valued shortcut for {left}: a BatchNorm must follow the conv, its output "
            "channels must be a multiple of its input channels and its padding 'same'"
        )
    return fits


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
        if m.gamma is not None:
            scale = m.gamma.detach().clone()
        else:
            scale = bwn_scale(m.weight).flatten() if m.weight_scale else torch.ones(sign.shape[0])
        bias = m.bias if m.bias is not None else torch.zeros(sign.shape[0])
        binary_in = m.binary_activations
        threshold = m.threshold is not None
        if isinstance(m, nn.Conv2d):
            new = PackedBinaryConv2d(
                m.in_channels,
                m.out_channels,
                list(m.kernel_size),
                list(m.stride),
                list(m.padding),
                m.input_scale,
                binary_in,
                threshold,
                m.bn is not None,
            )
        else:
            new = PackedBinaryLinear(m.in_features, m.out_features, m.input_scale, binary_in, threshold)
        new.set_weight(sign, scale, bias)
        if threshold:
            new.threshold.copy_(m.threshold)
        return new if m.bn is None else _fold_scale(new, m.bn)


@torch.no_grad()
def _fold_scale(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A packed layer with ``bn`` folded into its per-channel scale and bias."""
    s, t = bn_affine(bn)
    layer.scale, layer.bias = (layer.scale * s).clone(), (layer.bias * s + t).clone()
    return layer


def _fold_following_bn(model: nn.Module) -> None:
    """Fold a BatchNorm that directly follows a packed binary layer into its scale and bias."""
    if any(isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear)) for m in model.modules()):
        fold_all(
            model,
            _fold_scale,
            {nn.BatchNorm2d: PackedBinaryConv2d, nn.BatchNorm1d: PackedBinaryLinear},
            keep=lambda layer, bn: not getattr(get_module(model, layer), "shortcut", False),  # BN of the sum
        )


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
        bns = _shortcut_bns(model, names) if config.shortcut else {}
        if act_q is not None and act_q.precision == 1:
            _drop_feeding_relus(model, set(names), config.shortcut)
        for n in names:
            layer = _training_layer(get_module(model, n), config)
            if n in bns:  # the BatchNorm moves inside the layer: BN(conv(sign(x))) + P(x)
                layer.bn = get_module(model, bns[n])
                set_module(model, bns[n], nn.Identity())
            set_module(model, n, layer)
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
