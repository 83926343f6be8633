"""MobileNetV2 (Sandler et al. 2018) for 28-32 px inputs: stride-1 stem."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.models.registry import register_model


def _divisible(v: float, d: int = 8) -> int:
    """Round channels to a multiple of ``d`` without dropping more than 10 %."""
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear bottleneck, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


@register_model
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width_mult: float = 1.0
) -> nn.Module:
    """MobileNetV2 with a stride-1 stem and the first stride-2 stage at stride 1.

    Three stride-2 stages remain (28 -> 14 -> 7 -> 4). ``width_mult`` scales
    every layer; the last 1x1 conv keeps 1280 channels for width <= 1, as in
    the paper.
    """
    # t (expansion), c (channels), n (repeats), s (first stride)
    settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    c = _divisible(32 * width_mult)
    last = _divisible(1280 * max(1.0, width_mult))
    features: list[nn.Module] = [_conv_bn(in_channels, c, 3, 1)]
    for t, ch, n, s in settings:
        out = _divisible(ch * width_mult)
        for i in range(n):
            features.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            c = out
    features.append(_conv_bn(c, last, 1))
    return nn.Sequential(
        nn.Sequential(*features),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(last, num_classes),
    )
