"""Architecture as data: modules <-> JSON specs, so a ``.slim`` file rebuilds a
pruned, factorized or packed model without pickle.

A saved model is ``(registry name, kwargs)`` plus *overrides*: for each module
path whose type or constructor arguments differ from the freshly built model,
the spec of the module now there. Only types registered here can be rebuilt,
so loading never runs code named by the file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.surgery import set_module
from torchslim.runtime.base import RuntimeLayer, runtime_layer

# type name -> (class, module -> JSON args, JSON args -> module)
_SPECS: dict[str, tuple[type, Callable[[nn.Module], dict], Callable[[dict], nn.Module]]] = {}


def register_module_spec(
    cls: type, to_args: Callable[[nn.Module], dict], from_args: Callable[[dict], nn.Module] | None = None
) -> None:
    """Allow ``cls`` in saved files. ``from_args`` defaults to ``cls(**args)``."""
    _SPECS[cls.__name__] = (cls, to_args, from_args or (lambda a: cls(**a)))


def _conv_args(m: nn.Conv2d) -> dict:
    return dict(
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        kernel_size=list(m.kernel_size),
        stride=list(m.stride),
        padding=list(m.padding) if not isinstance(m.padding, str) else m.padding,
        dilation=list(m.dilation),
        groups=m.groups,
        bias=m.bias is not None,
        padding_mode=m.padding_mode,
    )


def _bn_args(m: nn.modules.batchnorm._BatchNorm) -> dict:
    return dict(
        num_features=m.num_features,
        eps=m.eps,
        momentum=m.momentum,
        affine=m.affine,
        track_running_stats=m.track_running_stats,
    )


register_module_spec(nn.Conv2d, _conv_args)
register_module_spec(
    nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features, bias=m.bias is not None)
)
register_module_spec(nn.BatchNorm2d, _bn_args)
register_module_spec(nn.BatchNorm1d, _bn_args)
register_module_spec(nn.Identity, lambda m: {})
register_module_spec(nn.Flatten, lambda m: dict(start_dim=m.start_dim, end_dim=m.end_dim))
register_module_spec(nn.Dropout, lambda m: dict(p=m.p))
register_module_spec(nn.MaxPool2d, lambda m: dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding))
register_module_spec(nn.AvgPool2d, lambda m: dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding))
register_module_spec(nn.AdaptiveAvgPool2d, lambda m: dict(output_size=m.output_size))
for _act in (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.GELU, nn.PReLU):
    if _act is nn.PReLU:
        register_module_spec(nn.PReLU, lambda m: dict(num_parameters=m.num_parameters))
    elif _act is nn.Hardtanh:
        register_module_spec(nn.Hardtanh, lambda m: dict(min_val=m.min_val, max_val=m.max_val))
    else:
        register_module_spec(_act, lambda m: {})


def _registered(m: nn.Module) -> bool:
    name = type(m).__name__
    return (name in _SPECS and _SPECS[name][0] is type(m)) or runtime_layer(name) is type(m)


def module_spec(m: nn.Module) -> dict[str, Any]:
    """JSON spec of ``m``; containers (Sequential) are recorded with their children. Runtime
    layers own their spec (``RuntimeLayer.spec_args``); torch layers are registered here."""
    if isinstance(m, nn.Sequential) and type(m) is nn.Sequential:
        return {"type": "Sequential", "children": {n: module_spec(c) for n, c in m.named_children()}}
    name = type(m).__name__
    if isinstance(m, RuntimeLayer) and runtime_layer(name) is type(m):
        return {"type": name, "args": m.spec_args()}
    if name not in _SPECS or _SPECS[name][0] is not type(m):
        raise ValueError(
            f"cannot store a module of type {type(m).__module__}.{name} in a .slim file; register it with "
            "torchslim.export.spec.register_module_spec(cls, to_args, from_args)"
        )
    return {"type": name, "args": _SPECS[name][1](m)}


MAX_DEPTH = 32
_FORBIDDEN_ARGS = {"device", "dtype"}  # a file chooses shapes, never where or in what type memory goes


def _check_args(t: str, cls: type, args: Any) -> dict:
    """Constructor arguments from a file: a mapping of JSON scalars / lists that the type accepts."""
    if not isinstance(args, dict):
        raise ValueError(f"module type {t!r}: args must be a mapping, got {type(args).__name__}")
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"} - _FORBIDDEN_ARGS
    bad = sorted(set(args) - allowed)
    if bad:
        raise ValueError(f"module type {t!r}: unknown constructor argument(s) {bad}")

    def plain(v: Any, depth: int = 0) -> bool:
        if isinstance(v, (bool, int, float, str)) or v is None:
            return True
        if isinstance(v, list) and depth < 2:
            return all(plain(x, depth + 1) for x in v)
        return (
            isinstance(v, dict) and depth < 2 and all(isinstance(k, str) and plain(x, depth + 1) for k, x in v.items())
        )

    for k, v in args.items():
        if not plain(v):
            raise ValueError(f"module type {t!r}: argument {k!r} is not a plain value")
    return dict(args)


def build_module(spec: Any, depth: int = 0) -> nn.Module:
    """Inverse of :func:`module_spec`; only registered type names are built, with the constructor
    arguments those types accept (no device / dtype), at most ``MAX_DEPTH`` containers deep."""
    if depth > MAX_DEPTH:
        raise ValueError(f"module specs nest deeper than {MAX_DEPTH}")
    if not isinstance(spec, dict):
        raise ValueError(f"a module spec must be a mapping, got {type(spec).__name__}")
    t = spec.get("type")
    if t == "Sequential":
        children = spec.get("children")
        if not isinstance(children, dict):
            raise ValueError("a Sequential spec needs a 'children' mapping")
        seq = nn.Sequential()
        for n, child in children.items():
            if not isinstance(n, str) or not n or "." in n:
                raise ValueError(f"a Sequential child name must be a non-empty string without '.', got {n!r}")
            seq.add_module(n, build_module(child, depth + 1))
        return seq
    layer = runtime_layer(t) if isinstance(t, str) else None
    if layer is None and t not in _SPECS:
        raise ValueError(f"the file names module type {t!r}, which this torchslim does not know")
    cls = layer if layer is not None else _SPECS[t][0]
    args = _check_args(t, cls, spec.get("args", {}))
    try:
        return layer.from_spec(args) if layer is not None else _SPECS[t][2](args)
    except Exception as e:  # noqa: BLE001 - whatever a file-declared constructor raises is the file's fault
        raise ValueError(f"module type {t!r} cannot be built from args {args}: {type(e).__name__}: {e}") from None


def diff_overrides(saved: nn.Module, fresh: nn.Module, path: str = "") -> dict[str, dict]:
    """Paths where ``saved`` differs from ``fresh``, with the spec of the saved module."""
    out: dict[str, dict] = {}
    registered = _registered(saved)
    if type(saved) is type(fresh) and not registered:
        s_names = [n for n, _ in saved.named_children()]
        f_names = [n for n, _ in fresh.named_children()]
        if s_names == f_names:
            for n, child in saved.named_children():
                out.update(diff_overrides(child, getattr(fresh, n), f"{path}.{n}" if path else n))
            return out
    elif registered and type(saved) is type(fresh) and module_spec(saved) == module_spec(fresh):
        return out
    if not path:
        raise ValueError("the model's root module type differs from its registry architecture")
    out[path] = module_spec(saved)
    return out


def layer_specs(model: nn.Module) -> dict[str, dict]:
    """Spec of every storable leaf layer by path: the record of a user's model before compression."""
    return {
        n: module_spec(m) for n, m in model.named_modules() if n and _registered(m) and not isinstance(m, nn.Sequential)
    }


