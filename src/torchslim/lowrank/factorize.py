"""Low-rank factorization of conv and linear layers into ordinary smaller layers.

* ``lowrank.svd`` (Denton et al. 2014): ``W (m x n) ~ U_k S_k V_k^T`` ->
  ``Linear(n->k, no bias)`` then ``Linear(k->m)``; 1x1 convs likewise. Parameters
  ``m*n -> k*(m+n)``.
* ``lowrank.tucker`` (Kim et al. 2016, Tucker-2 on the channel modes):
  ``W (N, C, d, d) ~ core (R_out, R_in, d, d) x_0 U_out x_1 U_in`` -> 1x1 conv C->R_in,
  dxd conv R_in->R_out (the original stride/padding/dilation), 1x1 conv R_out->N.
* ``lowrank.cp`` (Lebedev et al. 2015): rank-R CP ``W ~ sum_r a_r o b_r o h_r o w_r`` ->
  1x1 conv C->R, depthwise (d x 1) and (1 x d) convs, 1x1 conv R->N.
* ``lowrank.spatial`` (Jaderberg et al. 2014): ``W[n,c,i,j] ~ sum_k V[k,c,i] H[n,k,j]``
  (an SVD of W reshaped to (C*d, N*d)) -> (d x 1) conv C->K, then (1 x d) conv K->N.

Tucker and CP use TensorLy. The result is a ``nn.Sequential`` of plain layers, so it
fine-tunes, saves (the ``.slim`` spec records every factor's shape) and exports
to ONNX like any model.

Ranks (``selection``): ``fixed`` (an int, or a fraction of the full rank),
``energy`` (``rank.energy_rank`` on each mode's spectrum), ``vbmf``, or ``budget``
(``target_macs`` of the whole model, one level ``t`` bisected across layers). The
budget is allocated by ``allocate``: ``spectrum`` (every layer keeps the same energy
``t``, so ranks follow each layer's singular values) or ``uniform`` (every layer keeps
the fraction ``t`` of its largest useful rank). CP ranks are not bounded by the matrix
ranks: under a budget its largest useful rank is the one whose MACs equal the dense layer's.
A factorized layer is often slower than the dense one at small sizes: with
``prefer="speed"`` prepare times both on the layer's real input (batch 1 and 256)
and keeps the dense layer unless the factorized one is faster at both;
``prefer="size"`` factorizes whenever it reduces MACs. Every decision is logged
on the model and stored in the ``.slim`` header. Convert has nothing left to do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from torchslim.core.config import MethodConfig, check_choice, check_int, check_range
from torchslim.core.inputs import call, shape_of
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.state import slim_state
from torchslim.core.surgery import capture_inputs, example_inputs, set_module
from torchslim.lowrank.rank import energy_rank, vbmf_rank
from torchslim.measure.counts import count_macs
from torchslim.runtime.timing import pick, time_candidates


@dataclass(frozen=True)
class LowRank(MethodConfig):
    """Shared fields of the low-rank methods.

    Attributes:
        selection: ``energy``, ``vbmf``, ``fixed`` or ``budget``.
        energy: fraction of squared singular values kept (selection=energy), in (0, 1].
        rank: selection=fixed: an int rank, or a float in (0, 1] as a fraction of full rank.
        target_macs: selection=budget: the model's MACs after factorization, as a fraction in (0, 1).
        prefer: ``speed`` (keep dense layers that are not measured faster factorized) or ``size``.
        allocate: selection=budget: ``spectrum`` (one energy level) or ``uniform`` (one rank fraction).
        round_to: round every rank up to a multiple of this (capped at full rank); ONNX Runtime's
            blocked convolutions need channel counts that are multiples of 8 (AVX2) or 16 (AVX-512).
    """

    selection: str = "energy"
    energy: float = 0.9
    rank: float | None = None
    target_macs: float | None = None
    prefer: str = "speed"
    allocate: str = "spectrum"
    round_to: int | None = None

    def validate(self) -> None:
        if self.round_to is not None:
            check_int(self, "round_to", 1)
        check_choice(self, "selection", ("energy", "vbmf", "fixed", "budget"))
        check_choice(self, "allocate", ("spectrum", "uniform"))
        check_range(self, "energy", 0.0, 1.0, lo_open=True)
        check_choice(self, "prefer", ("speed", "size"))
        if self.selection == "fixed":
            r = self.rank
            if (
                r is None
                or isinstance(r, bool)
                or not ((isinstance(r, int) and r >= 1) or (isinstance(r, float) and 0 < r <= 1))
            ):
                raise ValueError(
                    f"{type(self).__name__}.rank={r!r}: selection='fixed' needs an integer rank >= 1 "
                    "or a fraction in (0, 1]"
                )
        if self.selection == "budget":
            if self.target_macs is None:
                raise ValueError(f"{type(self).__name__}: selection='budget' needs target_macs in (0, 1)")
            check_range(self, "target_macs", 0.0, 1.0, lo_open=True, hi_open=True)


@dataclass(frozen=True)
class SVD(LowRank):
    """Truncated SVD of Linear layers and 1x1 convs."""


@dataclass(frozen=True)
class Tucker(LowRank):
    """Tucker-2 of k x k convs (k > 1)."""


@dataclass(frozen=True)
class CP(LowRank):
    """CP of k x k convs (k > 1)."""


@dataclass(frozen=True)
class Spatial(LowRank):
    """Spatial separable (d x 1 then 1 x d) factorization of k x k convs (k > 1)."""


@dataclass(frozen=True)
class Auto(LowRank):
    """Per k x k conv the fastest of dense, Tucker-2 and spatial (``forms``) in the whole model.

    Each form's ranks are the ones its own method would choose (same ``selection``, ``energy``,
    ``rank`` or ``target_macs``, computed as if that form replaced every layer). With
    ``prefer="speed"`` each layer is given the candidate (dense or a form) that is faster at every
    batch of ``batches`` (3 interleaved timing rounds, the minimum kept): with ``search="layer"``
    (the default) each candidate timed alone on the layer's real input, with ``search="model"``
    the layers visited largest dense MACs first and each candidate timed as the whole model in
    torchslim's eager runtime with the other layers at their choices so far (what the model runs,
    layouts and fusions included, but one whole-model timing per candidate and layer: resnet18 at
    224 x 224 ran past 10 minutes; opt in for small models). A layer kept dense keeps its MACs, so
    under ``budget`` the model may end above ``target_macs``: every choice, its MACs and its timings
    are logged. With ``prefer="size"`` each layer takes the form with the fewest MACs.

    Attributes:
        forms: the factorizations to choose from, ``tucker`` and / or ``spatial``.
        batches: the batch sizes a chosen form must be faster at.
        search: ``layer`` (each layer timed alone) or ``model`` (the whole model per candidate).
    """

    forms: tuple[str, ...] = ("tucker", "spatial")
    batches: tuple[int, ...] = (1, 256)
    search: str = "layer"

    def __post_init__(self) -> None:
        for name in ("forms", "batches"):  # YAML gives lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.forms, tuple) or not self.forms or not set(self.forms) <= {"tucker", "spatial"}:
            raise ValueError(
                f"Auto.forms={self.forms!r}: give one or both of 'tucker' and 'spatial', "
                "e.g. forms=['tucker', 'spatial']"
            )
        check_choice(self, "search", ("layer", "model"))
        b = self.batches
        if not isinstance(b, tuple) or not b or not all(isinstance(v, int) and 1 <= v <= 4096 for v in b):
            raise ValueError(f"Auto.batches={b!r}: give batch sizes from 1 to 4096, e.g. batches=[1, 256]")


# --- the four factorizations ------------------------------------------------------------


def _w(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().double().cpu()


def _conv(
    cin: int,
    cout: int,
    k: tuple,
    stride: tuple = (1, 1),
    padding: tuple = (0, 0),
    dilation: tuple = (1, 1),
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias)


def _set(m: nn.Module, w: torch.Tensor | np.ndarray, bias: torch.Tensor | None = None) -> nn.Module:
    m.weight.data.copy_(torch.as_tensor(np.asarray(w)).reshape(m.weight.shape).float())
    if bias is not None:
        m.bias.data.copy_(bias.detach())
    return m


class _Factorizer:
    """How one method picks spectra, counts MACs and builds layers."""

    applies: Callable[[nn.Module], bool]

    def spectra(self, layer: nn.Module) -> list[torch.Tensor]: ...
    def vbmf_matrices(self, layer: nn.Module) -> list[torch.Tensor]: ...
    def macs(self, layer: nn.Module, ranks: list[int], hw_in: tuple, hw_out: tuple) -> int: ...
    def build(self, layer: nn.Module, ranks: list[int]) -> nn.Module: ...

    def budget_ranks(self, layer: nn.Module, level: float, allocate: str, hw_in: tuple, hw_out: tuple) -> list[int]:
        """Ranks at budget level ``level`` in [0, 1]: energy ``level`` or the fraction ``level`` of full rank."""
        spectra = self.spectra(layer)
        if allocate == "spectrum":
            return [energy_rank(s, level) for s in spectra]
        return [max(1, math.ceil(level * len(s))) for s in spectra]


def _mode(w: torch.Tensor, mode: int) -> torch.Tensor:
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def _svdvals(m: torch.Tensor) -> torch.Tensor:
    """Singular values of ``m`` in descending order, from the eigenvalues of the smaller Gram
    matrix in float64 (``svdvals`` of a wide conv unfolding is 5-10x slower); float32 out."""
    m = m.double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0).float()


def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``m`` (rows x cols), as eigenvectors of the
    rows x rows Gram matrix ``m m^T``: a full SVD of a conv's unfolding (C x N kh kw) builds a
    N kh kw square factor for nothing (TensorLy's path: 25 s of resnet18's 32)."""
    _, vecs = torch.linalg.eigh(m @ m.T)
    return vecs[:, -r:].flip(1)


