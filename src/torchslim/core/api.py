"""The two verbs every method goes through: ``compress_`` (prepare) and ``convert_``."""
from __future__ import annotations

from typing import Iterable

import torch.nn as nn

from torchslim.core.config import MethodConfig
from torchslim.core.registry import handler_for

_PENDING = "_torchslim_pending"


def compress_(model: nn.Module, config: MethodConfig, data: Iterable | None = None) -> nn.Module:
    """Prepare ``model`` in place for the method ``config`` names (reversible, trainable form).

    Args:
        data: calibration batches ``(inputs, targets)`` for methods that need them
            (e.g. ``quant.qcnn``); ignored by the others.

    Side effects, in order: the handler's ``prepare`` edits the model; the
    config is appended to the model's pending list that :func:`convert_` uses.
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(f"compress_ takes a MethodConfig, got {type(config).__name__}")
    handler = handler_for(config)
    if handler.needs_data:  # the handler raises when its config needs data and none is given
        model = handler.prepare(model, config, data) or model
    else:
        model = handler.prepare(model, config) or model
    model.__dict__.setdefault(_PENDING, []).append(config)
    return model


def convert_(model: nn.Module) -> nn.Module:
    """Make every prepared method permanent, in the order they were prepared."""
    for config in model.__dict__.pop(_PENDING, []):
        model = handler_for(config).convert(model, config) or model
    return model


def pending(model: nn.Module) -> list[str]:
    """Names of methods prepared on ``model`` and not yet converted."""
    return [c.method for c in model.__dict__.get(_PENDING, [])]


def method_callbacks(model: nn.Module) -> list:
    """Training callbacks of every pending method (extra loss terms, after-step actions)."""
    cbs = []
    for config in model.__dict__.get(_PENDING, []):
        cbs.extend(handler_for(config).callbacks(model, config))
    return cbs
