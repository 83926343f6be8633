"""Max pooling as the elementwise maximum of strided views.

PyTorch's CPU ``max_pool2d`` on NCHW tensors is slow: measured on this project's 2-core AMD EPYC
(AVX-512) at batch 256, 8.0 ms for a 20x24x24 map and 54.7 ms for 64x32x32, against 0.8 ms and
16.1 ms for ``maximum`` over the four strided 2x2 views, with identical outputs. In LeNet-5 and
VGG-small that pooling was 30-45 % of the whole forward time (benchmarks/speed.py profile).
:class:`StridedMaxPool2d` computes the same function for the non-overlapping case (kernel equal
to stride, no padding, no dilation, floor mode): ``y[i, j] = max_{a, b < k} x[k i + a, k j + b]``,
NaN propagating as in ``max_pool2d``. The ``eager`` engine (:mod:`torchslim.engines`) runs
models with it; saved files keep ``nn.MaxPool2d``. At batch 1 a float32 NCHW map is pooled by
one serial numba loop instead (where numba is installed): per-call overhead dominates there, and
``max_pool2d`` took 14-24 us on a 20x24x24 map against 2-4 us (measured on the same CPU). A float32
channels-last (NHWC) map, as the eager engine passes between oneDNN or bit-packed convolutions, is
pooled by a parallel numba loop over output rows whose inner loop runs over a pixel's contiguous
channels (vectorized): 32x28x28 at batch 256, 1.9-2.1 ms for the strided views and 2.4 ms for
``max_pool2d`` against 0.95 ms (its 25.7 MB input read from memory once; 64x14x14: 0.66 -> 0.25 ms).
At batch 1 ``max_pool2d`` is kept there (8.5 vs 14 us).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from torchslim.runtime._numba import match_torch_threads, module_kernels

_NUMBA: dict | bool | None = None


def _numba_kernels() -> dict | bool:
    """The compiled batch-1 pooling loop, or False without numba."""
    return module_kernels(__name__)


def _build() -> dict | bool:
    """Compile this module's kernel (:func:`_numba_kernels` calls it once, numba installed)."""
    import numpy as np
    from numba import njit, prange

    @njit(cache=True, nogil=True)
    def max_pool(x, kh, kw):
        # x (P, H, W) -> (P, H // kh, W // kw), y[p, i, j] = max_{a < kh, b < kw} x[p, kh i + a, kw j + b];
        # a NaN in the window gives NaN, as max_pool2d does
        p_, h, w = x.shape
        ho, wo = h // kh, w // kw
        out = np.empty((p_, ho, wo), np.float32)
        for p in range(p_):
            for i in range(ho):
                y = out[p, i]
                for j in range(wo):
                    y[j] = x[p, i * kh, j * kw]
                for a in range(kh):
                    r = x[p, i * kh + a]
                    for b in range(kw):
                        for j in range(wo):  # a select, not a branch: the loop vectorizes
                            v, m = r[j * kw + b], y[j]
                            y[j] = v if (v > m or v != v) else m
        return out

    @njit(parallel=True, cache=True, nogil=True)
    def max_pool_nhwc(x, kh, kw, out):
        # x (B, H, W, C) -> out (B, H // kh, W // kw, C), the same maximum (NaN propagating), one
        # output row per iteration; a pixel's channels are contiguous, so the select runs over
        # vectors of channels (`|`, not `or`: no branch)
        nb, ho, wo, c = out.shape
        for idx in prange(nb * ho):
            b, i = idx // ho, idx % ho
            y, r0 = out[b, i], x[b, i * kh]
            for j in range(wo):
                yj, rj = y[j], r0[j * kw]
                for ch in range(c):
                    yj[ch] = rj[ch]
            for a in range(kh):
                r = x[b, i * kh + a]
                for j in range(wo):
                    yj = y[j]
                    for e in range(kw):
                        rj = r[j * kw + e]
                        for ch in range(c):
                            v, m = rj[ch], yj[ch]
                            yj[ch] = v if (v > m) | (v != v) else m

    return {"max_pool": max_pool, "max_pool_nhwc": max_pool_nhwc}


def pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class StridedMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with kernel == stride computed as a maximum of strided views."""

    @staticmethod
    def applies(m: nn.Module) -> bool:
        return (
            type(m) is nn.MaxPool2d
            and pair(m.kernel_size) == pair(m.stride or m.kernel_size)
            and pair(m.padding) == (0, 0)
            and pair(m.dilation) == (1, 1)
            and not m.ceil_mode
            and not m.return_indices
        )

    @classmethod
    def from_pool(cls, m: nn.MaxPool2d) -> StridedMaxPool2d:
        return cls(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int8 tensors keep the quantized kernel; at batch 1 one max_pool2d call beats four views
        # (measured: 14 vs 27 us on a 20x24x24 map, equal at 64x32x32)
        if x.dim() != 4 or x.is_quantized:
            return super().forward(x)
        kh, kw = pair(self.kernel_size)
        nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        if nhwc and x.shape[0] > 1 and (k := _numba_kernels() if _plain(x) else False):
            n, c, h, w = x.shape
            out = torch.empty(n, h // kh, w // kw, c)
            match_torch_threads()
            k["max_pool_nhwc"](x.detach().permute(0, 2, 3, 1).numpy(), kh, kw, out.numpy())
            return out.permute(0, 3, 1, 2)
        if x.shape[0] == 1:
            k = _numba_kernels() if _plain(x) and x.is_contiguous() else False
            if not k:
                return super().forward(x)
            n, c, h, w = x.shape
            return torch.from_numpy(k["max_pool"](x.detach().numpy().reshape(c, h, w), kh, kw)).unsqueeze(0)
        h, w = x.shape[-2] // kh, x.shape[-1] // kw
        x = x[..., : h * kh, : w * kw]
        views = [x[..., a::kh, b::kw] for a in range(kh) for b in range(kw)]
        out = torch.maximum(views[0], views[1]) if len(views) > 1 else views[0].clone()
        for v in views[2:]:  # in place: one output buffer (its layout follows x's: NCHW, NHWC or batch-last)
            torch.maximum(out, v, out=out)
        # NHWC in, NHWC out (a no-op when the views' maximum is NHWC-contiguous already); a batch-last
        # input (a direct sparse convolution's output) stays batch-last
        if x.stride(0) == 1 and x.shape[0] > 1:
            return out
        return out.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def _plain(x: torch.Tensor) -> bool:
    """A float32 CPU tensor that no gradient has to flow through."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())


def with_modules(model: nn.Module, swap: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """A view of ``model`` with each module for which ``swap`` returns a replacement replaced:
    the modules on the path to a replaced one are shallow copies, everything else (parameters,
    packed layers and their caches) is shared with ``model``, which is left unchanged."""
    new = swap(model)
    if new is not None:
        return new
    kids = {n: with_modules(c, swap) for n, c in model._modules.items() if c is not None}
    if all(kids[n] is model._modules[n] for n in kids):
        return model
    clone = copy.copy(model)
    clone._modules = {**model._modules, **kids}
    return clone


def fast_pooling(model: nn.Module) -> nn.Module:
    """``model`` with every eligible ``nn.MaxPool2d`` computed by :class:`StridedMaxPool2d`."""
    return with_modules(model, lambda m: StridedMaxPool2d.from_pool(m) if StridedMaxPool2d.applies(m) else None)