def tucker2(w: torch.Tensor, r_out: int, r_in: int, iters: int = 10, tol: float = 1e-4):
    """Tucker-2 of ``w`` (N, C, kh, kw) on its channel modes by HOOI (De Lathauwer et al. 2000):
    ``w ~ core x_0 U_out x_1 U_in`` with orthonormal ``U_out`` (N, r_out), ``U_in`` (C, r_in),
    initialized by HOSVD, then alternating: ``U_out`` = leading left singular vectors of
    ``(w x_1 U_in^T)_(0)``, ``U_in`` likewise, until the core's norm (the fit) gains < ``tol``
    relative. Computed in float64; returns ``(core, U_out, U_in)`` in ``w``'s dtype."""
    x = w.double()
    u_out, u_in = _leading(_mode(x, 0), r_out), _leading(_mode(x, 1), r_in)
    fit = 0.0
    for _ in range(iters):
        u_out = _leading(_mode(torch.einsum("nchw,cr->nrhw", x, u_in), 0), r_out)
        u_in = _leading(_mode(torch.einsum("nchw,nr->rchw", x, u_out), 1), r_in)
        core = torch.einsum("nchw,no,ci->oihw", x, u_out, u_in)
        new = float(core.norm())
        if new - fit <= tol * new:
            break
        fit = new
    return core.to(w.dtype), u_out.to(w.dtype), u_in.to(w.dtype)