def changed_layers(model: nn.Module, original: dict[str, dict]) -> dict[str, dict]:
    """Paths where ``model`` no longer has the layer ``original`` (:func:`layer_specs`) recorded,
    with the spec of what is there now (e.g. a packed layer or a factor chain). The user's own
    container classes are walked, never stored."""
    out: dict[str, dict] = {}

    def walk(mod: nn.Module, path: str) -> None:
        for name, child in mod.named_children():
            p = f"{path}.{name}" if path else name
            if p in original:
                if _storable(child) and module_spec(child) == original[p]:
                    continue
                if not _storable(child):
                    raise ValueError(
                        f"layer {p!r} was replaced by a {type(child).__name__}, which a .slim file "
                        "cannot store; register it with torchslim.export.spec.register_module_spec"
                    )
                out[p] = module_spec(child)
            elif _storable(child) and not any(k.startswith(p + ".") for k in original):
                out[p] = module_spec(child)  # a layer a method added
            else:
                walk(child, p)

    walk(model, "")
    return out


def _storable(m: nn.Module) -> bool:
    if type(m) is nn.Sequential:
        return all(_storable(c) for c in m.children())
    return _registered(m)


def apply_overrides(model: nn.Module, overrides: Any) -> nn.Module:
    """Replace modules at the given paths (parents before children)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a mapping of module paths, got {type(overrides).__name__}")
    for path in sorted(overrides, key=lambda p: p.count(".")):
        if not isinstance(path, str) or not path:
            raise ValueError(f"override path {path!r} is not a module path")
        try:
            set_module(model, path, build_module(overrides[path]))
        except AttributeError:
            raise ValueError(f"the file overrides module {path!r}, which the model does not have") from None
    return model


# Layers a structured method may resize in place (filter pruning, slimming), by base class: the
# user's subclasses of them (timm's BatchNormAct2d / LayerNorm2d / Conv2dSame, ...) are not
# storable types, so a reload gives them the shapes of the file's tensors instead. Each rule sets
# the layer's size attributes from its new weight (or running-mean) shape.
def _resize_conv(m: nn.Conv2d, shapes: dict[str, torch.Size]) -> None:
    if tuple(shapes["weight"][2:]) != tuple(m.weight.shape[2:]):
        raise ValueError("only channel counts may differ")  # a kernel size is no pruning
    out, per_group = shapes["weight"][0], shapes["weight"][1]
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise stays depthwise
        m.groups = out
    m.out_channels, m.in_channels = out, per_group * m.groups


def _resize_linear(m: nn.Linear, shapes: dict[str, torch.Size]) -> None:
    m.out_features, m.in_features = shapes["weight"]


def _resize_bn(m: nn.modules.batchnorm._NormBase, shapes: dict[str, torch.Size]) -> None:
    m.num_features = (shapes.get("weight") or shapes["running_mean"])[0]


def _resize_ln(m: nn.LayerNorm, shapes: dict[str, torch.Size]) -> None:
    m.normalized_shape = tuple(shapes["weight"])


def _resize_gn(m: nn.GroupNorm, shapes: dict[str, torch.Size]) -> None:
    m.num_channels = shapes["weight"][0]


def _resize_none(m: nn.Module, shapes: dict[str, torch.Size]) -> None:
    """A module's own 1-D per-channel parameters: the tensors alone change size."""


