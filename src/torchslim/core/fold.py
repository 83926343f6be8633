"""``core.fold_bn``: fold inference BatchNorm into the preceding conv / linear layer.

For a layer ``y = W x + b`` followed by BN with running statistics
``(mu, var)`` and affine ``(gamma, beta)``::

    s  = gamma / sqrt(var + eps)          (per output channel)
    W' = s * W,    b' = s * (b - mu) + beta

The BN becomes ``nn.Identity``. Exact in eval mode (Jacob et al. 2018, sec. 3.2).
Prepare does nothing (folding has no trainable form); convert folds.
Pairs are found by tracing with ``torch.fx``: a BN is folded only when its
input is a Conv2d/Linear output used by nothing else.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchslim.core.config import MethodConfig
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import get_module, set_module

_PAIRS = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Linear}


@dataclass(frozen=True)
class FoldBN(MethodConfig):
    """Fold BatchNorm into the conv/linear before it. ``layers`` selects BN modules."""


class LeafTracer(fx.Tracer):
    """Treats the given layer types as leaves, and every module that declares ``fx_leaf = True``:
    torchslim's packed runtime layers, whose code (bit unpacking, cached weights, custom kernels)
    fx cannot trace and every graph walker must see as one call."""

    def __init__(self, leaves: tuple = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return getattr(m, "fx_leaf", False) or isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(model: nn.Module, pairs: dict | None = None, leaves: tuple = ()) -> list[tuple[str, str]]:
    """(layer name, BN name) pairs where the BN reads only that layer's output.

    ``pairs`` maps a BN type to the layer type it folds into (default Conv2d/Linear); ``leaves``:
    more module types the tracer does not enter (e.g. packed layers with custom kernels).
    """
    pairs = pairs or _PAIRS
    try:
        graph = LeafTracer(tuple(pairs.values()) + tuple(leaves)).trace(model)
    except Exception as e:  # fx raises many types on untraceable code
        warnings.warn(f"core.fold_bn: cannot trace the model with torch.fx ({type(e).__name__}: {e}); nothing folded")
        return []
    mods = dict(model.named_modules())
    found = []
    for node in graph.nodes:
        if node.op != "call_module" or type(mods.get(node.target)) not in pairs:
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and type(mods.get(src.target)) is pairs[type(mods[node.target])]
            and len(src.users) == 1
        ):
            found.append((src.target, node.target))
    return found


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``bn(y) = s * y + t`` in eval mode: ``s = gamma / sqrt(var + eps)``, ``t = beta - s * mu``."""
    s = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    return s, beta - s * bn.running_mean


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """New conv/linear equal to ``bn(layer(x))`` in eval mode."""
    s, t = bn_affine(bn)
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            True,
            layer.padding_mode,
        )
    else:
        new = nn.Linear(layer.in_features, layer.out_features, True)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    new.weight.copy_(layer.weight * s.view(shape))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new.bias.copy_(s * b + t)
    return new.to(layer.weight.device)


def fold_all(
    model: nn.Module,
    fold: Callable = fold_pair,
    pairs: dict | None = None,
    keep: Callable[[str, str], bool] = lambda layer, bn: True,
) -> int:
    """For every (layer, BN) pair that ``keep`` accepts, the layer becomes ``fold(layer, bn)`` and the BN
    ``nn.Identity`` (``pairs`` as in :func:`conv_bn_pairs`); returns the number folded."""
    n = 0
    for layer_name, bn_name in conv_bn_pairs(model, pairs):
        if keep(layer_name, bn_name):
            set_module(model, layer_name, fold(get_module(model, layer_name), get_module(model, bn_name)))
            set_module(model, bn_name, nn.Identity())
            n += 1
    return n


@register_method("core.fold_bn")
class FoldBNMethod(Method):
    config_cls = FoldBN

    @classmethod
    def prepare(cls, model: nn.Module, config: FoldBN) -> nn.Module:
        list(select(model, config, tuple(_PAIRS)))  # surface selector errors now, not at convert
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: FoldBN) -> nn.Module:
        chosen = {name for name, _, _ in select(model, config, tuple(_PAIRS))}
        folded = fold_all(model, keep=lambda layer, bn: bn in chosen)
        # subclasses (timm's BatchNormAct2d: BatchNorm + activation + drop) are more than an affine map
        others = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and type(m) not in _PAIRS]
        if others or not folded:
            kinds = sorted({type(model.get_submodule(n)).__name__ for n in others})
            kept = (
                f"; kept {len(others)} BatchNorm subclasses {kinds} unfolded (more than an affine map, e.g. "
                f"with an activation), e.g. {others[:3]}"
                if others
                else "; none follows a conv / linear it alone reads"
            )
            warnings.warn(
                f"core.fold_bn: folded {folded} BatchNorm layers{kept}" + ("" if folded else ": model unchanged")
            )
        return model
