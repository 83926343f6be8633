"""``prune.magnitude``: unstructured magnitude pruning (Han et al. 2015, "Learning both
Weights and Connections for Efficient Neural Networks").

Zero every weight with ``|w| < t``. The threshold is either

* ``quality * std(W)`` per layer (Han et al.'s rule; the sparsity follows), or
* the ``sparsity``-quantile of ``|w|`` per layer (``scope="layer"``) or over all
  selected layers together (``scope="global"``).

Prepare uses the ``torch.nn.utils.prune`` layout: the original Parameter is
kept as ``weight_orig`` (same object, so an optimizer keeps working) and a
``weight_mask`` buffer, both in ``state_dict``; ``weight = weight_orig * mask``.
Pruned weights get zero gradient, and an after-step callback re-zeroes them
so momentum or weight decay cannot move them. Schedules (``schedule.py``)
raise the sparsity during fine-tuning. Convert stores each layer as a packed
CSR module (``runtime.sparse``) and keeps the sparse kernel only where it is
measured faster than dense.

Pitfall: the schedule counts optimizer steps of the fine-tuning run; if it
ends before ``n_steps * frequency`` steps, convert applies the final sparsity
anyway (with a warning) and the last increment gets no retraining.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from torchslim.core.config import MethodConfig, check_choice, check_int, check_range
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import capture_inputs, set_module
from torchslim.prune.schedule import SCHEDULES, progress_at
from torchslim.runtime.sparse import KERNELS, SparseConv2d, SparseLinear, choose_kernel, rule_kernel
from torchslim.train.callbacks import Callback

CHOICES = ("auto", "measure") + KERNELS  # auto: a rule; measure: timed on this machine

PRUNABLE = (nn.Conv2d, nn.Linear, SparseConv2d, SparseLinear)


@dataclass(frozen=True)
class Magnitude(MethodConfig):
    """Unstructured magnitude pruning.

    Attributes:
        sparsity: final fraction of zero weights per layer (or overall with scope=global), in [0, 1).
        scope: ``layer`` (each layer reaches ``sparsity``) or ``global`` (one threshold).
        quality: if set, threshold = quality * std(W) per layer and ``sparsity`` is ignored.
        schedule: ``oneshot``, ``steps`` or ``agp``.
        n_steps: pruning events for ``steps`` / ``agp``.
        frequency: optimizer steps between pruning events.
        kernel: ``auto`` (a rule by density and size, :func:`~torchslim.runtime.sparse.rule_kernel`:
            the same file bytes on every run), ``measure`` (time sparse vs dense per layer on this
            machine), ``sparse`` or ``dense``.
    """

    sparsity: float = 0.9
    scope: str = "layer"
    quality: float | None = None
    schedule: str = "oneshot"
    n_steps: int = 10
    frequency: int = 100
    kernel: str = "auto"

    def validate(self) -> None:
        check_range(self, "sparsity", 0.0, 1.0, hi_open=True)
        check_choice(self, "scope", ("layer", "global"))
        check_choice(self, "schedule", SCHEDULES)
        check_choice(self, "kernel", CHOICES)
        if self.quality is not None:
            check_range(self, "quality", 0.0, 10.0, lo_open=True)
            if self.schedule != "oneshot":
                raise ValueError(
                    "Magnitude.quality (threshold = quality * std) works with schedule='oneshot' "
                    "only; use sparsity with steps/agp schedules"
                )
        check_int(self, "n_steps", 1)
        check_int(self, "frequency", 1)


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight_orig if hasattr(m, "weight_orig") else m.weight


def compute_masks(layers: list[tuple[str, nn.Module, Magnitude]], progress: float = 1.0) -> dict[str, torch.Tensor]:
    """Boolean keep-masks for ``(name, module, per-layer config)``.

    ``progress`` in (0, 1] scales every layer's final sparsity (schedules).
    Current masks are respected: a pruned weight has magnitude 0 and stays pruned.
    Layers without a per-layer override share one threshold when scope is global.
    """
    masks: dict[str, torch.Tensor] = {}
    pooled: list[tuple[str, torch.Tensor]] = []
    default = layers[0][2] if layers else None
    for name, m, cfg in layers:
        w = (_weight(m) * getattr(m, "weight_mask", 1)).detach().abs()
        if cfg.quality is not None:
            masks[name] = w >= cfg.quality * _weight(m).detach().std()
        elif cfg.scope == "global" and cfg.sparsity == default.sparsity:
            pooled.append((name, w))
        else:
            masks[name] = _keep_top(w, cfg.sparsity * progress)
    if pooled:
        allw = torch.cat([w.flatten() for _, w in pooled])
        k = int(round(default.sparsity * progress * allw.numel()))
        keep = _keep_top(allw, k / allw.numel()).split([w.numel() for _, w in pooled])
        for (name, w), kp in zip(pooled, keep):
            masks[name] = kp.view_as(w)
    return masks


def _keep_top(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the largest ``(1 - sparsity) * n`` magnitudes (ties broken by position)."""
    n = w.numel()
    k = int(round(sparsity * n))
    keep = torch.ones(n, dtype=torch.bool)
    if k > 0:
        keep[w.flatten().argsort(stable=True)[:k]] = False
    return keep.view_as(w)


