"""Independent plain-torch references of what each method's prepare computes (the method's maths,
not its code), used by the contract suite's ``prepare_reference`` hooks."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.select import select


def masked_reference(original: nn.Module, config) -> nn.Module:
    """Magnitude pruning: in each selected layer the ``round(s * n)`` smallest |w| become 0."""
    ref = copy.deepcopy(original)
    for _, m, cfg in select(ref, config, (nn.Conv2d, nn.Linear)):
        w = m.weight.data
        k = int(round(cfg.sparsity * w.numel()))
        if k:
            threshold = w.abs().flatten().sort().values[k - 1]
            w[w.abs() <= threshold] = 0.0
    return ref


def _block_means(x: torch.Tensor, s: int) -> torch.Tensor:
    """Means of ``s x s`` blocks, a partial block at the edge averaging what it covers (NaN padding)."""
    b, c, h, w = x.shape
    hp, wp = -(-h // s) * s, -(-w // s) * s
    padded = torch.full((b, c, hp, wp), float("nan"), dtype=x.dtype)
    padded[:, :, :h, :w] = x
    return padded.view(b, c, hp // s, s, wp // s, s).nanmean((3, 5))


class _FakeBinary(nn.Module):
    """``y = (q_a(x - t) * q_w(W)) [* alpha_o] [* K] + b`` from the paper's formulas; with a Bi-Real
    shortcut ``BN(y) + P(x)``, ``P`` the block means and ``out / in`` channel copies."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        t = m.threshold
        y = self._binary(x if t is None else x - t.view((1, -1) + (1,) * (x.dim() - 2)))
        if m.bn is None:
            return y
        s = x if m.stride == (1, 1) else _block_means(x, m.stride[0])
        return m.bn(y) + torch.cat([s] * (m.out_channels // m.in_channels), 1)

    def _binary(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layer
        w = m.weight
        q_in, q_w = m.input_q, m.weight_q
        if q_w.precision == 1:
            wq = torch.where(w < 0, -1.0, 1.0)
        else:  # DoReFa: 2 round(t (2^k-1)) / (2^k-1) - 1
            levels = 2**q_w.precision - 1
            t = torch.tanh(w)
            t = t / (2 * t.abs().max()) + 0.5
            wq = 2 * torch.round(t * levels) / levels - 1
        if q_in is None:
            xq = x
        elif q_in.precision == 1:
            xq = torch.where(x < 0, -1.0, 1.0)
        else:
            levels = 2**q_in.precision - 1
            xq = torch.round(x.clamp(0, 1) * levels) / levels
        conv = isinstance(m, nn.Conv2d)
        y = F.conv2d(xq, wq, None, m.stride, m.padding, m.dilation, m.groups) if conv else F.linear(xq, wq)
        shape = (1, -1, 1, 1) if conv else (1, -1)
        if m.gamma is not None:
            y = y * m.gamma.view(shape)
        elif m.weight_scale:
            y = y * w.abs().flatten(1).mean(1).view(shape)
        if m.input_scale:
            if conv:
                kh, kw = m.kernel_size
                y = y * F.avg_pool2d(
                    F.pad(x.abs().mean(1, keepdim=True), (m.padding[1],) * 2 + (m.padding[0],) * 2), (kh, kw), m.stride
                )
            else:
                y = y * x.abs().mean(1, keepdim=True)
        return y if m.bias is None else y + m.bias.view(shape)


def binary_reference(original: nn.Module, prepared: nn.Module) -> nn.Module:
    """Every fake-binary training layer recomputed from the formulas; the rest of the prepared
    model (including the ReLUs prepare removed) is kept, so this checks the layers' arithmetic."""
    from torchslim.binary import BinaryConv2d, BinaryLinear

    ref = copy.deepcopy(prepared)
    for name, m in list(ref.named_modules()):
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            parent, _, leaf = name.rpartition(".")
            setattr(ref.get_submodule(parent) if parent else ref, leaf, _FakeBinary(m))
    return ref


def _dense_equivalent(chain: nn.Sequential, like: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The dense weight and bias a linear chain of convs (or linears) computes, found by probing
    a stride-1, unpadded copy with every basis input of one receptive field."""
    chain = copy.deepcopy(chain).double()
    bias = chain[-1].bias.detach().clone() if chain[-1].bias is not None else None
    if bias is not None:
        chain[-1].bias.data.zero_()
    if isinstance(like, nn.Linear):
        return chain(torch.eye(like.in_features, dtype=torch.float64)).t(), bias
    for c in chain:
        c.stride, c.padding = (1, 1), (0, 0)
    (kh, kw), (dh, dw) = like.kernel_size, like.dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    basis = torch.eye(like.in_channels * eh * ew, dtype=torch.float64).view(-1, like.in_channels, eh, ew)
    out = chain(basis).view(like.in_channels, eh, ew, like.out_channels)  # (C, eh, ew, N)
    return out[:, ::dh, ::dw].permute(3, 0, 1, 2).contiguous(), bias


def lowrank_reference(original: nn.Module, prepared: nn.Module, bound: str) -> nn.Module:
    """The original model with each factorized layer's weight replaced by the dense weight its
    factor chain equals, keeping the original bias (checks stride, padding, dilation and the bias
    the chain must carry). ``bound`` asserts the weight
    error the decomposition's maths allows:

    * ``eckart_young`` (SVD, spatial): ``||W - W_r||_F^2 = sum of the discarded sigma_i^2`` of the
      matrix the method decomposes (rank r = the chain's inner width);
    * ``hosvd`` (Tucker-2 by HOOI from an SVD start): at most the truncated HOSVD's error,
      ``sum over modes of the discarded sigma_i^2``;
    * ``ls`` (CP by ALS): below ``||W||`` (the zero tensor's error);
    * ``by_chain`` (a model mixing forms): ``hosvd`` for 3-layer chains, ``eckart_young`` for 2-layer ones.
    """
    ref = copy.deepcopy(original)
    mods = dict(prepared.named_modules())
    checked = 0
    for name, layer in list(ref.named_modules()):
        chain = mods.get(name)
        if not isinstance(chain, nn.Sequential) or isinstance(layer, nn.Sequential):
            continue
        w_eq = _dense_equivalent(chain, layer)[0].detach()
        w = layer.weight.detach().double()
        err2 = float((w - w_eq.view_as(w)).pow(2).sum())
        r = chain[0].out_features if isinstance(chain[0], nn.Linear) else chain[0].out_channels
        kind = {2: "eckart_young", 3: "hosvd"}[len(chain)] if bound == "by_chain" else bound
        if kind == "eckart_young":
            mat = (
                w.reshape(w.shape[0], -1)
                if len(chain) == 2 and (isinstance(layer, nn.Linear) or chain[0].kernel_size == (1, 1))
                else w.permute(1, 2, 0, 3).reshape(w.shape[1] * w.shape[2], -1)
            )
            s = torch.linalg.svdvals(mat)
            assert math.isclose(err2, float(s[r:].pow(2).sum()), rel_tol=1e-6, abs_tol=1e-9), name
        elif kind == "hosvd":
            r_out = chain[-1].in_channels
            s0 = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
            s1 = torch.linalg.svdvals(w.movedim(1, 0).reshape(w.shape[1], -1))
            assert err2 <= float(s0[r_out:].pow(2).sum() + s1[r:].pow(2).sum()) * (1 + 1e-6), name
        else:
            assert err2 < float(w.pow(2).sum()), name
        layer.weight.data.copy_(w_eq.view_as(w).float())  # the original bias stays: the chain must carry it
        checked += 1
    assert checked, "no layer was factorized: the contract config must factorize something"
    return ref


def channel_mask_reference(prepared: nn.Module, converted: nn.Module) -> nn.Module:
    """Physically removed channels == masked channels: the prepared model with the BatchNorm
    outputs of every removed channel forced to 0 (gamma = beta = 0). Removed channels are found
    by their running means (distinct after calibration), which the removal must carry unchanged."""
    ref = copy.deepcopy(prepared)
    after = dict(converted.named_modules())
    removed_any = False
    for name, bn in ref.named_modules():
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        kept_means = after[name].running_mean
        keep = torch.isin(bn.running_mean, kept_means)
        assert int(keep.sum()) == kept_means.numel(), f"{name}: kept channels changed their statistics"
        bn.weight.data[~keep] = 0.0
        bn.bias.data[~keep] = 0.0
        removed_any |= bool((~keep).any())
    assert removed_any, "nothing was removed: the contract config must remove channels"
    return ref


def uniform_weight_reference(original: nn.Module, config) -> nn.Module:
    """Weight-only uniform quantization from its formula (Jacob et al. 2018; per output channel):
    asymmetric ``s = (max(w, 0) - min(w, 0)) / (2^b - 1)``, ``z = round(-min / s)``,
    ``w' = (clamp(round(w / s) + z, 0, 2^b - 1) - z) s``; symmetric ``s = max|w| / (2^(b-1) - 1)``,
    ``w' = clamp(round(w / s), -q, q) s``."""
    ref = copy.deepcopy(original)
    for _, m, cfg in select(ref, config, (nn.Conv2d, nn.Linear)):
        w = m.weight.detach().float()
        flat = w.reshape(w.shape[0], -1)
        if cfg.symmetric:
            q = 2 ** (cfg.bits - 1) - 1
            s = (flat.abs().max(1).values / q).clamp(min=1e-12)[:, None]
            flat = torch.clamp(torch.round(flat / s), -q, q) * s
        else:
            q = 2**cfg.bits - 1
            lo, hi = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)
            s = ((hi - lo) / q).clamp(min=1e-12)[:, None]
            z = torch.round(-lo[:, None] / s).clamp(0, q)
            flat = (torch.clamp(torch.round(flat / s) + z, 0, q) - z) * s
        m.weight.data = flat.reshape(w.shape)
    return ref


def kmeans_reference(original: nn.Module, config) -> nn.Module:
    """Weight sharing by plain Lloyd iterations in numpy (Han et al. 2016, linear initialisation):
    centroids evenly spaced over [min w, max w]; assign each weight to its nearest centroid (argmin
    of the distance, lowest index on ties), move each centroid to its cluster's mean (an empty one
    stays), stop when assignments repeat or after ``iters``; every weight becomes its centroid."""
    import numpy as np

    ref = copy.deepcopy(original)
    for _, m, cfg in select(ref, config, (nn.Conv2d, nn.Linear)):
        if cfg.init != "linear":
            raise NotImplementedError("the reference covers linear initialisation")
        x = m.weight.detach().double().flatten().numpy()
        c = np.linspace(x.min(), x.max(), 2**cfg.bits)
        codes = None
        for _ in range(cfg.iters):
            new = np.abs(x[:, None] - c[None, :]).argmin(1)
            if codes is not None and np.array_equal(new, codes):
                break
            codes = new
            for j in range(len(c)):
                if (codes == j).any():
                    c[j] = x[codes == j].mean()
            c = np.sort(c)
        codes = np.abs(x[:, None] - c[None, :]).argmin(1)
        m.weight.data = torch.from_numpy(c[codes]).float().view_as(m.weight)
    return ref


def product_reference(original: nn.Module, prepared: nn.Module) -> nn.Module:
    """Product quantization (Jegou et al. 2011): each weight row's j-th sub-vector of the original
    model replaced by the nearest codeword (squared Euclidean distance) of sub-space j's codebook;
    the codebooks are the prepared layers' (what k-means found), the assignment and the
    reconstruction are recomputed here from the original weights."""
    ref = copy.deepcopy(original)
    done = dict(prepared.named_modules())
    for name, m in ref.named_modules():
        p = done.get(name)
        if p is None or not hasattr(p, "codebooks") or not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        books = p.codebooks.detach()  # (m, k, d)
        nsub, _, d = books.shape
        sub = m.weight.data.reshape(m.weight.shape[0], nsub, d)  # (rows, m, d)
        dist = ((sub[:, :, None, :] - books[None]) ** 2).sum(-1)  # (rows, m, k)
        rec = books[torch.arange(nsub)[None, :], dist.argmin(-1)]  # (rows, m, d)
        m.weight.data.copy_(rec.reshape(m.weight.shape))
    return ref


def filters_chain_reference(original: nn.Module, ratio: float) -> nn.Module | None:
    """Filter pruning (Li et al. 2017) with DepGraph's group L1 importance, for a plain chain of
    Conv2d / Linear layers (every container a Sequential; None for anything else): output channel
    ``j`` of layer ``i`` scores ``|W_i[j]|_1 + |gamma_i[j]| + |W_{i+1}[:, j]|_1`` (the BatchNorm
    after layer ``i``; a flatten maps ``j`` to its block of H*W input columns of the next Linear),
    ``int(C (1 - ratio))`` channels with the highest scores stay and the others become exactly zero
    (weight and bias of the layer and of its BatchNorm). The last layer keeps its outputs."""
    if any(list(m.children()) and not isinstance(m, nn.Sequential) for m in original.modules()):
        return None
    ref = copy.deepcopy(original)
    mods = list(ref.modules())
    layers = [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear))]
    if any(isinstance(m, nn.Conv2d) and m.groups != 1 for m in layers):
        return None
    norms = {a: b for a, b in zip(mods, mods[1:]) if isinstance(b, nn.modules.batchnorm._BatchNorm)}
    for layer, nxt in zip(layers, layers[1:]):
        w = layer.weight.data
        c = w.shape[0]
        score = w.abs().flatten(1).sum(1)
        if layer in norms:
            score = score + norms[layer].weight.data.abs()
        score = score + nxt.weight.data.abs().transpose(0, 1).reshape(c, -1).sum(1)
        drop = score.argsort()[: c - int(c * (1 - ratio))]
        for m in (layer, norms.get(layer)):
            if m is not None:
                m.weight.data[drop] = 0.0
                if m.bias is not None:
                    m.bias.data[drop] = 0.0
    return ref


def _fake_quant(t: torch.Tensor, lo: float, hi: float, levels: int) -> torch.Tensor:
    """uint8 fake quant: range ``[min(lo, 0), max(hi, 0)]`` over ``levels`` steps, codes in [0, 255]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return t
    s = (hi - lo) / levels
    z = min(levels, max(0, round(-lo / s)))
    return (torch.clamp(torch.round(t / s) + z, 0, 255) - z) * s


def int8_chain_reference(original: nn.Module, batches: list, levels: int) -> nn.Module | None:
    """Static int8 (Jacob et al. 2018) of a plain chain (every container a Sequential; None
    otherwise): each BatchNorm folded into the layer before it (``W gamma / sqrt(var + eps)``,
    ``(b - mean) gamma / sqrt(var + eps) + beta``); weights per output channel, symmetric 8-bit;
    every layer's input and output fake-quantized to uint8 with a per-tensor range, the min / max
    of that tensor in the folded float model over the calibration ``batches`` (an output after the
    ReLU that follows it, where one does), in ``levels`` steps; a layer's input is quantized only
    where no earlier layer reaches it through ReLU / max-pool / flatten / identity alone (there it
    is the earlier layer's quantized output, a max-pool's raised minimum notwithstanding)."""
    if any(list(m.children()) and not isinstance(m, nn.Sequential) for m in original.modules()):
        return None
    ref = copy.deepcopy(original).eval()
    mods = list(ref.modules())
    layers = [m for m in mods if isinstance(m, (nn.Conv2d, nn.Linear))]
    relu_after = set()
    for parent in [m for m in mods if isinstance(m, nn.Sequential)]:
        kids = list(parent.named_children())
        for name, m in kids:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                prev = kids[[k for k, _ in kids].index(name) - 1][1]
                k = m.weight.detach() / torch.sqrt(m.running_var + m.eps)
                b = prev.bias.detach() if prev.bias is not None else torch.zeros_like(k)
                prev.weight.data = prev.weight.detach() * k.view((-1,) + (1,) * (prev.weight.dim() - 1))
                prev.bias = nn.Parameter((b - m.running_mean) * k + m.bias.detach())
                setattr(parent, name, nn.Identity())
        kids = [m for _, m in parent.named_children()]
        for m, nxt in zip(kids, kids[1:]):
            while isinstance(nxt, nn.Identity) and kids.index(nxt) + 1 < len(kids):
                nxt = kids[kids.index(nxt) + 1]
            if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(nxt, nn.ReLU):
                relu_after.add(m)
    ranges = {m: [float("inf"), float("-inf"), float("inf"), float("-inf")] for m in layers}
    quantize_input, on_grid = set(), False
    for m in [m for m in ref.modules() if not list(m.children())]:  # leaves in execution order
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if not on_grid:
                quantize_input.add(m)
            on_grid = True
        elif not isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity)):
            on_grid = False

    def observe(m, args, y):
        x, y = args[0], (F.relu(y) if m in relu_after else y)
        r = ranges[m]
        r[:] = [
            min(r[0], float(x.min())),
            max(r[1], float(x.max())),
            min(r[2], float(y.min())),
            max(r[3], float(y.max())),
        ]

    handles = [m.register_forward_hook(observe) for m in layers]
    with torch.no_grad():
        for x in batches:
            ref(x)
    for h in handles:
        h.remove()
    for m in layers:
        flat = m.weight.detach().reshape(m.weight.shape[0], -1)
        s = (flat.abs().max(1).values / 127).clamp(min=1e-12)[:, None]
        m.weight.data = (torch.clamp(torch.round(flat / s), -127, 127) * s).reshape(m.weight.shape)
        r = ranges[m]
        if m in quantize_input:
            m.register_forward_pre_hook(lambda m, args, r=r: (_fake_quant(args[0], r[0], r[1], levels),))
        m.register_forward_hook(lambda m, args, y, r=r: _fake_quant(y, r[2], r[3], levels))
    return ref
