"""Which layers a method touches: exact name, then ``re:`` regex, then type."""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch.nn as nn

from torchslim.core.config import MethodConfig
from torchslim.core.state import slim_state


def matches(name: str, selectors: tuple[str, ...]) -> bool:
    """True when ``name`` equals a selector or fully matches a ``re:`` one."""
    for sel in selectors:
        if sel.startswith("re:"):
            if re.fullmatch(sel[3:], name):
                return True
        elif sel == name:
            return True
    return False


def select(
    model: nn.Module, config: MethodConfig, types: tuple[type[nn.Module], ...]
) -> Iterator[tuple[str, nn.Module, MethodConfig]]:
    """Yield ``(name, module, per_layer_config)`` for the modules a method acts on.

    A module is chosen when its type is one of ``types``, it matches
    ``config.layers`` (or that is ``None``) and not ``config.exclude``. A name
    in ``config.layers`` that does not exist, or names a module of an
    unsupported type, is an error so that typos do not pass silently. Layers whose weight the
    model's own code reads (``model.torchslim.read_outside``, found by ``compress_``) are never
    chosen: replacing them would break that code.
    """
    kept = set(slim_state(model).read_outside)
    modules = dict(model.named_modules())
    if config.layers is not None:
        for sel in config.layers:
            if sel.startswith("re:"):
                continue
            if sel not in modules:
                raise ValueError(f"{config.method}: no module named {sel!r} in the model")
            if not isinstance(modules[sel], types):
                raise ValueError(
                    f"{config.method}: module {sel!r} is a {type(modules[sel]).__name__}; "
                    f"this method handles {[t.__name__ for t in types]}"
                )
    for name, mod in modules.items():
        if not isinstance(mod, types):
            continue
        if config.layers is not None and not matches(name, config.layers):
            continue
        if matches(name, config.exclude) or name in kept:
            continue
        yield name, mod, config.for_layer(name)
