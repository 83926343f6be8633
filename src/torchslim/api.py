"""The two verbs every method goes through: ``compress_`` (prepare) and ``convert_``, and
``finetune``. Above ``core``, ``export`` and ``train`` in the import order (tests/test_imports.py):
``compress_`` records the original layer specs that ``save`` needs, ``finetune`` runs ``fit``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.core.config import MethodConfig
from torchslim.core.registry import handler_for
from torchslim.core.state import slim_state
from torchslim.core.surgery import read_from_outside
from torchslim.export.spec import layer_specs
from torchslim.train.loop import fit


def compress_(
    model: nn.Module, config: MethodConfig, data: Iterable | None = None, *, example_inputs: inputs.Inputs | None = None
) -> nn.Module:
    """Prepare ``model`` in place for the method ``config`` names (reversible, trainable form).

    Args:
        data: calibration batches ``(inputs, targets)`` for methods that need them
            (e.g. ``quant.qcnn``); ignored by the others.
        example_inputs: an input batch of the model (any shape; the first sample is kept), or
            a tuple of batches for a model whose ``forward`` takes several inputs.
            Methods that run the model (kernel timing, dependency graphs, MAC budgets) use it,
            and it is remembered for later ``convert_``, reports and hints. Registry models
            know their input shape and need none.

    Side effects, in order: ``example_inputs`` and, for a model outside the registry, the
    specs of its original layers are remembered on ``model.torchslim`` (so that ``save``
    can record what the methods replace); the handler's ``prepare`` edits the model; the
    config is appended to the model's pending list that :func:`convert_` uses.
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(f"compress_ takes a MethodConfig, got {type(config).__name__}")
    state = slim_state(model)
    if example_inputs is not None:
        state.example_inputs = inputs.first(inputs.check(example_inputs))
    if state.arch is None and state.original is None:
        state.original = layer_specs(model)
    handler = handler_for(config)
    _keep_layers_read_outside(model, config)
    if handler.needs_data:  # the handler raises when its config needs data and none is given
        model = handler.prepare(model, config, data) or model
    else:
        model = handler.prepare(model, config) or model
    slim_state(model).pending.append(config)
    _warn_if_not_finite(model, config, data)
    return model


def _keep_layers_read_outside(model: nn.Module, config: MethodConfig) -> None:
    """Find the layers whose weight the model's code reads from outside them (one eval forward);
    ``select`` skips them, and the user is told which, once per ``compress_``."""
    state = slim_state(model)
    try:
        state.read_outside = tuple(read_from_outside(model))
    except Exception:  # noqa: BLE001 - no input known or the model cannot run here: nothing is kept back
        state.read_outside = ()
    if state.read_outside:
        warnings.warn(
            f"{config.method}: the model's own code reads the weights of {list(state.read_outside)} "
            "(e.g. for their device or dtype); keeping those layers as they are"
        )


OVERFLOW_MARGIN = 1e4  # outputs within this factor of the dtype's largest value count as overflowing


def _overflows(t: torch.Tensor) -> bool:
    """NaN / inf, or within ``OVERFLOW_MARGIN`` of the dtype's largest finite value: such outputs turn
    inf under another summation order (another thread count or engine), so finite-by-luck counts too."""
    return not torch.isfinite(t).all() or bool(t.abs().max() > torch.finfo(t.dtype).max / OVERFLOW_MARGIN)


def _warn_if_not_finite(model: nn.Module, config: MethodConfig, data: Iterable | None = None) -> None:
    """Eval-mode forwards of the remembered example input and of the first calibration batch: a
    prepared model whose outputs are NaN / inf (or within ``OVERFLOW_MARGIN`` of overflow) says so
    at once (e.g. BinaryConnect's unscaled +/-1 weights through 100+ layers; Q-CNN on a random-init
    inception_v3 reaches 2.7e38 with 2 threads and inf with 1)."""
    batches = [slim_state(model).example_inputs]
    if data is not None and not isinstance(data, Iterator):  # a one-shot iterator is prepare's alone
        p = next(model.parameters(), None)
        batches.append(next((inputs.to(inputs.of_batch(b), p.device if p is not None else "cpu") for b in data), None))
    was = model.training
    try:
        with torch.no_grad():
            outs = [inputs.call(model.eval(), x) for x in batches if x is not None]
    except Exception:  # noqa: BLE001 - a model that cannot run here fails where it is used, with its own error
        return
    finally:
        model.train(was)
    for out in outs:
        parts = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and _overflows(t) for t in parts):
            warnings.warn(
                f"{config.method}: the prepared model's outputs on example_inputs are not finite (NaN / inf, "
                f"or within {OVERFLOW_MARGIN:g}x of the float range's end); "
                "fine-tuning will not recover from that: exclude layers, use a scaled variant, or check the input"
            )
            return


def convert_(model: nn.Module) -> nn.Module:
    """Make every prepared method permanent, in the order they were prepared."""
    state = slim_state(model)
    todo, state.pending = state.pending, []
    for config in todo:
        model = handler_for(config).convert(model, config) or model
    return model


def pending(model: nn.Module) -> list[str]:
    """Names of methods prepared on ``model`` and not yet converted."""
    return [c.method for c in slim_state(model).pending]


def method_callbacks(model: nn.Module) -> list:
    """Training callbacks of every pending method (extra loss terms, after-step actions)."""
    cbs = []
    for config in slim_state(model).pending:
        cbs.extend(handler_for(config).callbacks(model, config))
    return cbs


def finetune(model: nn.Module, train_loader, cfg, **kwargs):
    """``torchslim.fit`` with the training callbacks of every method prepared on ``model``."""
    cbs = list(kwargs.pop("callbacks", ())) + method_callbacks(model)
    return fit(model, train_loader, cfg, callbacks=cbs, **kwargs)
