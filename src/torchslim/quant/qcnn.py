"""``quant.qcnn``: Quantized CNN (Wu et al. 2016, "Quantized Convolutional Neural Networks
for Mobile Devices").

Product quantization (see ``quant.pq``) whose codebooks and assignments minimise
the error of each layer's *output* on calibration inputs instead of the weight
error, layer by layer in forward order, with error correction: the target is
the float network's output of the layer, the input is what the already
quantized earlier layers produce.

For a layer with calibration inputs ``X (n, m*d)`` (im2col rows for a conv) and
float outputs ``Y (n, rows)`` (bias removed), sub-space j is updated with the
others fixed. With ``E = Y - X W^T`` the current error, ``G_j = X_j^T X_j`` and
``P_j = X_j^T E + G_j W_j^T`` (the target of sub-space j alone, in normal form):

* assignment of row r: ``argmin_c  d_c^T G_j d_c - 2 d_c^T P_j[:, r]``;
* codeword c: ``d_c = (G_j + eps I)^-1 mean_{r: b(r)=c} P_j[:, r]`` (least squares).

Starting point: weight-space PQ (k-means++). Inference uses the PQ layers and
their lookup-table kernel.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core import inputs
from torchslim.core.config import MethodConfig, check_choice, check_int
from torchslim.core.registry import Method, register_method
from torchslim.core.surgery import get_module, set_module
from torchslim.quant.pq import PQ_CHOICES, _to_product, choose_kernels, pq_layers


@dataclass(frozen=True)
class QCNN(MethodConfig):
    """Q-CNN: output-error product quantization with error correction.

    Attributes:
        sub_dim, bits: as in ``quant.pq``.
        iters: alternating passes over the sub-spaces per layer.
        calib_batches: calibration batches taken from the data (training split).
        max_rows: calibration rows per layer (conv positions are subsampled).
        seed, kernel: as in ``quant.pq``.
    """

    sub_dim: int = 4
    bits: int = 4
    iters: int = 4
    calib_batches: int = 4
    max_rows: int = 16384
    seed: int = 0
    kernel: str = "auto"

    def validate(self) -> None:
        for f, lo, hi in (
            ("bits", 1, 8),
            ("sub_dim", 1, 4096),
            ("iters", 1, 100),
            ("calib_batches", 1, 10000),
            ("max_rows", 64, 10**8),
        ):
            check_int(self, f, lo, hi)
        check_choice(self, "kernel", PQ_CHOICES)


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer input as rows of the weight's column space: (n, cols)."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (N, C*k*k, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def _out_rows(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Layer output without bias as (n, rows); a Linear's output may have any number of leading
    dimensions (timm applies Linear layers to (batch, H, W, C) maps)."""
    conv = isinstance(layer, nn.Conv2d)
    if layer.bias is not None:
        y = y - (layer.bias.view(1, -1, 1, 1) if conv else layer.bias)
    if conv:
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


@torch.no_grad()
def _calibration_pairs(
    float_model: nn.Module, quant_model: nn.Module, name: str, batches: list[torch.Tensor], max_rows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(X from the quantized model's input to ``name``, Y from the float model's output of ``name``)."""
    f_layer, q_layer = get_module(float_model, name), get_module(quant_model, name)
    got: dict[str, torch.Tensor] = {}
    h1 = f_layer.register_forward_hook(lambda m, i, o: got.__setitem__("y", o.detach()) and None)
    h2 = q_layer.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0].detach()) and None)
    xs, ys = [], []
    g = torch.Generator().manual_seed(seed)
    try:
        for b in batches:
            inputs.call(float_model, b)
            inputs.call(quant_model, b)
            x, y = _rows(q_layer, got["x"]), _out_rows(f_layer, got["y"])
            keep = max(1, max_rows // len(batches))
            if x.shape[0] > keep:
                idx = torch.randperm(x.shape[0], generator=g)[:keep]
                x, y = x[idx], y[idx]
            xs.append(x)
            ys.append(y)
    finally:
        h1.remove()
        h2.remove()
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def refine(
    codes: torch.Tensor, books: torch.Tensor, x: torch.Tensor, y: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating output-error minimisation; codes (rows, m), books (m, k, d)."""
    rows, m = codes.shape
    _, k, d = books.shape
    codes, books = codes.clone(), books.clone()
    j_idx = torch.arange(m)
    w = books[j_idx.expand(rows, m), codes].reshape(rows, m * d)  # (rows, cols)
    err = y - x @ w.t()  # (n, rows)
    eye = torch.eye(d) * 1e-6
    for _ in range(iters):
        for j in range(m):
            xj = x[:, j * d : (j + 1) * d]  # (n, d)
            wj = w[:, j * d : (j + 1) * d]  # (rows, d)
            g = xj.t() @ xj + eye * (1 + xj.pow(2).mean())
            p = xj.t() @ err + g @ wj.t()  # (d, rows)
            dc = books[j]  # (k, d)
            score = ((dc @ g) * dc).sum(1, keepdim=True) - 2 * dc @ p  # (k, rows)
            b = score.argmin(0)  # (rows,)
            sums = torch.zeros(k, d).index_add_(0, b, p.t())
            counts = torch.bincount(b, minlength=k).float()[:, None]
            solved = torch.linalg.solve(g, (sums / counts.clamp(min=1)).t()).t()  # (k, d)
            books[j] = torch.where(counts > 0, solved, dc)
            codes[:, j] = b
            new_wj = books[j][b]
            err -= xj @ (new_wj - wj).t()
            w[:, j * d : (j + 1) * d] = new_wj
    return codes, books


@register_method("quant.qcnn")
class QCNNMethod(Method):
    config_cls = QCNN
    needs_data = True

    @classmethod
    def prepare(cls, model: nn.Module, config: QCNN, data: Iterable | None = None) -> nn.Module:
        if data is None:
            raise ValueError("quant.qcnn needs calibration data: compress_(model, config, data=loader)")
        batches = []
        for i, batch in enumerate(data):
            if i >= config.calib_batches:
                break
            batches.append(inputs.of_batch(batch))
        device = next(model.parameters()).device
        batches = [inputs.to(b, device) for b in batches]
        was = model.training
        model.eval()
        reference = copy.deepcopy(model)
        # Forward order of the layers, from one pass.
        order: list[str] = []
        chosen = {n: cfg for n, _, cfg in pq_layers(model, config, grouped=False)}
        hooks = [
            get_module(model, n).register_forward_hook(lambda m, i, o, _n=n: order.append(_n) and None) for n in chosen
        ]
        with torch.no_grad():
            inputs.call(model, inputs.first(batches[0]))
        for h in hooks:
            h.remove()
        for name in dict.fromkeys(order):
            cfg = chosen[name]
            layer = get_module(model, name)
            x, y = _calibration_pairs(reference, model, name, batches, cfg.max_rows, cfg.seed)
            packed = _to_product(layer, cfg)  # weight-space PQ start
            codes, books = refine(packed.indices(), packed.codebooks.detach(), x, y, cfg.iters)
            packed.set_codes(codes, books)
            set_module(model, name, packed)
        model.train(was)
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: QCNN) -> nn.Module:
        choose_kernels(model, config)
        return model
