"""Module-tree surgery by dotted path: the one traversal helper every method uses."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.core.state import slim_state


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Module at dotted ``path`` ("" is the model itself)."""
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Replace the module at dotted ``path`` by ``new``; returns the old module."""
    if not path:
        raise ValueError("cannot replace the root module in place")
    parent_path, _, leaf = path.rpartition(".")
    parent = get_module(model, parent_path)
    old = getattr(parent, leaf)
    setattr(parent, leaf, new)  # Sequential / ModuleList children are attributes too
    return old


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every module without children."""
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]


def input_shape(model: nn.Module) -> tuple | None:
    """What the model takes, without the batch (a tuple of shapes for several inputs): the one
    convention every call follows. It is the example given to ``compress_(..., example_inputs=x)``,
    the shape recorded in the ``.slim`` file the model was loaded from (``load`` remembers it as
    the example), or a registry model's own input; None when none of them is known."""
    state = slim_state(model)
    if state.example_inputs is not None:
        return inputs.check_shape(inputs.shape_of(state.example_inputs))
    return inputs.arch_shape(state.arch)


def example_inputs(model: nn.Module, batch: int = 1) -> inputs.Inputs:
    """An input batch of ``batch`` samples: the example given to ``compress_`` (its first sample
    repeated; a tuple for a multi-input model), or zeros of the model's :func:`input_shape`."""
    state = slim_state(model)
    p = next(model.parameters(), None)
    device = p.device if p is not None else "cpu"
    if state.example_inputs is not None:
        return inputs.to(inputs.repeat(state.example_inputs, batch), device)
    shape = input_shape(model)
    if shape is None:
        raise ValueError(
            "this method runs the model, and the model is not from the torchslim registry, so its "
            "input shape is unknown: pass an input batch, compress_(model, config, example_inputs=x)"
        )
    return inputs.from_shape(shape, batch, device)


@torch.no_grad()
def capture_inputs(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The input (first sample, batch dim kept) each named module sees in one eval forward pass."""
    seen: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())

    def hook(name: str):
        def grab(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:  # must return None
            seen.setdefault(name, args[0][:1].detach().clone())

        return grab

    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        inputs.call(model, example_inputs(model))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return seen


def same_layer(m: nn.Module, cls: type | None = None) -> nn.Module:
    """A new layer of class ``cls`` (a Conv2d / Linear subclass; default plain Conv2d / Linear) with
    ``m``'s geometry and its weight and bias copied: the one way methods swap a layer's class."""
    conv = isinstance(m, nn.Conv2d)
    cls = cls or (nn.Conv2d if conv else nn.Linear)
    if conv:
        new = cls(
            m.in_channels,
            m.out_channels,
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            m.bias is not None,
            m.padding_mode,
        )
    else:
        new = cls(m.in_features, m.out_features, m.bias is not None)
    new.load_state_dict({k: v for k, v in m.state_dict().items() if k in ("weight", "bias")})
    return new.to(m.weight.device)


@torch.no_grad()
def unreached_layers(model: nn.Module, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[str]:
    """Layers of ``types`` that an eval-mode forward of the example input does not call: auxiliary
    heads that run only in train mode (torchvision's googlenet / inception_v3), unused modules.
    Methods that trace the model in eval mode cannot see how those layers connect."""
    seen: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda *_, n=n: seen.add(n)) for n, m in model.named_modules() if isinstance(m, types)
    ]
    was = model.training
    try:
        inputs.call(model.eval(), example_inputs(model))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return [n for n, m in model.named_modules() if isinstance(m, types) and n not in seen]


@torch.no_grad()
def read_from_outside(model: nn.Module, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> list[str]:
    """Layers of ``types`` whose ``weight`` / ``bias`` the model's code reads outside the layer's
    own forward, in one eval-mode forward of the example input (timm's edgenext takes its device
    and dtype from ``self.token_projection.weight``). A method that replaces such a layer by a
    packed one breaks that code, so :func:`torchslim.core.select.select` keeps them as they are."""
    inside: set[str] = set()
    readers: set[str] = set()
    classes: dict[str, type] = {}
    hooks = []
    for name, mod in model.named_modules():  # a module shared under two names is listed once
        if not isinstance(mod, types):
            continue
        cls = classes[name] = type(mod)

        def getattr_(self, attr, name=name, cls=cls):
            if attr in ("weight", "bias") and name not in inside:
                readers.add(name)
            return cls.__getattr__(self, attr)

        mod.__class__ = type(cls.__name__, (cls,), {"__getattr__": getattr_})
        hooks.append(mod.register_forward_pre_hook(lambda *_, n=name: inside.add(n)))
        hooks.append(mod.register_forward_hook(lambda *_, n=name: inside.discard(n)))
    was = model.training
    try:
        inputs.call(model.eval(), example_inputs(model))
    finally:
        for h in hooks:
            h.remove()
        mods = dict(model.named_modules())
        for name, cls in classes.items():
            mods[name].__class__ = cls
        model.train(was)
    return sorted(readers)
