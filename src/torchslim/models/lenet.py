"""LeNet family: the models Han et al. (Deep Compression, 2016) compressed."""

from __future__ import annotations

import torch.nn as nn

from torchslim.models.registry import register_model


def _conv_out(size: int, k: int) -> int:
    return size - k + 1


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """Caffe LeNet-5: conv5x5x20, pool, conv5x5x50, pool, FC 800->500, FC 500->classes.

    On 1x28x28 input: 431K parameters, 2.3M MACs (Han et al. 2016, Table 1).
    """
    s = _conv_out(_conv_out(input_size, 5) // 2, 5) // 2  # 28 -> 24 -> 12 -> 8 -> 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * s * s, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


@register_model
def lenet5_classic(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeCun et al. 1998 LeNet-5: 6-16-120-84 with 2-pixel padding on 28x28 input."""
    pad = 2 if input_size == 28 else 0  # the 1998 net saw 32x32 inputs
    s = _conv_out(_conv_out(input_size + 2 * pad, 5) // 2, 5) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * s * s, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


@register_model
def lenet300_100(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """LeNet-300-100 MLP: 784-300-100-classes (267K parameters on 28x28)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * input_size * input_size, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )
