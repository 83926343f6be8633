"""Views of a converted model that the ``eager`` engine runs: each returns a new module tree that
shares every parameter and packed layer with the model, which is left unchanged.

* :func:`dense_view`: packed layers whose kernel is the dense op on their expanded weight run as
  that plain layer (:meth:`RuntimeLayer.as_dense`), so they fold and go channels-last like floats;
* :func:`folded_bn`: each BatchNorm that reads only a float conv's / linear's output folded into it
  (``W' = s W, b' = s (b - mu) + beta``; equal up to float32 rounding);
* :func:`fused_epilogues`: a packed layer takes over a following non-overlapping max pooling and
  writes the next packed layer's input words (:meth:`RuntimeLayer.fused`);
* :func:`channels_last_view` / :func:`prefers_channels_last`: NHWC weights for oneDNN's convolutions;
* :func:`batch_last_view`: packed layers that pass their own output layout on
  (:meth:`RuntimeLayer.with_layout`: the direct sparse conv's batch-last maps).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.core.fold import LeafTracer, conv_bn_pairs, fold_pair
from torchslim.core.surgery import get_module
from torchslim.runtime.base import RuntimeLayer
from torchslim.runtime.pool import StridedMaxPool2d, pair, with_modules


def fused_epilogues(model: nn.Module) -> nn.Module:
    """A view of ``model`` where packed layers take over what reads their output
    (:meth:`RuntimeLayer.fused`; today the bit-packed binary conv):

    * a non-overlapping ``nn.MaxPool2d`` that is the only reader of the layer's output (through
      ``nn.Identity`` modules: a folded BatchNorm, a removed ReLU) pools in the layer's epilogue
      and becomes ``nn.Identity``: the unpooled map is never written to memory (vgg_small's first
      binary block: a 25.7 MB map at batch 256). Exact: the same maximum.
    * a layer whose output (pooled or not, through ``nn.Identity`` modules) only another packed
      layer reads, one that takes packed input words (:meth:`RuntimeLayer.accepts_words`), writes
      those words directly: the float map is neither written nor read back and packed (BNN without
      Bi-Real shortcuts). Exact: the same comparisons of the same floats.

    Modules called at more than one place, and pooling written as a function call, are left alone;
    an untraceable model is returned as it is."""
    if not any(isinstance(m, RuntimeLayer) for m in model.modules()):
        return model
    try:
        graph = LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code: nothing fused
        return model
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    swap: dict[int, nn.Module] = {}
    for node in graph.nodes:
        layer = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, RuntimeLayer) or calls[node.target] != 1:
            continue
        cur, pool, reader = node, None, None
        while len(cur.users) == 1 and (user := next(iter(cur.users))).op == "call_module":
            m = mods[user.target]
            if type(m) is nn.Identity:
                cur = user
            elif pool is None and StridedMaxPool2d.applies(m) and calls[user.target] == 1:
                cur, pool = user, m
            else:
                if isinstance(m, RuntimeLayer) and m.accepts_words() and calls[user.target] == 1:
                    reader = m
                break
        window = pair(pool.kernel_size) if pool is not None else None
        new = layer.fused(window, reader) or (layer.fused(window, None) if reader is not None and window else None)
        if new is None:
            continue
        swap[id(layer)] = new
        if window is not None and new is not None:
            swap[id(pool)] = nn.Identity()
    return with_modules(model, lambda m: swap.get(id(m))) if swap else model


def batch_last_view(model: nn.Module, input_shape: tuple) -> nn.Module:
    """A view of ``model`` whose packed layers pass their own output layout on where they have one
    (:meth:`RuntimeLayer.with_layout`: the direct sparse conv's batch-last maps), so the next such
    layer and the pooling between them need no transpose. A model whose own code needs
    NCHW-contiguous tensors there (``.view`` after a conv) fails on the view; it is tried once at
    batch 2 and ``model`` is returned if it fails."""
    view = with_modules(model, lambda m: m.with_layout("batch_last") if isinstance(m, RuntimeLayer) else None)
    if view is model:
        return model
    try:
        with torch.no_grad():
            inputs.call(view, inputs.from_shape(input_shape, batch=2))
    except Exception:  # noqa: BLE001 - e.g. a .view() of a batch-last tensor: keep NCHW outputs
        return model
    return view


def dense_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` with every packed layer whose kernel is the dense op on its expanded
    weight replaced by that dense layer (:meth:`RuntimeLayer.as_dense`); the model is not changed."""

    return with_modules(model, lambda m: m.as_dense() if isinstance(m, RuntimeLayer) else None)


def prefers_channels_last(model: nn.Module) -> bool:
    """Channels-last when the model's convolutions are oneDNN's (plain ``nn.Conv2d`` past the
    input layer) or packed ones that read and write NHWC themselves (``takes_channels_last``: the
    bit-packed binary conv), and no other packed convolution would have to copy its input back to
    NCHW (the int8, sparse and product kernels read NCHW). A fixed rule rather than a timing at
    build time, so that the layout, and the float rounding that comes with it, is the same on every
    run."""

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, RuntimeLayer)) and hasattr(m, "kernel_size")]
    if any(isinstance(m, RuntimeLayer) and not m.takes_channels_last for m in convs):
        return False
    return any(isinstance(m, RuntimeLayer) or (type(m) is nn.Conv2d and m.in_channels > 1) for m in convs)


class ChannelsLast(nn.Module):
    """Runs ``module`` on channels-last copies of its 4-D inputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *x):
        return self.module(*(_nhwc(t) if t.dim() == 4 else t for t in x))


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` with explicit channels-last strides (see :func:`channels_last_view`)."""
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def channels_last_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose plain ``nn.Conv2d`` layers hold channels-last weights (copies of
    the weights; the model is not changed)."""

    def swap(m: nn.Module) -> nn.Module | None:
        if type(m) is not nn.Conv2d:
            return None
        new = copy.copy(m)
        new._parameters = dict(m._parameters)
        # empty_like gives explicit NHWC strides also where a size-1 dim makes them ambiguous
        # (1x1 and depthwise kernels); .contiguous() would keep NCHW strides there, and oneDNN
        # would then run that conv in NCHW with layout conversions around it (2.4x slower CP)
        w = torch.empty_like(m.weight, memory_format=torch.channels_last).copy_(m.weight.detach())
        new.weight = nn.Parameter(w, False)
        return new

    return with_modules(model, swap)


def folded_bn(model: nn.Module) -> nn.Module:
    """A view of ``model`` (eval mode) with every foldable (Conv2d / Linear, BatchNorm) pair folded
    (:func:`torchslim.core.fold.fold_pair`); the model is not changed. An untraceable model is
    returned as it is."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untraceable: nothing folded
        pairs = conv_bn_pairs(model)
    swap: dict[int, nn.Module] = {}
    for layer, bn in pairs:
        swap[id(get_module(model, layer))] = fold_pair(get_module(model, layer), get_module(model, bn))
        swap[id(get_module(model, bn))] = nn.Identity()
    return with_modules(model, lambda m: swap.get(id(m))) if swap else model
