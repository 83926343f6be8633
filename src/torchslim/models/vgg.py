"""Small CIFAR-style VGG with BatchNorm."""

from __future__ import annotations

import torch.nn as nn

from torchslim.models.registry import register_model


@register_model
def vgg_small(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 32, hidden: int = 256
) -> nn.Module:
    """VGG-style net: [w, w, M, 2w, 2w, M, 4w, 4w, M] 3x3 conv-BN-ReLU, FC hidden, FC classes.

    ``width=32`` on 1x28x28: about 0.6M parameters and 29M MACs. The
    classifier is a real two-layer MLP so that FC factorization has a target.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for v in (width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    s = input_size // 8
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Sequential(
            nn.Linear(c * s * s, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(hidden, num_classes)
        ),
    )
