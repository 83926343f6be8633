"""Parameters, nonzeros and MACs, per layer and in total.

MACs are counted with forward hooks on leaf modules: runtime layers own their
rule (``RuntimeLayer.macs``), other types register one here (``register_macs``). Dense
rules: Conv2d ``N * H_out * W_out * C_out * (C_in / groups) * k_h * k_w``;
Linear ``N * in * out`` (per input row).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.core.surgery import leaf_modules
from torchslim.runtime.base import RuntimeLayer

# type -> f(module, input, output) -> (dense MACs, effective MACs)
_MACS: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[int, int]]] = {}


def register_macs(cls: type) -> Callable:
    """Decorator: MAC rule for a module type, returning (dense MACs, effective MACs).

    Effective MACs skip work the layer really skips (zeros in a sparse kernel);
    for dense layers the two are equal.
    """

    def deco(fn: Callable) -> Callable:
        _MACS[cls] = fn
        return fn

    return deco


@register_macs(nn.Conv2d)
def _conv_macs(m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    per_out = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    return (y.numel() * per_out,) * 2


@register_macs(nn.Linear)
def _linear_macs(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    return (y.numel() * m.in_features,) * 2


def _mac_rule(m: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], tuple[int, int]] | None:
    """The module's MAC rule: its own (runtime layers) or the one registered for its type."""
    if isinstance(m, RuntimeLayer):
        return m.macs
    fn = _MACS.get(type(m))
    return None if fn is None else (lambda x, y: fn(m, x, y))


def _own_counts(m: nn.Module) -> tuple[int, int]:
    """(weights, nonzero weights) a module represents. Packed runtime modules report their
    logical weights through ``weight_counts()`` (a codebook layer stores 16 floats but
    represents every weight); other modules count their own parameters."""
    if isinstance(m, RuntimeLayer):
        return m.weight_counts()
    own = list(m.parameters(recurse=False))
    return sum(p.numel() for p in own), sum(int(torch.count_nonzero(p)) for p in own)


def count_params(model: nn.Module) -> int:
    """Number of weights the model represents (for packed layers: logical weights, not storage)."""
    return sum(_own_counts(m)[0] for m in model.modules())


def count_nonzeros(model: nn.Module) -> int:
    """Nonzero weights (a mask that zeroes weights shows up here, not in params)."""
    return sum(_own_counts(m)[1] for m in model.modules())


@torch.no_grad()
def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Per leaf module: name, type, output shape, params, nonzeros, MACs for one input of ``input_shape``."""
    rows: dict[str, dict] = {}
    hooks = []
    for name, mod in leaf_modules(model):
        params, nonzeros = _own_counts(mod)
        rows[name] = {
            "name": name,
            "type": type(mod).__name__,
            "out_shape": None,
            "params": params,
            "nonzeros": nonzeros,
            "macs": 0,
            "effective_macs": 0,
        }
        rule = _mac_rule(mod)
        if rule is not None:

            def hook(m, inp, out, _n=name, _rule=rule):
                dense, eff = _rule(inp[0], out)
                rows[_n]["macs"] += int(dense)
                rows[_n]["effective_macs"] += int(eff)
                rows[_n]["out_shape"] = list(out.shape[1:])

            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        inputs.call(model, inputs.from_shape(input_shape, 1, p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(rows.values())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total dense MACs for one input of ``input_shape`` (C, H, W)."""
    return sum(r["macs"] for r in layer_table(model, input_shape))
