"""Sparsity regularization as training hooks, then channel removal.

* ``prune.slimming`` (Liu et al. 2017, "Learning Efficient Convolutional Networks
  through Network Slimming"): add ``penalty * sum |gamma|`` over BatchNorm scales
  while training; then remove the ``ratio`` of channels with the smallest
  |gamma| over the whole network (one global threshold).
* ``prune.group_lasso`` (Wen et al. 2016, "Learning Structured Sparsity in Deep
  Neural Networks"): add ``penalty * sum_g sqrt(n_g) * ||W_g||_2`` over the output
  filters g of each selected conv/linear; then remove the ``ratio`` of filters
  with the smallest group norm.
* ``prune.depgraph`` (Fang et al. 2023, "DepGraph: Towards Any Structural
  Pruning", Sec. 3.3): sparsity training on the dependency graph's groups, i.e.
  every parameter slice that is removed together with channel k (the producing
  conv/linear's output filter, its BatchNorm scale, the consumers' input slices,
  all convs tied by a residual addition). With ``I_k`` the sum of squares over
  those slices and ``s_k = sqrt(I_k)``, the loss adds
  ``penalty / 2 * sum_k gamma_k * I_k`` with
  ``gamma_k = 2 ** (alpha * (max s - s_k) / (max s - min s))`` (held constant per
  step), so weak groups decay up to ``2 ** alpha`` times faster than strong
  ones; then the groups with the smallest group L2 norms are removed
  (``target_macs`` reaches a MACs budget).

Prepare changes nothing; the penalty comes from ``callbacks`` during the stage's
fine-tuning; convert removes channels physically through ``prune.filters``.
Pitfall: a penalty too large for the learning rate collapses accuracy before
pruning; 1e-5 .. 1e-4 (slimming) is the usual range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from torchslim.core.config import MethodConfig, check_int, check_range
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.prune.filters import Filters, FiltersMethod, _pruners, _tp, refuse_unreached, trial_prune
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


@dataclass(frozen=True)
class DepGraph(MethodConfig):
    """DepGraph sparsity training on coupled channel groups. ``layers``/``exclude`` select the
    Conv2d/Linear layers whose output channels may be removed.

    Attributes:
        penalty: regularization coefficient (the paper's lambda), in [0, 1].
        alpha: exponent range of the per-group weights gamma_k in [1, 2**alpha], in [0, 16].
        ratio: fraction of channels removed at convert (smallest group L2 norms, global), in [0, 1).
        target_macs: if set, the fraction of the model's MACs in (0, 1) that convert reaches
            (``ratio`` is then searched, as in ``prune.filters``).
        round_to: keep channel counts a multiple of this (e.g. 16 for ONNX Runtime); None for any.
    """

    penalty: float = 5e-4
    alpha: float = 4.0
    ratio: float = 0.5
    target_macs: float | None = None
    round_to: int | None = None

    def validate(self) -> None:
        check_range(self, "penalty", 0.0, 1.0)
        check_range(self, "alpha", 0.0, 16.0)
        check_range(self, "ratio", 0.0, 1.0, hi_open=True)
        if self.target_macs is not None:
            check_range(self, "target_macs", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.round_to is not None:
            check_int(self, "round_to", 1)

    def removal(self) -> Filters:
        """The channel removal convert applies: the groups with the smallest L2 norms, globally."""
        return Filters(
            ratio=self.ratio,
            criterion="l2",
            scope="global",
            target_macs=self.target_macs,
            round_to=self.round_to,
            layers=self.layers,
            exclude=self.exclude,
        )


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


Slice = tuple[nn.Parameter, int, torch.Tensor, torch.Tensor]


def group_slices(model: nn.Module, config: DepGraph) -> list[list[Slice]]:
    """The dependency graph's channel groups of ``model`` that ``config``'s removal may prune, each
    as ``(parameter, dim, idxs, root_idxs)`` slices: ``parameter.index_select(dim, idxs)[j]`` belongs
    to group channel ``root_idxs[j]``. Covered: conv/linear output filters and input slices (a flatten
    feeding a Linear maps one channel to H*W inputs), BatchNorm scales; grouped convs' input slices
    are left out (their channel is already covered by the producer's output filter)."""
    tp = _tp()
    out_fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_batchnorm_out_channels)
    in_fns = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    was = model.training
    model.eval()
    groups = []
    for pruner in _pruners(model, config.removal(), config.ratio):
        for group in pruner.DG.get_all_groups(
            ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
        ):
            slices = []
            for i, (dep, idxs) in enumerate(group):
                layer, fn, roots = dep.target.module, dep.handler, group[i].root_idxs
                if getattr(layer, "weight", None) is None or not idxs or any(r is None for r in roots):
                    continue
                if fn in out_fns:
                    dim = 0
                elif fn in in_fns and getattr(layer, "groups", 1) == 1:
                    dim = 1
                else:
                    continue
                slices.append((layer.weight, dim, torch.tensor(list(idxs)), torch.tensor(list(roots))))
            if slices:
                groups.append(slices)
    model.train(was)
    return groups


class DepGraphPenalty(Callback):
    """``penalty / 2 * sum_k gamma_k * I_k`` over every group of :func:`group_slices` (module doc)."""

    def __init__(self, model: nn.Module, config: DepGraph) -> None:
        self.groups, self.penalty, self.alpha = group_slices(model, config), config.penalty, config.alpha

    def loss_term(self, model, inputs, outputs, targets):
        if not self.penalty or not self.groups:
            return None
        total = 0.0
        for slices in self.groups:
            n = 1 + max(int(roots.max()) for *_, roots in slices)
            energy = torch.zeros(n, device=slices[0][0].device)
            for p, dim, idxs, roots in slices:
                w = p.index_select(dim, idxs).transpose(0, dim)
                energy = energy.index_add(0, roots, w.pow(2).reshape(len(idxs), -1).sum(1))
            with torch.no_grad():
                s = energy.sqrt()
                spread = (s.max() - s.min()).clamp_min(1e-12)
                gamma = 2.0 ** (self.alpha * (s.max() - s) / spread)
            total = total + (gamma * energy).sum()
        return 0.5 * self.penalty * total


def _check_removable(model: nn.Module, config: Slimming | GroupLasso | DepGraph) -> None:
    """At prepare, refuse what convert's channel removal could not do (train-only branches,
    channels the dependency graph does not follow), before any training is spent."""
    refuse_unreached(model, config.method)
    trial_prune(model, config.removal(), config.ratio)


def _remove(model: nn.Module, config: Slimming | GroupLasso | DepGraph) -> nn.Module:
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


class _PenaltyThenRemoval(Method):
    """Prepare checks that convert's channel removal can run; convert removes the channels."""

    @classmethod
    def prepare(cls, model: nn.Module, config: GroupLasso | DepGraph) -> nn.Module:
        _check_removable(model, config)
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: GroupLasso | DepGraph) -> nn.Module:
        return _remove(model, config)


@register_method("prune.group_lasso")
class GroupLassoMethod(_PenaltyThenRemoval):
    config_cls = GroupLasso

    @classmethod
    def callbacks(cls, model: nn.Module, config: GroupLasso) -> list[Callback]:
        mods = [m for _, m, _ in select(model, config, (nn.Conv2d, nn.Linear))]
        return [PenaltyCallback(mods, config.penalty, filter_group_lasso)]


@register_method("prune.depgraph")
class DepGraphMethod(_PenaltyThenRemoval):
    config_cls = DepGraph

    @classmethod
    def callbacks(cls, model: nn.Module, config: DepGraph) -> list[Callback]:
        return [DepGraphPenalty(model, config)]
