"""Pickle-free checkpoints of nested training state (optimizer, RNG, history).

Tensors go into a ``.slim`` file's tensor section, everything else into its
JSON header; dict keys keep their int/str type.
"""

from __future__ import annotations

from typing import Any

import torch


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace tensors in a nested structure by references; fill ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__t__": prefix}
    if isinstance(obj, dict):
        return {"__d__": [[k, flatten(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {
            "__l__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)],
            "tuple": isinstance(obj, tuple),
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if "__t__" in obj:
            return tensors[obj["__t__"]]
        if "__d__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__d__"]}
        if "__l__" in obj:
            seq = [unflatten(v, tensors) for v in obj["__l__"]]
            return tuple(seq) if obj.get("tuple") else seq
    return obj
