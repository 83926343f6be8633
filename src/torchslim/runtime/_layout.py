"""Shared attribute layout of the packed conv layers (as ``nn.Conv2d`` names them)."""

from __future__ import annotations

import torch.nn as nn


def set_conv_geometry(
    m: nn.Module, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int
) -> None:
    """Store conv geometry on ``m`` and set ``m.rows``/``m.cols`` of its 2-D weight (C_out x C_in/g*kh*kw)."""
    pairs = {"kernel_size": (kernel_size, 1), "stride": (stride, 1), "padding": (padding, 0), "dilation": (dilation, 1)}
    for name, (v, lo) in pairs.items():
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x >= lo for x in v)):
            raise ValueError(f"{name}={v!r} must be two integers >= {lo}")
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    m.in_channels, m.out_channels, m.groups = in_channels, out_channels, groups
    m.kernel_size, m.stride = tuple(kernel_size), tuple(stride)
    m.padding, m.dilation = tuple(padding), tuple(dilation)
    m.rows = out_channels
    m.cols = in_channels // groups * m.kernel_size[0] * m.kernel_size[1]


def conv_geometry(m: nn.Module) -> dict:
    """The constructor arguments :func:`set_conv_geometry` stored, as JSON."""
    return dict(
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        kernel_size=list(m.kernel_size),
        stride=list(m.stride),
        padding=list(m.padding),
        dilation=list(m.dilation),
        groups=m.groups,
    )


def linear_geometry(m: nn.Module) -> dict:
    return dict(in_features=m.in_features, out_features=m.out_features)


def dense_macs(m: nn.Module, y) -> tuple[int, int]:
    """Every (output, input) pair of a dense weight in another storage: ``y.numel() * row length``,
    all effective. Rows are ``in_features`` for a linear, ``C_in/g * kh * kw`` for a conv."""
    per_out = m.cols if hasattr(m, "cols") else m.in_features
    return (y.numel() * per_out,) * 2


def dense_module(m: nn.Module, weight, bias) -> nn.Module:
    """A plain ``nn.Conv2d`` / ``nn.Linear`` with ``m``'s geometry and the given (expanded) weight:
    the exact dense form of a packed layer, for export and for ``to_float``."""
    import torch

    if hasattr(m, "in_channels"):
        new = nn.Conv2d(
            m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, bias is not None
        )
    else:
        new = nn.Linear(m.in_features, m.out_features, bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight.detach().reshape(new.weight.shape))
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new
