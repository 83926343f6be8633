"""Shared attribute layout of the packed conv layers (as ``nn.Conv2d`` names them)."""
from __future__ import annotations

import torch.nn as nn


def set_conv_geometry(m: nn.Module, in_channels: int, out_channels: int, kernel_size, stride, padding,
                      dilation, groups: int) -> None:
    """Store conv geometry on ``m`` and set ``m.rows``/``m.cols`` of its 2-D weight (C_out x C_in/g*kh*kw)."""
    m.in_channels, m.out_channels, m.groups = in_channels, out_channels, groups
    m.kernel_size, m.stride = tuple(kernel_size), tuple(stride)
    m.padding, m.dilation = tuple(padding), tuple(dilation)
    m.rows = out_channels
    m.cols = in_channels // groups * m.kernel_size[0] * m.kernel_size[1]
