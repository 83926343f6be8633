"""Foreign architectures, written in plain PyTorch as a user would (no torchslim registry, no
torchvision): every registered method must work on them, skip what it cannot handle with a
warning, or refuse with a clear error. Small widths and 3 x 16 x 16 inputs keep the tests fast."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT = (3, 16, 16)
META = 6  # TwoInput's second input


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (BasicBlocks, stride-2 projection shortcuts), width 8."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, n in enumerate((2, 2, 2, 2)):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNetV3Like(nn.Module):
    """Inverted residuals with depthwise convs, squeeze-excitation, hardswish / SiLU, a residual add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=False), nn.BatchNorm2d(48), nn.Hardswish())
        self.se = SqueezeExcite(48)
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(
            nn.Conv2d(16, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)
        )

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.project(self.se(self.dw(self.expand(x)))))


class InceptionLike(nn.Module):
    """Parallel branches concatenated, a groups=4 conv, GELU, functional calls in forward."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.GELU(), nn.Conv2d(8, 16, 3, 1, 1, groups=4))
        self.b5 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 5, 1, 2))
        self.mix = nn.Conv2d(32, 32, 3, 1, 1)
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x)], 1)
        x = F.max_pool2d(F.relu(x), 2)
        x = F.max_pool2d(F.relu(self.mix(x)), 2)
        return self.fc(x.flatten(1))


class ResNeXtLike(nn.Module):
    """ResNeXt bottleneck blocks: 1x1 -> grouped 3x3 (groups=8) -> 1x1, identity shortcut."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1, groups=8, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 1, bias=False),
            nn.BatchNorm2d(32),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32 * 4, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Functional(nn.Module):
    """Only functional glue: F.relu, torch.cat, x.flatten(1), x + y."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(3, 8, 3, 1, 1)
        self.c = nn.Conv2d(16, 16, 3, 2, 1)
        self.d = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc1, self.fc2 = nn.Linear(16 * 8 * 8, 32), nn.Linear(32, num_classes)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), torch.relu(self.b(x))], 1)
        y = F.relu(self.c(y))
        y = y + self.d(y).relu()
        return self.fc2(F.relu(self.fc1(y.flatten(1))))


class TwoHead(nn.Module):
    """Returns ``(logits, embedding)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, 1, 1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x):
        emb = self.features(x)
        return self.classifier(emb), emb


class TwoInput(nn.Module):
    """``forward(image, meta)``: an image branch and a vector of side information (e.g. a sensor
    reading), joined before the classifier; ``example_inputs`` is a tuple."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.meta = nn.Linear(META, 16)
        self.fc = nn.Linear(32 + 16, num_classes)

    def forward(self, image, meta):
        x = F.relu(self.conv2(F.relu(self.bn1(self.conv1(image)))))
        return self.fc(torch.cat([x.mean((2, 3)), F.relu(self.meta(meta))], 1))


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.fc = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if x.mean() > 0.5:  # data-dependent branch
            x = x * 0.5
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


ZOO = {
    "resnet18": ResNet18,
    "mobilenetv3_like": MobileNetV3Like,
    "inception_like": InceptionLike,
    "resnext_like": ResNeXtLike,
    "functional": Functional,
    "two_head": TwoHead,
    "data_dependent": DataDependent,
    "two_input": TwoInput,
}


def sample(name: str, batch: int, generator: torch.Generator | None = None):
    """A random input batch for zoo model ``name``: a tensor, or a tuple for a multi-input model."""
    image = torch.randn(batch, *INPUT, generator=generator)
    return (image, torch.randn(batch, META, generator=generator)) if name == "two_input" else image


def build(name: str) -> nn.Module:
    """A zoo model with non-trivial BatchNorm statistics, in eval mode (seeded)."""
    torch.manual_seed(0)
    model = ZOO[name]()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            x = sample(name, 16)
            model(*x) if isinstance(x, tuple) else model(x)
    return model.eval()