_RESIZE: dict[type, Callable[[nn.Module, dict[str, torch.Size]], None]] = {
    nn.Conv2d: _resize_conv,
    nn.Linear: _resize_linear,
    nn.modules.batchnorm._NormBase: _resize_bn,
    nn.LayerNorm: _resize_ln,
    nn.GroupNorm: _resize_gn,
}


def resize_to(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Give every layer of ``model`` whose own parameters / buffers have other shapes in
    ``tensors`` (a state dict) those shapes, when its class derives from a resizable layer
    (``_RESIZE``, looked up along the MRO); returns the paths resized. A mismatch anywhere else
    raises ValueError naming each parameter with both shapes."""
    resized, bad = [], []
    for path, m in model.named_modules():
        own = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        pre = f"{path}." if path else ""
        diff = {
            n: tensors[pre + n].shape
            for n, t in own.items()
            if pre + n in tensors and tensors[pre + n].shape != t.shape
        }
        if not diff:
            continue
        # no rule: a module's own per-channel vectors (ConvNeXt's layer scale ``gamma``) follow the file,
        # as Torch-Pruning prunes them; anything else must match
        rule = next((_RESIZE[c] for c in type(m).__mro__ if c in _RESIZE), None)
        if rule is None and all(own[n].dim() == 1 == len(sh) for n, sh in diff.items()):
            rule = _resize_none
        if rule is None or any(t.dim() != tensors[pre + n].dim() for n, t in own.items() if pre + n in tensors):
            bad += [f"{pre}{n}: file {list(s)} vs model {list(own[n].shape)}" for n, s in diff.items()]
            continue
        new = {n: tensors[pre + n].shape if pre + n in tensors else t.shape for n, t in own.items()}
        try:
            rule(m, new)
        except ValueError:
            bad += [f"{pre}{n}: file {list(s)} vs model {list(own[n].shape)}" for n, s in diff.items()]
            continue
        for n, s in diff.items():
            t = own[n]
            fresh = torch.empty(s, dtype=t.dtype, device=t.device)
            if isinstance(t, nn.Parameter):
                setattr(m, n, nn.Parameter(fresh, requires_grad=t.requires_grad))
            else:
                m._buffers[n] = fresh
        resized.append(path)
    if bad:
        raise ValueError(
            f"size mismatch for {len(bad)} tensor(s): " + "; ".join(bad[:8]) + ("; ..." if len(bad) > 8 else "")
        )
    return resized
