"""Module-tree surgery by dotted path: the one traversal helper every method uses."""
from __future__ import annotations

import torch.nn as nn


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Module at dotted ``path`` ("" is the model itself)."""
    return model.get_submodule(path) if path else model


def set_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Replace the module at dotted ``path`` by ``new``; returns the old module."""
    if not path:
        raise ValueError("cannot replace the root module in place")
    parent_path, _, leaf = path.rpartition(".")
    parent = get_module(model, parent_path)
    old = getattr(parent, leaf)
    setattr(parent, leaf, new)  # Sequential / ModuleList children are attributes too
    return old


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) for every module without children."""
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