def cp_als(w: torch.Tensor, r: int, iters: int = 50, tol: float = 1e-5) -> list[torch.Tensor]:
    """Rank-``r`` CP of ``w`` (N, C, kh, kw) by alternating least squares (Kolda and Bader 2009):
    ``w ~ sum_r a_r o b_r o h_r o v_r``; each factor in turn solves
    ``F = W_(n) (khatri-rao of the others) (hadamard of the others' Gram matrices)^+``.
    Initialized with each mode's leading singular vectors (seeded normal columns beyond the
    mode's size, as TensorLy's ``init="svd"``); stops when the relative error moves < ``tol``.
    Float64 inside; returns ``[a, b, h, v]`` in ``w``'s dtype with the scale in ``a``."""
    x = w.double()
    g = torch.Generator().manual_seed(0)
    factors = []
    for mode in range(4):
        u = _leading(_mode(x, mode), min(r, x.shape[mode]))
        if r > u.shape[1]:
            u = torch.cat([u, torch.randn(x.shape[mode], r - u.shape[1], generator=g, dtype=x.dtype)], 1)
        factors.append(u)
    n, c, kh, kw = x.shape
    norm, err = float(x.norm()), float("inf")

    def solve(mode: int, mttkrp: torch.Tensor) -> None:
        gram = torch.ones(r, r, dtype=x.dtype)
        for i, f in enumerate(factors):
            if i != mode:
                gram = gram * (f.T @ f)
        factors[mode] = mttkrp @ torch.linalg.pinv(gram)

    def khatri_rao(p: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Rows (i, j, k) in the unfolding's order: ``p[i] * q[j] * s[k]``, shape (I J K, r)."""
        return (p[:, None, None] * q[None, :, None] * s[None, None]).reshape(-1, r)

    for _ in range(iters):
        _, b, h, v = factors  # channel modes: the MTTKRP as one GEMM with the Khatri-Rao product
        solve(0, x.reshape(n, -1) @ khatri_rao(b, h, v))
        solve(1, _mode(x, 1) @ khatri_rao(factors[0], h, v))
        a, b = factors[0], factors[1]
        # spatial modes: contract both channel modes once (a (3 x 786k) GEMM is 20x slower)
        t = ((a.T @ x.reshape(n, -1)).reshape(r, c, kh * kw) * b.T[:, :, None]).sum(1).reshape(r, kh, kw)
        solve(2, torch.einsum("rhw,wr->hr", t, v))
        solve(3, torch.einsum("rhw,hr->wr", t, factors[2]))
        new = float((x.reshape(n, -1) - a @ khatri_rao(*factors[1:]).T).norm()) / norm
        if abs(err - new) < tol:
            break
        err = new
    return [f.to(w.dtype) for f in factors]


class _SVDF(_Factorizer):
    @staticmethod
    def applies(m: nn.Module) -> bool:
        return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1)

    def spectra(self, layer):
        return [_svdvals(_w(layer).reshape(layer.weight.shape[0], -1))]

    vbmf_matrices = lambda self, layer: [_w(layer).reshape(layer.weight.shape[0], -1)]  # noqa: E731

    def macs(self, layer, ranks, hw_in, hw_out):
        k = ranks[0]
        rows, cols = layer.weight.shape[0], layer.weight[0].numel()
        pos = hw_out[0] * hw_out[1]
        return pos * k * (rows + cols)

    def build(self, layer, ranks):
        k = ranks[0]
        w = _w(layer).reshape(layer.weight.shape[0], -1)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        a = s[:k].sqrt()[:, None] * vh[:k]  # (k, n)
        b = u[:, :k] * s[:k].sqrt()  # (m, k)
        if isinstance(layer, nn.Linear):
            first = _set(nn.Linear(layer.in_features, k, bias=False), a)
            second = _set(nn.Linear(k, layer.out_features, bias=layer.bias is not None), b, layer.bias)
        else:
            first = _set(_conv(layer.in_channels, k, (1, 1), layer.stride, layer.padding), a)
            second = _set(_conv(k, layer.out_channels, (1, 1), bias=layer.bias is not None), b, layer.bias)
        return nn.Sequential(first, second)


