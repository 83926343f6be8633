"""``quant.pq``: product quantization of conv and linear weights (Gong et al. 2014,
"Compressing Deep Convolutional Networks using Vector Quantization").

Each weight row (a Linear row, or a conv filter flattened to C_in*k*k) is split
into ``m = row_length / sub_dim`` sub-vectors; for each sub-space j, k-means
over the rows' j-th sub-vectors gives ``2**bits`` codewords. Storage:
``rows * m * bits / 8`` bytes of indices plus ``4 * m * 2**bits * sub_dim``
bytes of codebooks. Prepare replaces layers by trainable ``Product*`` layers
(codeword gradient = sum of its sub-vectors' gradients); convert picks, for
Linear layers, the lookup-table or the expanded-dense kernel by measurement.

Pitfall: a layer with fewer rows than ``2**bits`` gains nothing (every row gets
its own codeword) and codebooks can outweigh the weights; such layers, and
rows not divisible by ``sub_dim``, are skipped with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim.core.config import MethodConfig, check_choice, check_int
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import capture_inputs, set_module
from torchslim.runtime.product import PQ_KERNELS, ProductConv2d, ProductLinear, choose_pq_kernel

PQ_CHOICES = ("auto", "measure") + PQ_KERNELS  # auto: a rule; measure: timed on this machine


@dataclass(frozen=True)
class PQ(MethodConfig):
    """Product quantization.

    Attributes:
        sub_dim: sub-vector length d (row length must be a multiple).
        bits: index width per sub-vector, 1..8 (2**bits codewords per sub-space).
        iters: k-means iterations per sub-space.
        seed: k-means++ seeding.
        kernel: ``auto`` (the dense weight, a rule: the same file bytes on every run), ``measure``
            (time the lookup table against the dense weight for Linear layers on this machine and
            keep the faster), ``dense`` or ``lut``.
    """

    sub_dim: int = 4
    bits: int = 4
    iters: int = 25
    seed: int = 0
    kernel: str = "auto"

    def validate(self) -> None:
        check_int(self, "bits", 1, 8)
        check_int(self, "sub_dim", 1)
        check_int(self, "iters", 1)
        check_choice(self, "kernel", PQ_CHOICES)


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding in every sub-space at once: x (m, rows, d) -> (m, k, d).
    Each next codeword is a row drawn with probability proportional to its squared
    distance to the nearest codeword so far (Arthur & Vassilvitskii 2007)."""
    m, rows, d = x.shape
    first = torch.randint(0, rows, (m,), generator=g)
    c = [x[torch.arange(m), first]]  # (m, d)
    dist = (x - c[0][:, None]).pow(2).sum(-1)  # (m, rows)
    for _ in range(1, k):
        p = dist + 1e-12
        nxt = torch.multinomial(p / p.sum(1, keepdim=True), 1, generator=g).squeeze(1)
        c.append(x[torch.arange(m), nxt])
        dist = torch.minimum(dist, (x - c[-1][:, None]).pow(2).sum(-1))
    return torch.stack(c, 1).clone()


def pq_kmeans(
    w2d: torch.Tensor, sub_dim: int, k: int, iters: int = 25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means in every sub-space at once. ``w2d (rows, m*d)`` -> codes (rows, m), codebooks (m, k, d)."""
    rows, cols = w2d.shape
    m = cols // sub_dim
    x = w2d.detach().float().cpu().reshape(rows, m, sub_dim).transpose(0, 1).contiguous()  # (m, rows, d)
    c = _kmeans_pp(x, k, torch.Generator().manual_seed(seed))  # (m, k, d)
    flat_off = (torch.arange(m) * k)[:, None]
    codes = None
    for _ in range(iters):
        new = torch.cdist(x, c).argmin(2)  # (m, rows)
        if codes is not None and torch.equal(new, codes):
            break
        codes = new
        idx = (codes + flat_off).flatten()
        sums = torch.zeros(m * k, sub_dim).index_add_(0, idx, x.reshape(-1, sub_dim))
        counts = torch.bincount(idx, minlength=m * k).float()[:, None]
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c.reshape(-1, sub_dim)).view(m, k, sub_dim)
    codes = torch.cdist(x, c).argmin(2)
    return codes.t().contiguous(), c


def _to_product(m: nn.Module, cfg: PQ) -> nn.Module:
    w2d = m.weight.detach().reshape(m.weight.shape[0], -1)
    codes, books = pq_kmeans(w2d, cfg.sub_dim, 2**cfg.bits, cfg.iters, cfg.seed)
    if isinstance(m, nn.Conv2d):
        new = ProductConv2d(
            m.in_channels,
            m.out_channels,
            list(m.kernel_size),
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            m.groups,
            cfg.sub_dim,
            cfg.bits,
            m.bias is not None,
        )
    else:
        new = ProductLinear(
            m.in_features,
            m.out_features,
            cfg.sub_dim,
            cfg.bits,
            m.bias is not None,
            kernel=cfg.kernel if cfg.kernel in PQ_KERNELS else "dense",
        )
    new.set_codes(codes, books)
    if m.bias is not None:
        new.bias.data.copy_(m.bias.detach())
    return new.to(m.weight.device)


def pq_layers(
    model: nn.Module, config: MethodConfig, grouped: bool = True
) -> list[tuple[str, nn.Module, MethodConfig]]:
    """Selected conv/linear layers that product quantization can compress; the others are skipped
    with one warning naming each and its reason (``grouped=False``: grouped convs too)."""
    out, skipped = [], []
    for name, m, cfg in select(model, config, (nn.Conv2d, nn.Linear)):
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if not grouped and getattr(m, "groups", 1) != 1:
            skipped.append(f"{name!r} (grouped conv)")
        elif cols % cfg.sub_dim or rows <= 2**cfg.bits:
            skipped.append(f"{name!r} (rows={rows}, row length={cols})")
        else:
            out.append((name, m, cfg))
    if skipped:
        warnings.warn(
            f"{config.method}: skipping {', '.join(skipped)}: a layer needs its row length divisible by "
            f"sub_dim and more than 2**bits rows" + ("" if grouped else ", and groups=1")
        )
    return out


def choose_kernels(model: nn.Module, config: MethodConfig) -> None:
    """``kernel="auto"``: every ProductLinear runs its dense weight, recorded as a rule (the table
    kernel's gain depends on the machine and batch, so it is chosen only by measurement);
    ``kernel="measure"``: time the table against the dense weight per layer and keep the faster."""
    names = [n for n, m in model.named_modules() if isinstance(m, ProductLinear)]
    if config.kernel == "auto":
        for n in names:
            m = model.get_submodule(n)
            m.kernel, m.lut_batch, m.timing = "dense", None, {"rule": "dense unless measured (kernel='measure')"}
    if config.kernel != "measure" or not names:
        return
    inputs = capture_inputs(model, names)
    mods = dict(model.named_modules())
    for n in names:
        choose_pq_kernel(mods[n], inputs[n])


@register_method("quant.pq")
class PQMethod(Method):
    config_cls = PQ

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: nn.Module, config: PQ) -> nn.Module:
        for name, m, cfg in pq_layers(model, config):
            set_module(model, name, _to_product(m, cfg))
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: PQ) -> nn.Module:
        choose_kernels(model, config)
        return model
