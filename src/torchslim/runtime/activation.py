"""Deploy-time activation quantizers (kept in the converted model)."""

from __future__ import annotations

import torch
import torch.nn as nn

from torchslim.runtime.base import RuntimeLayer


def dorefa_levels(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa k-bit activation (Zhou et al. 2016): ``round(clip(x, 0, 1) (2^k - 1)) / (2^k - 1)``."""
    levels = 2**bits - 1
    return torch.round(torch.clamp(x, 0, 1) * levels) / levels


class KBitAct(RuntimeLayer):
    """DoReFa k-bit activation quantizer in front of a k-bit layer (elementwise: no MACs)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"KBitAct bits={bits!r}; use an integer in [1, 8]")
        self.bits = bits

    def spec_args(self) -> dict:
        return dict(bits=self.bits)

    def lowered(self, **info) -> nn.Module:
        return self  # clamp / round / divide: plain ops already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dorefa_levels(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