def _spatial_conv(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and max(m.kernel_size) > 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


class _TuckerF(_Factorizer):
    applies = staticmethod(_spatial_conv)

    def spectra(self, layer):
        w = _w(layer)
        return [_svdvals(_mode(w, 0)), _svdvals(_mode(w, 1))]

    def vbmf_matrices(self, layer):
        w = _w(layer)
        return [_mode(w, 0), _mode(w, 1)]

    def macs(self, layer, ranks, hw_in, hw_out):
        r_out, r_in = ranks
        kh, kw = layer.kernel_size
        return (
            hw_in[0] * hw_in[1] * layer.in_channels * r_in
            + hw_out[0] * hw_out[1] * r_in * r_out * kh * kw
            + hw_out[0] * hw_out[1] * r_out * layer.out_channels
        )

    def build(self, layer, ranks):
        r_out, r_in = ranks
        core, u_out, u_in = tucker2(_w(layer), r_out, r_in)
        first = _set(_conv(layer.in_channels, r_in, (1, 1)), u_in.T)
        mid = _set(_conv(r_in, r_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation), core)
        last = _set(_conv(r_out, layer.out_channels, (1, 1), bias=layer.bias is not None), u_out, layer.bias)
        return nn.Sequential(first, mid, last)


class _CPF(_TuckerF):
    """CP rank: the larger of the two Tucker-2 ranks (Lebedev et al. chose ranks by hand).

    Under a budget the rank is ``level``-scaled up to ``R_max``, the rank whose MACs equal
    the dense layer's (with ``spectrum`` the scale is the Tucker energy rank's fraction of
    full rank), since a CP rank may exceed both channel counts.
    """

    def budget_ranks(self, layer, level, allocate, hw_in, hw_out):
        full = max(layer.in_channels, layer.out_channels)
        frac = max(super().budget_ranks(layer, level, allocate, hw_in, hw_out)) / full
        r_max = _dense_macs(layer, hw_out) // max(1, self.macs(layer, [1], hw_in, hw_out))
        return [max(1, math.ceil(frac * r_max))]

    def macs(self, layer, ranks, hw_in, hw_out):
        r = max(ranks)
        kh, kw = layer.kernel_size
        return (
            hw_in[0] * hw_in[1] * layer.in_channels * r
            + hw_out[0] * hw_in[1] * r * kh
            + hw_out[0] * hw_out[1] * r * kw
            + hw_out[0] * hw_out[1] * r * layer.out_channels
        )

    def build(self, layer, ranks):
        r = max(ranks)
        a, b, h, v = cp_als(_w(layer), r)  # (N,R) (C,R) (kh,R) (kw,R)
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        kh, kw = layer.kernel_size
        first = _set(_conv(layer.in_channels, r, (1, 1)), b.T)
        vert = _set(_conv(r, r, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=r), h.T)
        horiz = _set(_conv(r, r, (1, kw), (1, sw), (0, pw), (1, dw), groups=r), v.T)
        last = _set(_conv(r, layer.out_channels, (1, 1), bias=layer.bias is not None), a, layer.bias)
        return nn.Sequential(first, vert, horiz, last)


class _SpatialF(_Factorizer):
    applies = staticmethod(_spatial_conv)

    @staticmethod
    def _matrix(layer):
        w = _w(layer)  # (N, C, kh, kw)
        n, c, kh, kw = w.shape
        return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)  # rows (c, i), cols (n, j)

    def spectra(self, layer):
        return [_svdvals(self._matrix(layer))]

    def vbmf_matrices(self, layer):
        return [self._matrix(layer)]

    def macs(self, layer, ranks, hw_in, hw_out):
        k = ranks[0]
        kh, kw = layer.kernel_size
        return hw_out[0] * hw_in[1] * layer.in_channels * k * kh + hw_out[0] * hw_out[1] * k * layer.out_channels * kw

    def build(self, layer, ranks):
        k = ranks[0]
        n, c, kh, kw = layer.weight.shape
        u, s, vh = torch.linalg.svd(self._matrix(layer), full_matrices=False)
        vert = (u[:, :k] * s[:k].sqrt()).reshape(c, kh, k).permute(2, 0, 1)  # (K, C, kh)
        horiz = (s[:k].sqrt()[:, None] * vh[:k]).reshape(k, n, kw).permute(1, 0, 2)  # (N, K, kw)
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        first = _set(_conv(c, k, (kh, 1), (sh, 1), (ph, 0), (dh, 1)), vert)
        second = _set(_conv(k, n, (1, kw), (1, sw), (0, pw), (1, dw), bias=layer.bias is not None), horiz, layer.bias)
        return nn.Sequential(first, second)


