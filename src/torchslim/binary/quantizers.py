"""Quantizers: tiny registered objects with a ``precision`` and a custom gradient (larq's shape).

* ``ste_sign`` (Courbariaux et al. 2016): ``q = sign(x)`` with ``sign(0) = +1``;
  gradient ``dq/dx = 1[|x| <= 1]`` (straight-through, clipped).
* ``stochastic_sign`` (BinaryConnect): ``q = +1`` with probability
  ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``, else -1; same gradient. In eval
  mode it is deterministic (``ste_sign``).
* ``dorefa`` k-bit activations (Zhou et al. 2016): ``q = round(clip(x, 0, 1) (2^k - 1)) / (2^k - 1)``,
  gradient ``1[0 <= x <= 1]``.
* ``dorefa_weight`` k-bit weights: ``w' = tanh(w) / (2 max|tanh w|) + 1/2``,
  ``q = 2 quantize_k(w') - 1`` (straight-through).
* ``bwn_scale`` (Rastegari et al. 2016): ``alpha_o = mean |W_o|`` per output filter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from torchslim.runtime.activation import dorefa_levels

_QUANTIZERS: dict[str, Quantizer] = {}


class Quantizer(ABC):
    """A named quantizer: ``q(x)`` in the forward pass, its own gradient in the backward pass."""

    name: str = ""
    precision: int = 1
    clip_latent: bool = False  # latent float weights are clipped to [-1, 1] after each step (sign quantizers)

    @abstractmethod
    def __call__(self, x: torch.Tensor, training: bool = True) -> torch.Tensor:
        """The quantized tensor (differentiable through the quantizer's own gradient)."""


def register_quantizer(q: Quantizer) -> Quantizer:
    if q.name in _QUANTIZERS:
        raise ValueError(f"quantizer {q.name!r} is already registered")
    _QUANTIZERS[q.name] = q
    return q


def get_quantizer(name: str) -> Quantizer:
    if name not in _QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; known: {sorted(_QUANTIZERS)}")
    return _QUANTIZERS[name]


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


class _STE(torch.autograd.Function):
    """Forward ``fn(x)``; backward passes the gradient where ``lo <= x <= hi``."""

    @staticmethod
    def forward(ctx, x, fn: Callable, lo: float, hi: float):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x >= ctx.lo) & (x <= ctx.hi)).to(g.dtype), None, None, None


class SteSign(Quantizer):
    name, precision, clip_latent = "ste_sign", 1, True

    def __call__(self, x, training: bool = True):
        return _STE.apply(x, _sign, -1.0, 1.0)


class StochasticSign(Quantizer):
    name, precision, clip_latent = "stochastic_sign", 1, True

    def __call__(self, x, training: bool = True):
        if not training:
            return _STE.apply(x, _sign, -1.0, 1.0)

        def sample(t):
            p = torch.clamp((t + 1) / 2, 0, 1)
            return torch.where(torch.rand_like(t) < p, torch.ones_like(t), -torch.ones_like(t))

        return _STE.apply(x, sample, -1.0, 1.0)


class DoReFa(Quantizer):
    """k-bit activations in [0, 1]."""

    def __init__(self, k: int) -> None:
        self.name, self.precision, self.levels = f"dorefa{k}", k, 2**k - 1

    def __call__(self, x, training: bool = True):
        return _STE.apply(x, lambda t: dorefa_levels(t, self.precision), 0.0, 1.0)


class DoReFaWeight(Quantizer):
    """k-bit weights in [-1, 1]."""

    def __init__(self, k: int) -> None:
        self.name, self.precision, self.levels = f"dorefa_weight{k}", k, 2**k - 1

    def codebook(self) -> torch.Tensor:
        """The 2^k weight values ``2 i / (2^k - 1) - 1`` a code ``i`` stands for."""
        return torch.arange(self.levels + 1, dtype=torch.float32) * 2 / self.levels - 1

    def codes(self, q: torch.Tensor) -> torch.Tensor:
        """Integer codes of quantized weights ``q`` (inverse of :meth:`codebook`)."""
        return torch.round((q + 1) / 2 * self.levels).long()

    def __call__(self, w, training: bool = True):
        t = torch.tanh(w)
        t = t / (2 * t.abs().max().clamp(min=1e-12)) + 0.5
        q = t + (torch.round(t * self.levels) / self.levels - t).detach()
        return 2 * q - 1


def bwn_scale(w: torch.Tensor) -> torch.Tensor:
    """``alpha_o = mean |W_o|`` per output filter, shaped to broadcast against ``w``."""
    return w.abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))


for _q in (SteSign(), StochasticSign(), *(DoReFa(k) for k in range(1, 9)), *(DoReFaWeight(k) for k in range(1, 9))):
    register_quantizer(_q)
