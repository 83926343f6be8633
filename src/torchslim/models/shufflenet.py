"""ShuffleNetV2 (Ma et al. 2018) for 28-32 px inputs: stride-1 stem, no stem pool."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.models.registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups channel-wise."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleBlock(nn.Module):
    """Stride 1: split channels in half, transform one half, concat, shuffle.
    Stride 2: both branches see the full input and each produces half the output."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        bin_ = cin if stride > 1 else cin // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(bin_, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


_STAGE_OUT = {
    0.25: (24, 48, 96, 512),
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


@register_model
def shufflenetv2(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width_mult: float = 1.0
) -> nn.Module:
    """ShuffleNetV2 with stages of 4-8-4 blocks, each starting with stride 2 (28 -> 14 -> 7 -> 4)."""
    if width_mult not in _STAGE_OUT:
        raise ValueError(f"shufflenetv2 width_mult must be one of {sorted(_STAGE_OUT)}, got {width_mult}")
    *stage_out, last = _STAGE_OUT[width_mult]
    c = 24
    layers: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
    ]
    for out, n in zip(stage_out, (4, 8, 4)):
        for i in range(n):
            layers.append(ShuffleBlock(c, out, 2 if i == 0 else 1))
            c = out
    layers.append(nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True)))
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes))
