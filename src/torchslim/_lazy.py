"""Lazy attribute import for package ``__init__`` files (PEP 562), as large PyTorch libraries do:
``import torchslim.runtime`` then loads no training code, and ``ts.prune`` loads only pruning."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__``: ``names`` maps an attribute to ``"module"`` (a submodule
    imported whole) or ``"module:attr"``; modules are relative to ``package``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        mod, _, attr = target.partition(":")
        value = importlib.import_module(f"{package}.{mod}")
        return getattr(value, attr) if attr else value

    return __getattr__
