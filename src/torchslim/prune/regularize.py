"""Sparsity regularization as training hooks, then channel removal.

* ``prune.slimming`` (Liu et al. 2017, "Learning Efficient Convolutional Networks
  through Network Slimming"): add ``penalty * sum |gamma|`` over BatchNorm scales
  while training; then remove the ``ratio`` of channels with the smallest
  |gamma| over the whole network (one global threshold).
* ``prune.group_lasso`` (Wen et al. 2016, "Learning Structured Sparsity in Deep
  Neural Networks"): add ``penalty * sum_g sqrt(n_g) * ||W_g||_2`` over the output
  filters g of each selected conv/linear; then remove the ``ratio`` of filters
  with the smallest group norm.

Prepare changes nothing; the penalty comes from ``callbacks`` during the stage's
fine-tuning; convert removes channels physically through ``prune.filters``.
Pitfall: a penalty too large for the learning rate collapses accuracy before
pruning; 1e-5 .. 1e-4 (slimming) is the usual range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim.core.config import MethodConfig, check_range
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.prune.filters import Filters, FiltersMethod, refuse_unreached, trial_prune
from torchslim.train.callbacks import Callback


@dataclass(frozen=True)
class Slimming(MethodConfig):
    """Network slimming. ``layers``/``exclude`` select BatchNorm modules for the penalty.

    Attributes:
        penalty: L1 weight on BN gamma, in [0, 1].
        ratio: fraction of channels removed at convert (global gamma ranking), in [0, 1).
    """

    penalty: float = 1e-4
    ratio: float = 0.5

    def validate(self) -> None:
        check_range(self, "penalty", 0.0, 1.0)
        check_range(self, "ratio", 0.0, 1.0, hi_open=True)

    def removal(self) -> Filters:
        """The channel removal convert applies: the smallest BN gammas over the whole network."""
        return Filters(ratio=self.ratio, criterion="bn_gamma", scope="global")


@dataclass(frozen=True)
class GroupLasso(MethodConfig):
    """Group lasso on output filters. ``layers``/``exclude`` select Conv2d/Linear modules.

    Attributes:
        penalty: weight of the group-lasso term, in [0, 1].
        ratio: fraction of filters removed at convert (smallest L2 norms, global), in [0, 1).
    """

    penalty: float = 1e-4
    ratio: float = 0.5

    def validate(self) -> None:
        check_range(self, "penalty", 0.0, 1.0)
        check_range(self, "ratio", 0.0, 1.0, hi_open=True)

    def removal(self) -> Filters:
        """The channel removal convert applies: the filters with the smallest L2 norms, globally."""
        return Filters(ratio=self.ratio, criterion="l2", scope="global", layers=self.layers, exclude=self.exclude)


class PenaltyCallback(Callback):
    """Adds ``penalty * term(modules)`` to the loss of every batch."""

    def __init__(self, modules: list[nn.Module], penalty: float, term) -> None:
        self.modules, self.penalty, self.term = modules, penalty, term

    def loss_term(self, model, inputs, outputs, targets):
        if not self.penalty or not self.modules:
            return None
        return self.penalty * sum(self.term(m) for m in self.modules)


def bn_l1(m: nn.Module) -> torch.Tensor:
    """sum_j |gamma_j|."""
    return m.weight.abs().sum()


def filter_group_lasso(m: nn.Module) -> torch.Tensor:
    """sum_g sqrt(n_g) ||W_g||_2 over output filters g (n_g = entries per filter)."""
    w = m.weight.flatten(1)
    return w.norm(dim=1).sum() * w.shape[1] ** 0.5


def _check_removable(model: nn.Module, config: Slimming | GroupLasso) -> None:
    """At prepare, refuse what convert's channel removal could not do (train-only branches,
    channels the dependency graph does not follow), before any training is spent."""
    refuse_unreached(model, config.method)
    trial_prune(model, config.removal(), config.ratio)


def _remove(model: nn.Module, config: Slimming | GroupLasso) -> nn.Module:
    filters = config.removal()
    FiltersMethod.prepare(model, filters)
    return FiltersMethod.convert(model, filters)


@register_method("prune.slimming")
class SlimmingMethod(Method):
    config_cls = Slimming

    @classmethod
    def prepare(cls, model: nn.Module, config: Slimming) -> nn.Module:
        if not list(select(model, config, (nn.BatchNorm2d,))):
            raise ValueError(
                "prune.slimming needs BatchNorm2d layers (it penalizes their gamma); the model has "
                "none selected. Use prune.group_lasso or prune.filters instead"
            )
        _check_removable(model, config)
        return model

    @classmethod
    def callbacks(cls, model: nn.Module, config: Slimming) -> list[Callback]:
        mods = [m for _, m, _ in select(model, config, (nn.BatchNorm2d,)) if m.affine]
        return [PenaltyCallback(mods, config.penalty, bn_l1)]

    @classmethod
    def convert(cls, model: nn.Module, config: Slimming) -> nn.Module:
        return _remove(model, config)


@register_method("prune.group_lasso")
class GroupLassoMethod(Method):
    config_cls = GroupLasso

    @classmethod
    def prepare(cls, model: nn.Module, config: GroupLasso) -> nn.Module:
        _check_removable(model, config)
        return model

    @classmethod
    def callbacks(cls, model: nn.Module, config: GroupLasso) -> list[Callback]:
        mods = [m for _, m, _ in select(model, config, (nn.Conv2d, nn.Linear))]
        return [PenaltyCallback(mods, config.penalty, filter_group_lasso)]

    @classmethod
    def convert(cls, model: nn.Module, config: GroupLasso) -> nn.Module:
        return _remove(model, config)
