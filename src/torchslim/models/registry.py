"""Model registry: ``@register_model``, ``create_model``, ``list_models`` (timm's shape)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from torchslim.core.state import slim_state

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name.

    The factory takes ``num_classes``, ``in_channels``, ``input_size`` and its
    own keyword arguments; all must be JSON-serialisable so that a ``.slim``
    file can rebuild the model from ``(name, kwargs)``.
    """
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Sorted names of registered models."""
    _import_builtin()
    return sorted(_MODELS)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs: Any
) -> nn.Module:
    """Build registered model ``name``.

    Raises:
        ValueError: unknown name, or keyword arguments the model does not take.
    """
    _import_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    fn = _MODELS[name]
    allowed = set(inspect.signature(fn).parameters)
    bad = set(kwargs) - allowed
    if bad:
        raise ValueError(f"model {name!r} takes no argument(s) {sorted(bad)}; it takes {sorted(allowed)}")
    model = fn(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)
    # Recorded so that save() can store the architecture as (name, kwargs).
    slim_state(model).arch = {
        "name": name,
        "kwargs": {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size, **kwargs},
    }
    return model


def _import_builtin() -> None:
    from torchslim.models import lenet, mobilenet, resnet, shufflenet, vgg  # noqa: F401
