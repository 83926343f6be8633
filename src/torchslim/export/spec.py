"""Architecture as data: modules <-> JSON specs, so a ``.slim`` file rebuilds a
pruned, factorized or packed model without pickle.

A saved model is ``(registry name, kwargs)`` plus *overrides*: for each module
path whose type or constructor arguments differ from the freshly built model,
the spec of the module now there. Only types registered here can be rebuilt,
so loading never runs code named by the file.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from torchslim.core.surgery import set_module

# type name -> (class, module -> JSON args, JSON args -> module)
_SPECS: dict[str, tuple[type, Callable[[nn.Module], dict], Callable[[dict], nn.Module]]] = {}


def register_module_spec(cls: type, to_args: Callable[[nn.Module], dict],
                         from_args: Callable[[dict], nn.Module] | None = None) -> None:
    """Allow ``cls`` in saved files. ``from_args`` defaults to ``cls(**args)``."""
    _SPECS[cls.__name__] = (cls, to_args, from_args or (lambda a: cls(**a)))


def _conv_args(m: nn.Conv2d) -> dict:
    return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                stride=list(m.stride), padding=list(m.padding) if not isinstance(m.padding, str) else m.padding,
                dilation=list(m.dilation), groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode)


def _bn_args(m: nn.modules.batchnorm._BatchNorm) -> dict:
    return dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                track_running_stats=m.track_running_stats)


register_module_spec(nn.Conv2d, _conv_args)
register_module_spec(nn.Linear, lambda m: dict(in_features=m.in_features, out_features=m.out_features,
                                               bias=m.bias is not None))
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


def module_spec(m: nn.Module) -> dict[str, Any]:
    """JSON spec of ``m``; containers (Sequential) are recorded with their children."""
    if isinstance(m, nn.Sequential) and type(m) is nn.Sequential:
        return {"type": "Sequential", "children": {n: module_spec(c) for n, c in m.named_children()}}
    name = type(m).__name__
    if name not in _SPECS or _SPECS[name][0] is not type(m):
        raise ValueError(
            f"cannot store a module of type {type(m).__module__}.{name} in a .slim file; register it with "
            "torchslim.export.spec.register_module_spec(cls, to_args, from_args)"
        )
    return {"type": name, "args": _SPECS[name][1](m)}


def build_module(spec: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`module_spec`; only registered type names are built."""
    t = spec.get("type")
    if t == "Sequential":
        seq = nn.Sequential()
        for n, child in spec["children"].items():
            seq.add_module(n, build_module(child))
        return seq
    if t not in _SPECS:
        raise ValueError(f"the file names module type {t!r}, which this torchslim does not know")
    return _SPECS[t][2](dict(spec.get("args", {})))


def diff_overrides(saved: nn.Module, fresh: nn.Module, path: str = "") -> dict[str, dict]:
    """Paths where ``saved`` differs from ``fresh``, with the spec of the saved module."""
    out: dict[str, dict] = {}
    registered = type(saved).__name__ in _SPECS and _SPECS[type(saved).__name__][0] is type(saved)
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


def apply_overrides(model: nn.Module, overrides: dict[str, dict]) -> nn.Module:
    """Replace modules at the given paths (parents before children)."""
    for path in sorted(overrides, key=lambda p: p.count(".")):
        try:
            set_module(model, path, build_module(overrides[path]))
        except AttributeError:
            raise ValueError(f"the file overrides module {path!r}, which the model does not have") from None
    return model


def _register_runtime() -> None:
    from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
    from torchslim.runtime.product import ProductConv2d, ProductLinear
    from torchslim.runtime.sparse import SparseConv2d, SparseLinear
    from torchslim.runtime.uniform import UniformConv2d, UniformLinear
    from torchslim.runtime.binary import PackedBinaryConv2d, PackedBinaryLinear
    from torchslim.binary import KBitAct

    def conv_geometry(m: nn.Module) -> dict:
        return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
                    stride=list(m.stride), padding=list(m.padding), dilation=list(m.dilation), groups=m.groups)

    register_module_spec(SparseLinear, lambda m: dict(
        in_features=m.in_features, out_features=m.out_features, nnz=m.nnz, bias=m.bias is not None,
        kernel=m.kernel, timing=m.timing, bits=m.bits))
    register_module_spec(SparseConv2d, lambda m: dict(
        **conv_geometry(m), nnz=m.nnz, bias=m.bias is not None, kernel=m.kernel, timing=m.timing, bits=m.bits))
    register_module_spec(CodebookLinear, lambda m: dict(
        in_features=m.in_features, out_features=m.out_features, bits=m.bits, bias=m.bias is not None))
    register_module_spec(CodebookConv2d, lambda m: dict(**conv_geometry(m), bits=m.bits, bias=m.bias is not None))
    register_module_spec(ProductLinear, lambda m: dict(
        in_features=m.in_features, out_features=m.out_features, sub_dim=m.sub_dim, bits=m.bits,
        bias=m.bias is not None, kernel=m.kernel, timing=m.timing))
    register_module_spec(ProductConv2d, lambda m: dict(**conv_geometry(m), sub_dim=m.sub_dim, bits=m.bits,
                                                       bias=m.bias is not None))

    uniform = lambda m: dict(bits=m.bits, symmetric=m.symmetric, act_bits=m.act_bits,  # noqa: E731
                             out_float=m.out_float, bias=m.bias is not None)
    register_module_spec(UniformLinear, lambda m: dict(in_features=m.in_features, out_features=m.out_features,
                                                       **uniform(m)))
    register_module_spec(UniformConv2d, lambda m: dict(**conv_geometry(m), **uniform(m)))
    register_module_spec(PackedBinaryLinear, lambda m: dict(
        in_features=m.in_features, out_features=m.out_features, input_scaling=m.input_scaling,
        binary_input=m.binary_input))
    register_module_spec(PackedBinaryConv2d, lambda m: dict(
        in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=list(m.kernel_size),
        stride=list(m.stride), padding=list(m.padding), input_scaling=m.input_scaling,
        binary_input=m.binary_input))
    register_module_spec(KBitAct, lambda m: dict(bits=m.bits))


_register_runtime()