def _layers(model: nn.Module, config: Magnitude) -> list[tuple[str, nn.Module, Magnitude]]:
    out = []
    for name, m, cfg in select(model, config, PRUNABLE):
        if isinstance(m, (SparseConv2d, SparseLinear)):  # chaining: prune an already sparse layer further
            m = m.to_float()
            set_module(model, name, m)
        out.append((name, m, cfg))
    if not out:
        warnings.warn(f"{config.method}: no Conv2d/Linear layer selected; nothing to prune")
    return out


def apply_masks(layers: list[tuple[str, nn.Module, Magnitude]], masks: dict[str, torch.Tensor]) -> None:
    """Install or update ``weight_mask`` (and zero the pruned ``weight_orig`` entries)."""
    for name, m, _ in layers:
        mask = masks[name].to(_weight(m).dtype)
        if hasattr(m, "weight_mask"):
            m.weight_mask.copy_(mask)
        else:
            tprune.custom_from_mask(m, "weight", mask)
        with torch.no_grad():
            m.weight_orig.mul_(m.weight_mask)
            # torch's pruning computes ``weight`` once here with autograd; a layer no forward reaches
            # (a train-only auxiliary head) kept that non-leaf tensor, and deepcopy of the model failed
            m.weight = m.weight_orig * m.weight_mask


class MaskCallback(Callback):
    """Keeps pruned weights at zero after each step and follows the sparsity schedule."""

    def __init__(self, model: nn.Module, config: Magnitude) -> None:
        self.config = config
        self.names = [n for n, _, _ in select(model, config, (nn.Conv2d, nn.Linear))]

    def _layers(self, model: nn.Module) -> list:
        mods = dict(model.named_modules())
        return [(n, mods[n], self.config.for_layer(n)) for n in self.names if hasattr(mods[n], "weight_mask")]

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        layers = self._layers(model)
        c = self.config
        progress = progress_at(c.schedule, step, c.n_steps, c.frequency)
        if progress is not None:
            apply_masks(layers, compute_masks(layers, progress))
            return
        for _, m, _ in layers:
            m.weight_orig.mul_(m.weight_mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all conv/linear weights (masked or packed)."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, (SparseConv2d, SparseLinear)):
            zeros += m.rows * m.cols - m.nnz
            total += m.rows * m.cols
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            w = _weight(m) * getattr(m, "weight_mask", 1)  # m.weight is refreshed only on forward
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


@register_method("prune.magnitude")
class MagnitudeMethod(Method):
    config_cls = Magnitude

    @classmethod
    def prepare(cls, model: nn.Module, config: Magnitude) -> nn.Module:
        layers = _layers(model, config)
        if config.schedule == "oneshot":
            apply_masks(layers, compute_masks(layers))
        else:  # start dense, the callback raises sparsity during fine-tuning
            apply_masks(layers, {n: torch.ones_like(_weight(m), dtype=torch.bool) for n, m, _ in layers})
        return model

    @classmethod
    def callbacks(cls, model: nn.Module, config: Magnitude) -> list[Callback]:
        return [MaskCallback(model, config)]

    @classmethod
    @torch.no_grad()
    def convert(cls, model: nn.Module, config: Magnitude) -> nn.Module:
        mods = dict(model.named_modules())
        layers = [
            (n, mods[n], config.for_layer(n))
            for n in MaskCallback(model, config).names
            if hasattr(mods[n], "weight_mask")
        ]
        if config.schedule != "oneshot" and layers:
            zeros = sum(float((1 - m.weight_mask).sum()) for _, m, _ in layers)
            total = sum(m.weight_mask.numel() for _, m, _ in layers)
            want = sum(c.sparsity * m.weight_mask.numel() for _, m, c in layers)
            if zeros < want - 0.001 * total:
                warnings.warn(
                    f"prune.magnitude: the {config.schedule} schedule did not finish during fine-tuning "
                    f"(sparsity {zeros / total:.3f}); applying the final sparsity now"
                )
                apply_masks(layers, compute_masks(layers))
        inputs = capture_inputs(model, [n for n, _, _ in layers]) if config.kernel in ("auto", "measure") else {}
        for name, m, _ in layers:
            tprune.remove(m, "weight")
            sparse_cls = SparseConv2d if isinstance(m, nn.Conv2d) else SparseLinear
            packed = sparse_cls.from_dense(m, config.kernel if config.kernel in KERNELS else "dense")
            if config.kernel == "auto":
                rule_kernel(packed, inputs.get(name))
            elif config.kernel == "measure":
                choose_kernel(packed, inputs[name])
            set_module(model, name, packed.to(m.weight.device))
        return model
