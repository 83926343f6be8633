"""``prune.variational_dropout``: sparse variational dropout (Molchanov, Ashukha and Vetrov 2017,
"Variational Dropout Sparsifies Deep Neural Networks").

Every weight gets a Gaussian posterior ``w ~ N(theta, sigma^2)``: ``theta`` is the layer's own
weight and ``log sigma^2`` a new parameter (``weight_log_sigma2``, initialised to -10). The dropout
rate of a weight is ``alpha = sigma^2 / theta^2``. Training minimises the variational objective

    loss = task loss + kl_weight * sum_w KL(q(w) || p(w)),
    KL ~= k1 - k1 * sigmoid(k2 + k3 * log alpha) + 0.5 * log(1 + 1 / alpha),
    k1, k2, k3 = 0.63576, 1.87320, 1.48695        (the paper's eq. 14, log-uniform prior)

(``kl_weight`` = 1 / N for N training images gives the ELBO per image), with the local
reparameterisation trick in training mode: a layer computes ``mu = op(x, theta)``, ``var =
op(x^2, sigma^2)`` and returns ``mu + sqrt(var) * eps``, ``eps ~ N(0, 1)`` (op: the conv or matmul).
The KL term drives ``alpha`` of useless weights to infinity; weights with ``log alpha >= threshold``
(3: dropout rate above 95 %) are zero in evaluation mode and are removed at convert, which stores
each layer as the sparse CSR layer of ``prune.magnitude`` (then chain ``quant.kmeans`` and the
Huffman export, as Deep Compression does). ``log alpha`` is clipped to [-10, 10].

Only layers whose ``forward`` is the stock ``nn.Conv2d`` / ``nn.Linear`` one are handled (the
variance is computed with the same op); others are skipped with a warning. Pitfall: the KL weight
is ramped from 0 over ``warmup_steps`` optimizer steps, because the full term at the start prunes
faster than the weights can adapt.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core.config import MethodConfig, check_choice, check_int, check_range
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.prune.magnitude import CHOICES, Magnitude, MagnitudeMethod, apply_masks
from torchslim.train.callbacks import Callback

K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_RANGE = (-10.0, 10.0)
INIT_LOG_SIGMA2 = -10.0
PARAM = "weight_log_sigma2"


@dataclass(frozen=True)
class VariationalDropout(MethodConfig):
    """Sparse variational dropout. ``layers`` / ``exclude`` select Conv2d / Linear modules.

    Attributes:
        threshold: weights with ``log alpha >= threshold`` are pruned, in [0, 10].
        kl_weight: weight of the summed KL term per batch, in [0, 1]; 1 / (training images) is the
            ELBO (1.8e-5 for Fashion-MNIST's 55,000); larger prunes more.
        warmup_steps: optimizer steps over which the KL weight rises linearly from 0.
        kernel: the sparse layer's kernel at convert, as ``Magnitude.kernel``.
    """

    threshold: float = 3.0
    kl_weight: float = 1.8e-5
    warmup_steps: int = 0
    kernel: str = "auto"

    def validate(self) -> None:
        check_range(self, "threshold", 0.0, 10.0)
        check_range(self, "kl_weight", 0.0, 1.0)
        check_int(self, "warmup_steps", 0)
        check_choice(self, "kernel", CHOICES)


def log_alpha(m: nn.Module) -> torch.Tensor:
    """``clip(log sigma^2 - log theta^2, -10, 10)`` per weight."""
    la = getattr(m, PARAM) - torch.log(m.weight * m.weight + 1e-8)
    return la.clamp(*LOG_ALPHA_RANGE)


def kl(m: nn.Module) -> torch.Tensor:
    """Molchanov et al.'s approximation of KL(q || log-uniform prior), summed over the weights."""
    la = log_alpha(m)
    return (K1 - K1 * torch.sigmoid(K2 + K3 * la) + 0.5 * F.softplus(-la)).sum()


def keep_mask(m: nn.Module, threshold: float) -> torch.Tensor:
    """Boolean mask of the weights kept: ``log alpha < threshold``."""
    return log_alpha(m) < threshold


def _op(m: nn.Module, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x, w, b)


class _Hook:
    """Forward hook: the local reparameterisation trick in training, the masked weight in eval."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if m.training:
            var = _op(m, x * x, getattr(m, PARAM).exp(), None)
            return out + torch.sqrt(var + 1e-8) * torch.randn_like(out)
        with torch.no_grad():
            w = m.weight * keep_mask(m, self.threshold)
        return _op(m, x, w, m.bias)


def _stock(m: nn.Module) -> bool:
    return type(m).forward in (nn.Conv2d.forward, nn.Linear.forward) and getattr(m, "padding_mode", "zeros") == "zeros"


def _layers(model: nn.Module, config: VariationalDropout) -> list[tuple[str, nn.Module, VariationalDropout]]:
    out = []
    for name, m, cfg in select(model, config, (nn.Conv2d, nn.Linear)):
        if _stock(m):
            out.append((name, m, cfg))
        else:
            warnings.warn(
                f"{config.method}: {name} ({type(m).__name__}) has its own forward or padding mode; "
                "left dense (the variance is computed with the stock conv / linear op)"
            )
    if not out:
        warnings.warn(f"{config.method}: no Conv2d/Linear layer selected; nothing to prune")
    return out


def _vd_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, PARAM)]


class KLCallback(Callback):
    """Adds ``kl_weight * min(1, step / warmup_steps) * sum KL`` to every batch's loss."""

    def __init__(self, model: nn.Module, config: VariationalDropout) -> None:
        self.config, self.step = config, 0

    def loss_term(self, model, inputs, outputs, targets):
        c = self.config
        ramp = 1.0 if c.warmup_steps == 0 else min(1.0, self.step / c.warmup_steps)
        layers = _vd_layers(model)
        if not c.kl_weight or not ramp or not layers:
            return None
        return c.kl_weight * ramp * sum(kl(m) for _, m in layers)

    def after_step(self, model: nn.Module, step: int) -> None:
        self.step = step + 1

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def pruned_fraction(model: nn.Module, threshold: float = 3.0) -> float:
    """Fraction of weights with ``log alpha >= threshold`` over the prepared layers."""
    layers = _vd_layers(model)
    pruned = sum(int((~keep_mask(m, threshold)).sum()) for _, m in layers)
    return pruned / max(sum(m.weight.numel() for _, m in layers), 1)


@register_method("prune.variational_dropout")
class VariationalDropoutMethod(Method):
    config_cls = VariationalDropout

    @classmethod
    def prepare(cls, model: nn.Module, config: VariationalDropout) -> nn.Module:
        for _, m, cfg in _layers(model, config):
            if hasattr(m, PARAM):
                continue
            m.register_parameter(PARAM, nn.Parameter(torch.full_like(m.weight.detach(), INIT_LOG_SIGMA2)))
            m.register_forward_hook(_Hook(cfg.threshold))
        return model

    @classmethod
    def callbacks(cls, model: nn.Module, config: VariationalDropout) -> list[Callback]:
        return [KLCallback(model, config)]

    @classmethod
    @torch.no_grad()
    def convert(cls, model: nn.Module, config: VariationalDropout) -> nn.Module:
        layers = _vd_layers(model)
        masks = {}
        for name, m in layers:
            masks[name] = keep_mask(m, config.for_layer(name).threshold)
            del m._parameters[PARAM]
            for k, hook in list(m._forward_hooks.items()):
                if isinstance(hook, _Hook):
                    del m._forward_hooks[k]
        if not layers:
            return model
        names = tuple(n for n, _ in layers)
        as_magnitude = [(n, m, None) for n, m in layers]
        apply_masks(as_magnitude, masks)
        return MagnitudeMethod.convert(model, Magnitude(sparsity=0.0, layers=names, kernel=config.kernel))
