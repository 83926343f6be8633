"""``prune.filters``: filter (channel) pruning with physical removal (Li et al. 2017,
"Pruning Filters for Efficient ConvNets"; network slimming's BN-gamma ranking,
Liu et al. 2017).

Each prunable group of coupled channels is scored, and the weakest channels
are removed. Importance of output channel j of conv W (C_out x C_in x k x k):
``||W_j||_1`` (``l1``) or ``||W_j||_2`` (``l2``), averaged over every layer
coupled to that channel; ``bn_gamma`` uses ``|gamma_j|`` of the following BN.

Channel coupling (residual additions tie several convs' outputs together,
concatenation offsets indices, split/shuffle permute them, depthwise convs tie
input to output, a flatten feeds a Linear with C*H*W inputs) is followed with
Torch-Pruning's dependency graph (Fang et al. 2023, DepGraph).

Prepare masks the chosen channels: every layer that *produces* them (conv,
linear and BN, weight and bias) is parametrized with a 0/1 channel mask, so
those channels are exactly zero everywhere and fine-tuning cannot revive
them. Convert removes the masks and deletes the channels physically, giving a
smaller dense model with the same outputs. ``target_macs`` searches the
global ratio that reaches a MACs budget (fraction of the model's MACs).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as P

from torchslim.core import inputs
from torchslim.core.config import MethodConfig, check_choice, check_int, check_range
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.surgery import example_inputs, unreached_layers
from torchslim.measure.counts import count_macs

ROOTS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Filters(MethodConfig):
    """Structured filter pruning.

    Attributes:
        ratio: fraction of each group's channels to remove, in [0, 1).
        criterion: ``l1``, ``l2`` or ``bn_gamma``.
        scope: ``layer`` (every group loses ``ratio``) or ``global`` (one ranking, ``ratio`` overall).
        target_macs: if set, a fraction of the model's MACs in (0, 1) to reach; ``ratio``
            is then searched (global ratio per ``scope``).
        round_to: keep channel counts a multiple of this (e.g. 8 for SIMD); None for any count.
    """

    ratio: float = 0.5
    criterion: str = "l1"
    scope: str = "layer"
    target_macs: float | None = None
    round_to: int | None = None

    def validate(self) -> None:
        check_range(self, "ratio", 0.0, 1.0, hi_open=True)
        check_choice(self, "criterion", ("l1", "l2", "bn_gamma"))
        check_choice(self, "scope", ("layer", "global"))
        if self.target_macs is not None:
            check_range(self, "target_macs", 0.0, 1.0, lo_open=True, hi_open=True)
        if self.round_to is not None:
            check_int(self, "round_to", 1)


class ChannelMask(nn.Module):
    """Parametrization ``w -> w * mask`` along dim 0 (output channels)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.view((-1,) + (1,) * (w.dim() - 1))


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("prune.filters needs torch-pruning: pip install torch-pruning") from e
    return tp


def _units(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, bool, object]]:
    """Parts of ``model`` whose dependency graph Torch-Pruning can build: the whole model
    when possible, otherwise the largest traceable submodules (top-down), each with its
    captured input. Channel shuffle (ShuffleNetV2) defeats the graph, so there only the
    channels inside each branch are pruned; a unit's own output channels are kept.

    Returns ``(module, example input, is_whole_model, dependency graph)`` tuples.
    """
    tp = _tp()
    captured: dict[int, torch.Tensor] = {}

    def grab(mod: nn.Module, args: tuple, output: torch.Tensor) -> None:  # must return None
        if args and isinstance(args[0], torch.Tensor):
            captured.setdefault(id(mod), args[0].detach().clone())

    hooks = [m.register_forward_hook(grab) for m in model.modules() if m is not model]
    was = model.training
    model.eval()
    example = example_inputs(model)
    with torch.no_grad():
        inputs.call(model, example)
    for h in hooks:
        h.remove()
    units: list[tuple[nn.Module, torch.Tensor, bool, object]] = []

    def visit(mod: nn.Module, inp: torch.Tensor) -> None:
        if sum(isinstance(m, ROOTS) for m in mod.modules()) < 2:
            return  # one layer: its output channels are the unit's output, nothing to prune
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dg = tp.DependencyGraph().build_dependency(mod, inp)
            units.append((mod, inp, mod is model, dg))
            return
        except Exception:  # noqa: BLE001 - Torch-Pruning raises many types on ops it cannot map
            pass
        for child in mod.children():
            if id(child) in captured:
                visit(child, captured[id(child)])

    visit(model, example)
    model.train(was)
    if not units or not units[0][2]:
        warnings.warn(
            "prune.filters: the whole model cannot be traced as one graph (e.g. channel shuffle); "
            f"pruning inside {len(units)} traceable submodules, keeping their output channels"
        )
    return units