# --- rank selection and the shared prepare ----------------------------------------------


def _ranks(f: _Factorizer, layer: nn.Module, cfg: LowRank) -> list[int]:
    spectra = f.spectra(layer)
    if cfg.selection == "fixed":
        r = cfg.rank
        return [max(1, min(len(s), r if isinstance(r, int) else math.ceil(r * len(s)))) for s in spectra]
    if cfg.selection == "vbmf":
        return [min(len(s), vbmf_rank(mx)) for s, mx in zip(spectra, f.vbmf_matrices(layer))]
    return [energy_rank(s, cfg.energy) for s in spectra]


def _pays(dense: nn.Module, factored: nn.Module, sample: torch.Tensor) -> tuple[bool, dict]:
    """Time dense vs factorized at batch 1 and 256 of the layer's real input."""
    timing = time_candidates({"dense": dense.eval(), "factorized": factored.eval()}, sample)
    return pick(timing, "dense") == "factorized", timing


def _hw(t: torch.Tensor) -> tuple[int, int]:
    return (t.shape[-2], t.shape[-1]) if t.dim() == 4 else (1, 1)


@dataclass
class _Survey:
    """The selected layers of one model pass: each layer's input, output size and dense MACs."""

    layers: list[tuple[str, nn.Module, LowRank]]
    inputs: dict[str, torch.Tensor]
    outs: dict[str, tuple]
    dense_macs: dict[str, int]

    def macs(self, f: _Factorizer, n: str, ranks: list[int]) -> int:
        m = next(m for k, m, _ in self.layers if k == n)
        return f.macs(m, ranks, _hw(self.inputs[n]), self.outs[n])


