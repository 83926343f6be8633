"""``quant.kmeans``: scalar k-means weight sharing (Gong et al. 2014; Han et al. 2016,
"Deep Compression").

Per layer, the weights are clustered into ``k = 2**bits`` centroids with Lloyd's
algorithm (assign each weight to its nearest centroid, move each centroid to
the mean of its weights). Initialisation (Han et al. found linear best):

* ``linear``: centroids evenly spaced over [min w, max w];
* ``density``: evenly spaced over the CDF of w (quantiles);
* ``random``: k weights drawn at random.

Each layer then stores ``bits``-bit indices plus the k-entry codebook, about
``32 n / (bits * n + 32 k)`` times smaller than float32. Pruned layers
(``SparseLinear/SparseConv2d``) cluster only their stored nonzeros, so zeros
stay zero and the CSR structure is kept.

Codebook fine-tuning: the weight is ``codebook[codes]``, so autograd gives each
centroid the *sum* of the gradients of the weights assigned to it; codes stay
fixed. Prepare already produces the packed trainable layer, so convert has
nothing left to do; the layer's original weight Parameter is replaced (an
optimizer built before prepare must be rebuilt).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim.core.config import MethodConfig, check_choice, check_int
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import set_module
from torchslim.runtime.codebook import CodebookConv2d, CodebookLinear
from torchslim.runtime.sparse import SparseConv2d, SparseLinear

INITS = ("linear", "density", "random")


@dataclass(frozen=True)
class KMeans(MethodConfig):
    """Scalar k-means weight sharing.

    Attributes:
        bits: index width, 1..8 (k = 2**bits centroids); per-layer via overrides
            (Han et al.: conv 8, fc 5).
        init: ``linear``, ``density`` or ``random``.
        iters: Lloyd iterations (stops early when assignments settle).
        seed: for ``random`` initialisation.
    """

    bits: int = 5
    init: str = "linear"
    iters: int = 30
    seed: int = 0

    def validate(self) -> None:
        check_int(self, "bits", 1, 8)
        check_choice(self, "init", INITS)
        check_int(self, "iters", 1)


def init_centroids(w: torch.Tensor, k: int, init: str, seed: int = 0) -> torch.Tensor:
    """Initial centroids for 1-D data ``w``."""
    if init == "linear":
        return torch.linspace(float(w.min()), float(w.max()), k)
    if init == "density":
        return torch.quantile(w, torch.linspace(0, 1, k))
    g = torch.Generator().manual_seed(seed)
    return w[torch.randint(0, w.numel(), (k,), generator=g)].clone()


def kmeans_1d(
    w: torch.Tensor, k: int, init: str = "linear", iters: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm on a 1-D tensor. Returns (codes int64 of w's shape, centroids (k,)).

    Assignment uses sorted centroids and ``bucketize`` on their midpoints (exact
    nearest-centroid in 1-D, O(n log k)); an empty cluster keeps its centroid.
    """
    x = w.detach().flatten().float().cpu()
    if x.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.int64), torch.zeros(k)
    c = init_centroids(x, k, init, seed)
    codes = None
    for _ in range(iters):
        c, _ = torch.sort(c)
        new = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        sums = torch.zeros(k).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=k).float()
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
    c, _ = torch.sort(c)
    codes = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
    return codes.view(w.shape), c


def _dense_to_codebook(m: nn.Module, cfg: KMeans) -> nn.Module:
    codes, centroids = kmeans_1d(m.weight, 2**cfg.bits, cfg.init, cfg.iters, cfg.seed)
    if isinstance(m, nn.Conv2d):
        new = CodebookConv2d(
            m.in_channels,
            m.out_channels,
            list(m.kernel_size),
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            m.groups,
            cfg.bits,
            m.bias is not None,
        )
    else:
        new = CodebookLinear(m.in_features, m.out_features, cfg.bits, m.bias is not None)
    new.set_codes(codes, centroids)
    if m.bias is not None:
        new.bias.data.copy_(m.bias.detach())
    return new.to(m.weight.device)


@register_method("quant.kmeans")
class KMeansMethod(Method):
    config_cls = KMeans

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: nn.Module, config: KMeans) -> nn.Module:
        chosen = list(select(model, config, (nn.Conv2d, nn.Linear, SparseConv2d, SparseLinear)))
        if not chosen:
            warnings.warn("quant.kmeans: no Conv2d/Linear layer selected; nothing quantized")
        for name, m, cfg in chosen:
            if hasattr(m, "weight_mask") or hasattr(m, "parametrizations"):
                raise ValueError(
                    f"quant.kmeans: layer {name!r} still has a pending mask; run convert_ on the "
                    "pruning stage first (a recipe does this at the end of every stage)"
                )
            if isinstance(m, (SparseConv2d, SparseLinear)):
                codes, centroids = kmeans_1d(m.value_tensor().detach(), 2**cfg.bits, cfg.init, cfg.iters, cfg.seed)
                m.set_codebook(codes, centroids, cfg.bits)
            else:
                set_module(model, name, _dense_to_codebook(m, cfg))
        return model
