"""Automatic rank selection: energy retention, VBMF, and a global MACs budget.

* energy: the smallest k with ``sum_{i<k} s_i^2 >= energy * sum_i s_i^2``.
* VBMF: empirical variational Bayesian matrix factorisation (Nakajima et al. 2013),
  the analytic global solution; the rank is the number of singular values above
  ``sqrt(M sigma^2 (1 + tau)(1 + alpha / tau))`` with the noise variance sigma^2
  estimated by minimising the free energy (as Kim et al. 2016 did for Tucker ranks).
* budget: one energy level for all layers, bisected until the model's MACs reach
  the target; each layer's rank then follows its own spectrum.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest rank keeping ``energy`` of the squared singular values ``s`` (descending)."""
    e = s.double().pow(2)
    cum = torch.cumsum(e, 0) / e.sum().clamp(min=1e-30)
    return int(min(len(s), int((cum < energy - 1e-12).sum()) + 1))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def vbmf_rank(y: torch.Tensor) -> int:
    """EVBMF rank of matrix ``y`` (Nakajima et al. 2013, Theorem 2 / Sec. 5)."""
    from scipy.optimize import minimize_scalar

    y = y.detach().double().cpu().numpy()
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    H = L
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    s = np.linalg.svd(y, compute_uv=False)[:H]
    residual = 0.0 if H >= L else float(np.sum(y**2) - np.sum(s**2))
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eH_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (np.sum(s**2) + residual) / (L * M)
    lower = max(s[eH_ub + 1] ** 2 / (M * xubar), np.mean(s[eH_ub + 1 :] ** 2) / M) if eH_ub + 1 < H else upper * 1e-6

    def free_energy(sigma2: float) -> float:
        x = s**2 / (M * sigma2)
        z1, z2 = x[x > xubar], x[x <= xubar]
        t1 = _tau(z1, alpha)
        return float(
            np.sum(z2 - np.log(z2))
            + np.sum(z1 - t1)
            + np.sum(np.log((t1 + 1) / z1))
            + alpha * np.sum(np.log(t1 / alpha + 1))
            + residual / (M * sigma2)
            + (L - H) * np.log(sigma2)
        )

    sigma2 = minimize_scalar(free_energy, bounds=[lower, upper], method="bounded").x
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(max(1, np.sum(s > threshold)))
