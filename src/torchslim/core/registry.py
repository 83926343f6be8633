"""Name -> method handler registry: the only dispatch in torchslim.

A compression method is a frozen config dataclass (see ``config.py``) plus a
handler class registered under a dotted name such as ``prune.magnitude``.
YAML recipes and ``MethodConfig.from_dict`` resolve names only through here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch.nn as nn

if TYPE_CHECKING:  # pragma: no cover
    from torchslim.core.config import MethodConfig
    from torchslim.train.callbacks import Callback

_METHODS: dict[str, type[Method]] = {}
_BY_CONFIG: dict[type, type[Method]] = {}


class Method:
    """Handler protocol for one compression method.

    Subclasses set ``name`` and ``config_cls`` and implement:
      * ``prepare(model, config)``: reversible, trainable form (masks, fake
        quant, ...). Called by :func:`torchslim.compress_`.
      * ``convert(model, config)``: permanent form (smaller dense layers or
        packed runtime modules). Called by :func:`torchslim.convert_`.
      * ``callbacks(model, config)``: optional training hooks (extra loss
        term, after-step action) used by ``finetune`` or any training loop.
    """

    name: str = ""
    config_cls: type = object
    needs_data: bool = False  # prepare takes calibration batches: prepare(model, config, data or None)

    @classmethod
    def prepare(cls, model: nn.Module, config: MethodConfig, data=None) -> nn.Module:
        return model

    @classmethod
    def convert(cls, model: nn.Module, config: MethodConfig) -> nn.Module:
        return model

    @classmethod
    def callbacks(cls, model: nn.Module, config: MethodConfig) -> list[Callback]:
        return []


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` handler under ``name``."""

    def deco(handler: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cfg = handler.config_cls
        handler.name = name
        cfg.method = name  # class attribute, not a dataclass field
        _METHODS[name] = handler
        _BY_CONFIG[cfg] = handler
        return handler

    return deco


def list_methods() -> list[str]:
    """Sorted names of all registered methods."""
    _import_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """Handler registered under ``name``; a ValueError lists the known names."""
    _import_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def handler_for(config: MethodConfig) -> type[Method]:
    """Handler that owns this config's class."""
    _import_builtin_methods()
    try:
        return _BY_CONFIG[type(config)]
    except KeyError:
        raise ValueError(
            f"{type(config).__name__} is not registered; decorate its handler with @register_method"
        ) from None


_MODULES: list[str] = []


def add_method_modules(*modules: str) -> None:
    """Modules whose import registers methods; imported on the first registry lookup, so that
    core depends on no family (the package names them, ``torchslim/__init__.py``)."""
    _MODULES.extend(m for m in modules if m not in _MODULES)


def _import_builtin_methods() -> None:
    for m in _MODULES:
        importlib.import_module(m)