def _survey(model: nn.Module, config: LowRank, applies: Callable[[nn.Module], bool]) -> _Survey | None:
    layers = [(n, m, c) for n, m, c in select(model, config, (nn.Conv2d, nn.Linear)) if applies(m)]
    if not layers:
        warnings.warn(f"{config.method}: no layer this factorization applies to was selected")
        return None
    inputs = capture_inputs(model, [n for n, _, _ in layers])
    unreached = [n for n, _, _ in layers if n not in inputs]
    if unreached:  # e.g. auxiliary heads that run only in train mode: their input shape is unknown
        warnings.warn(
            f"{config.method}: keeping {unreached} dense: the eval-mode example input does not reach them "
            "(train-only branches such as auxiliary heads), so their input size is unknown"
        )
        layers = [t for t in layers if t[0] in inputs]
        if not layers:
            return None
    outs: dict[str, tuple] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, _n=n: outs.__setitem__(_n, _hw(o)) and None) for n, m, _ in layers
    ]
    with torch.no_grad():
        call(model.eval(), example_inputs(model))
    for h in hooks:
        h.remove()
    return _Survey(layers, inputs, outs, {n: _dense_macs(m, outs[n]) for n, m, _ in layers})


def _plan(model: nn.Module, config: LowRank, f: _Factorizer, sv: _Survey) -> dict[str, list[int]]:
    """Ranks of every layer ``f`` factorizes with fewer MACs (the rank selection, or the budget)."""

    full = {n: [len(s) for s in f.spectra(m)] for n, m, c in sv.layers if c.round_to}  # rounding caps

    def plan(level: float | None) -> dict[str, list[int]]:
        chosen = {}
        for n, m, c in sv.layers:
            hw_in = _hw(sv.inputs[n])
            r = _ranks(f, m, c) if level is None else f.budget_ranks(m, level, config.allocate, hw_in, sv.outs[n])
            if c.round_to:
                r = [min(top, -(-k // c.round_to) * c.round_to) for k, top in zip(r, full[n])]
            if sv.macs(f, n, r) < sv.dense_macs[n]:
                chosen[n] = r
        return chosen

    if config.selection != "budget":
        return plan(None)
    total = count_macs(model, shape_of(example_inputs(model)))
    target = config.target_macs * total

    def macs_of(p: dict) -> int:
        return total - sum(sv.dense_macs[n] - sv.macs(f, n, p[n]) for n in p)

    lo, hi = 0.0, 1.0  # level: low -> few MACs
    for _ in range(30):
        mid = (lo + hi) / 2
        if macs_of(plan(mid)) <= target:
            lo = mid
        else:
            hi = mid
    chosen, upper = plan(lo), plan(hi)
    for n, _, _ in sv.layers:  # layers that jump together at one level: move them one at a time
        trial = {k: v for k, v in chosen.items() if k != n} | ({n: upper[n]} if n in upper else {})
        if macs_of(trial) <= target:
            chosen = trial
    if abs(macs_of(chosen) - target) > 0.05 * target:
        warnings.warn(
            f"{config.method}: the budget {config.target_macs:.0%} cannot be met within 5 % by "
            f"factorizing the selected layers (closest {macs_of(chosen) / total:.1%})"
        )
    return chosen


def factorize(model: nn.Module, config: LowRank, f: _Factorizer) -> nn.Module:
    """Shared prepare of the low-rank methods (see the module docstring)."""
    sv = _survey(model, config, f.applies)
    if sv is None:
        return model
    chosen = _plan(model, config, f, sv)
    log = slim_state(model).log
    for n, m, c in sv.layers:
        entry = {"method": config.method, "layer": n, "decision": "dense", "ranks": chosen.get(n)}
        if n in chosen:
            factored = f.build(m, chosen[n]).to(m.weight.device)
            entry["macs"] = [sv.dense_macs[n], sv.macs(f, n, chosen[n])]
            if c.prefer == "speed":
                pays, entry["timing_ms"] = _pays(m, factored, sv.inputs[n])
            else:
                pays = True
            if pays:
                set_module(model, n, factored)
                entry["decision"] = "factorized"
            else:
                entry["reason"] = "the factorized layer was not measured faster"
        else:
            entry["reason"] = "factorized MACs would not be lower"
        log.append(entry)
    _warn_if_none(config, log[-len(sv.layers) :])
    return model


def _warn_if_none(config: LowRank, entries: list[dict]) -> None:
    """A factorization that kept every selected layer dense says so, with the reasons."""
    if entries and all(e["decision"] == "dense" for e in entries):
        reasons = sorted({e.get("reason", "the dense layer was measured fastest") for e in entries})
        warnings.warn(
            f"{config.method}: no layer was factorized; all {len(entries)} selected layers stay dense "
            f"({'; '.join(reasons)}): the model is unchanged"
        )


def factorize_auto(model: nn.Module, config: Auto) -> nn.Module:
    """Prepare of ``lowrank.auto``: each form's ranks as its own method would choose them (same
    selection / budget), then per layer the fastest of dense and those forms in the whole model
    (see :class:`Auto`)."""
    forms = {name: FORMS[name] for name in config.forms}
    sv = _survey(model, config, _spatial_conv)
    if sv is None:
        return model
    plans = {name: _plan(model, config, f, sv) for name, f in forms.items()}
    # per layer, the MACs of each form that has fewer than dense (its plan holds the layer)
    macs = {n: {k: sv.macs(forms[k], n, plans[k][n]) for k in forms if n in plans[k]} for n, _, _ in sv.layers}

    def build(n: str, m: nn.Module, form: str) -> nn.Module:
        return forms[form].build(m, plans[form][n]).to(m.weight.device)

    timings: dict[str, dict] = {}
    if config.prefer == "size":  # the form with the fewest MACs (Tucker-2 first on a tie); only it is built
        choice = {n: min(macs[n], key=macs[n].get, default="dense") for n, _, _ in sv.layers}
        built = {n: {choice[n]: build(n, m, choice[n])} if macs[n] else {} for n, m, _ in sv.layers}
    else:  # every candidate is timed, so every one is built
        built = {n: {k: build(n, m, k) for k in macs[n]} for n, m, _ in sv.layers}
        fastest = _fastest_in_model if config.search == "model" else _fastest_per_layer
        choice, timings = fastest(model, sv, built, config.batches)
    log = slim_state(model).log
    for n, _, _ in sv.layers:
        form = choice[n]
        entry = {"method": config.method, "layer": n, "decision": form, "ranks": {k: plans[k].get(n) for k in forms}}
        entry["macs"] = {"dense": sv.dense_macs[n]} | macs[n]
        if n in timings:
            entry["timing_ms"] = timings[n]
        if not macs[n]:
            entry["reason"] = "factorized MACs would not be lower"
        if form != "dense":
            set_module(model, n, built[n][form])
        log.append(entry)
    _warn_if_none(config, log[-len(sv.layers) :])
    return model


def _fastest_per_layer(
    model: nn.Module, sv: _Survey, built: dict[str, dict[str, nn.Module]], batches: tuple[int, ...]
) -> tuple[dict, dict]:
    """Each layer's candidates (dense and its factorized forms) timed alone on the layer's real input
    (one eval forward captures it); :func:`pick` keeps a form only if it is faster at every batch."""
    seen = capture_inputs(model, [n for n, _, _ in sv.layers if built[n]])
    choice, timings = {n: "dense" for n, _, _ in sv.layers}, {}
    for n, m, _ in sv.layers:
        if built[n]:
            runners = {"dense": m.eval(), **{k: v.eval() for k, v in built[n].items()}}
            timings[n] = time_candidates(runners, seen[n], batches, rounds=3)
            choice[n] = pick(timings[n], "dense")
    return choice, timings


def _fastest_in_model(
    model: nn.Module, sv: _Survey, built: dict[str, dict[str, nn.Module]], batches: tuple[int, ...]
) -> tuple[dict, dict]:
    """Coordinate descent over the layers, largest dense MACs first: each layer's candidates
    (dense and its factorized forms) timed as the whole model in the eager engine, the other layers
    at their choices so far; :func:`pick` keeps a form only if it is faster at every batch."""
    from torchslim.engines import build
    from torchslim.runtime.pool import with_modules

    example = example_inputs(model)
    shape = tuple(shape_of(example))
    current = {id(m): m for _, m, _ in sv.layers}  # dense module -> the module in its place now
    choice, timings = {n: "dense" for n, _, _ in sv.layers}, {}
    for n, m, _ in sorted(sv.layers, key=lambda t: -sv.dense_macs[t[0]]):
        if not built[n]:
            continue
        runners = {}
        for name, layer in {"dense": m, **built[n]}.items():
            places = {**current, id(m): layer}
            variant = with_modules(model, lambda mod, p=places: p.get(id(mod)) if p.get(id(mod)) is not mod else None)
            engine = build("eager", variant.eval(), shape)
            runners[name] = lambda x, e=engine: call(e, x)
        timings[n] = time_candidates(runners, example, batches, rounds=3)
        choice[n] = pick(timings[n], "dense")
        current[id(m)] = m if choice[n] == "dense" else built[n][choice[n]]
    return choice, timings


def _dense_macs(m: nn.Module, hw_out: tuple) -> int:
    rows, cols = m.weight.shape[0], m.weight[0].numel()
    return hw_out[0] * hw_out[1] * rows * cols


class _LowRankMethod(Method):
    """Shared handler: ``factorizer`` decomposes one layer; prepare is :func:`factorize`."""

    factorizer: _Factorizer

    @classmethod
    def factorize(cls, model: nn.Module, config: LowRank) -> nn.Module:
        return factorize(model, config, cls.factorizer)

    @classmethod
    def prepare(cls, model: nn.Module, config: LowRank) -> nn.Module:
        was = model.training
        model = cls.factorize(model, config)
        model.train(was)
        return model


@register_method("lowrank.svd")
class SVDMethod(_LowRankMethod):
    config_cls, factorizer = SVD, _SVDF()


@register_method("lowrank.tucker")
class TuckerMethod(_LowRankMethod):
    config_cls, factorizer = Tucker, _TuckerF()


@register_method("lowrank.cp")
class CPMethod(_LowRankMethod):
    config_cls, factorizer = CP, _CPF()


@register_method("lowrank.spatial")
class SpatialMethod(_LowRankMethod):
    config_cls, factorizer = Spatial, _SpatialF()


FORMS: dict[str, _Factorizer] = {"tucker": TuckerMethod.factorizer, "spatial": SpatialMethod.factorizer}


@register_method("lowrank.auto")
class AutoMethod(_LowRankMethod):
    config_cls = Auto

    @classmethod
    def factorize(cls, model: nn.Module, config: Auto) -> nn.Module:
        return factorize_auto(model, config)