_CHANNEL_STATS = (nn.LayerNorm, nn.GroupNorm)  # norms whose statistics span the channels


def trial_prune(model: nn.Module, config: Filters, ratio: float) -> None:
    """Prune a copy physically and run it: models whose channels are reshaped in ways the
    dependency graph does not follow (attention heads: qkv -> (3, heads, head_dim)) are refused
    before anything is masked, naming the failure."""
    example = example_inputs(model)
    with torch.no_grad():
        want = _shapes(inputs.call(model, example))
    trial = copy.deepcopy(model)
    try:
        for pruner in _pruners(trial, config, ratio):  # the dependency graph needs autograd: not in no_grad
            with torch.no_grad():
                pruner.step()
        with torch.no_grad():
            got = _shapes(inputs.call(trial, example))
    except Exception as e:  # noqa: BLE001 - any failure of the pruned copy is the reason to refuse
        got = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    if got != want:
        raise ValueError(
            f"{config.method}: the physically pruned model does not run like the original ({got}; "
            f"outputs {want} expected): its channels are reshaped in ways the dependency graph does not "
            "follow (e.g. attention heads); exclude those layers (exclude=[...]) or use prune.magnitude"
        )


def refuse_unreached(model: nn.Module, method: str) -> None:
    """Channel coupling is traced by an eval-mode forward: layers it does not reach (auxiliary heads
    that run only in training) would keep their old input size and crash there, so such models are
    refused, naming the layers."""
    hidden = unreached_layers(model)
    if hidden:
        raise ValueError(
            f"{method}: layers {hidden[:6]}{' ...' if len(hidden) > 6 else ''} are not reached by the eval-mode "
            "example input (e.g. auxiliary heads that run only in training), so their channel coupling cannot be "
            "traced; build the model without them (e.g. torchvision googlenet(aux_logits=False)) or set them to None"
        )


def _out_fn(m: nn.Module):
    tp = _tp()
    return tp.prune_conv_out_channels if isinstance(m, nn.Conv2d) else tp.prune_linear_out_channels


def _is_out_fn(fn) -> bool:
    """True for Torch-Pruning handlers that remove *output* channels (conv, depthwise, linear, BN)."""
    return getattr(fn, "__name__", "") == "prune_out_channels"


def _shapes(out) -> tuple:
    """Shapes of a model's output(s): a tensor, or a tuple / list / dict of them."""
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape),)
    items = out.values() if isinstance(out, dict) else out
    return tuple(s for o in items for s in _shapes(o))


def _frozen_roots(unit: nn.Module, whole: bool, inp: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels must stay.

    For a whole model with one output: the last layer (the classes). For a model with several
    outputs (e.g. logits and an embedding), and for a sub-unit, whose input and output
    channels belong to the untraceable graph around it: every layer whose pruning group
    reaches an input or output, found by pruning one channel of each layer in a copy and
    checking that the copy still takes the same input and gives the same output shapes.
    """
    roots = [m for m in unit.modules() if isinstance(m, ROOTS)]
    with torch.no_grad():
        out_shape = _shapes(inputs.call(unit, inp))
    if whole and len(out_shape) == 1:
        return roots[-1:]
    frozen = []
    for i, m in enumerate(roots):
        trial = copy.deepcopy(unit)
        tm = [x for x in trial.modules() if isinstance(x, ROOTS)][i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial_dg = _tp().DependencyGraph().build_dependency(trial, inp)
            trial_dg.get_pruning_group(tm, _out_fn(tm), [0]).prune()
            with torch.no_grad():
                ok = _shapes(inputs.call(trial, inp)) == out_shape
        except Exception:  # noqa: BLE001 - a shape error means the channel is coupled to the outside
            ok = False
        if not ok:
            frozen.append(m)
    return frozen


def _pruners(model: nn.Module, config: Filters, ratio: float) -> list:
    """One Torch-Pruning MetaPruner per traceable unit of ``model``."""
    tp = _tp()
    selected = list(select(model, config, ROOTS))
    chosen = {id(m) for _, m, _ in selected}
    ratio_dict = {m: cfg.ratio for _, m, cfg in selected if cfg.ratio != config.ratio}
    if config.criterion == "bn_gamma":
        imp = tp.importance.BNScaleImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=1 if config.criterion == "l1" else 2)
    pruners = []
    for unit, inp, whole, _graph in _units(model):
        members = {id(m) for m in unit.modules()}
        ignored = [m for m in unit.modules() if isinstance(m, ROOTS) and id(m) not in chosen]
        ignored += [m for m in _frozen_roots(unit, whole, inp) if all(m is not x for x in ignored)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruners.append(
                tp.pruner.MetaPruner(
                    unit,
                    inp,
                    importance=imp,
                    pruning_ratio=ratio,
                    pruning_ratio_dict={m: r for m, r in ratio_dict.items() if id(m) in members} or None,
                    global_pruning=config.scope == "global",
                    ignored_layers=ignored,
                    round_to=config.round_to,
                )
            )
    return pruners


def _ratio_for_macs(model: nn.Module, config: Filters) -> float:
    """Smallest ratio whose physically pruned copy has <= target_macs of the MACs (bisection)."""
    shape = inputs.shape_of(example_inputs(model))
    base = count_macs(model, shape)
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        for pruner in _pruners(trial, config, mid):
            with torch.no_grad():
                pruner.step()
        if count_macs(trial, shape) <= config.target_macs * base:
            hi = mid
        else:
            lo = mid
    return hi


def _mask_channels(module: nn.Module, idxs: list[int]) -> None:
    """Zero output channels ``idxs`` of a conv/linear/BN through parametrizations (weight and bias)."""
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if p is None:
            continue
        if P.is_parametrized(module, pname):
            getattr(module.parametrizations, pname)[0].mask[idxs] = 0
        else:
            mask = torch.ones(p.shape[0], device=p.device)
            mask[idxs] = 0
            P.register_parametrization(module, pname, ChannelMask(mask))


@register_method("prune.filters")
class FiltersMethod(Method):
    config_cls = Filters

    @classmethod
    def prepare(cls, model: nn.Module, config: Filters) -> nn.Module:
        refuse_unreached(model, config.method)
        was = model.training
        model.eval()
        ratio = _ratio_for_macs(model, config) if config.target_macs is not None else config.ratio
        trial_prune(model, config, ratio)
        groups = []
        for pruner in _pruners(model, config, ratio):
            for group in pruner.step(interactive=True):
                groups.append([(dep.target.module, dep.handler, list(idxs)) for dep, idxs in group])
        norms = sorted({type(m).__name__ for g in groups for m, _, idxs in g if idxs and isinstance(m, _CHANNEL_STATS)})
        if norms:
            warnings.warn(
                f"{config.method}: pruned channels feed {norms} layers, which normalize over channels: the "
                "masked (prepared) model keeps those channels as zeros in the statistics, the converted model "
                "removes them, so the converted model differs from the masked one; fine-tune after convert_"
            )
        with torch.no_grad():
            for group in groups:  # mask after scoring: the pruner must see unmasked weights
                for module, fn, idxs in group:
                    if _is_out_fn(fn) and idxs:
                        _mask_channels(module, idxs)
        if not any(idxs for group in groups for _, fn, idxs in group if _is_out_fn(fn)):
            warnings.warn(
                f"{config.method}: no channel was selected for removal (ratio {ratio:.3g}: every prunable "
                "group too small, frozen, or its importances tied, e.g. untrained BatchNorm scales); "
                "the model is unchanged"
            )
        model.train(was)
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: Filters) -> nn.Module:
        roots = []
        for m in model.modules():
            if P.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], ChannelMask):
                mask = m.parametrizations.weight[0].mask
                if isinstance(m, ROOTS):
                    roots.append((m, (mask == 0).nonzero().flatten().tolist()))
                for pname in ("weight", "bias"):
                    if P.is_parametrized(m, pname):
                        P.remove_parametrizations(m, pname, leave_parametrized=True)
        was = model.training
        model.eval()
        touched: set[int] = set()
        for unit, _, _, dg in _units(model):
            members = {id(m) for m in unit.modules()}
            with torch.no_grad():
                for m, idxs in roots:
                    if not idxs or id(m) in touched or id(m) not in members:
                        continue
                    group = dg.get_pruning_group(m, _out_fn(m), idxs)
                    touched |= {id(dep.target.module) for dep, _ in group if _is_out_fn(dep.handler)}
                    group.prune()
        model.train(was)
        return model
