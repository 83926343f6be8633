"""A user's own model named by import path, as other PyTorch tools do: ``"pkg.module:factory"``.

Only a recipe or a command-line flag names the path; a ``.slim`` file never makes the loader
import anything. Weights come from a ``.slim`` file, a safetensors file, or a PyTorch checkpoint
read with ``torch.load(weights_only=True)`` (a state dict, or a dict holding one under
``state_dict`` / ``model``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``"pkg.module:factory"`` (a class or a function that returns a module)."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"model import path {spec!r}: write it as 'package.module:factory'")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(
            f"model import path {spec!r}: cannot import {mod_name!r} ({e}); is it on PYTHONPATH?"
        ) from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ValueError(f"model import path {spec!r}: {mod_name} has no callable {attr!r}")
    return factory


def build_imported(spec: str, kwargs: dict | None = None) -> nn.Module:
    model = resolve_factory(spec)(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"model import path {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Fill ``model`` from a ``.slim``, safetensors or (weights-only) PyTorch checkpoint file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model weights: no file {str(path)!r}")
    if path.suffix == ".slim":
        from torchslim.export.slim import load

        return load(path, model=model)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling refusal or corrupt file
            raise ValueError(f"model weights {str(path)!r}: not a weights-only PyTorch checkpoint ({e})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"model weights {str(path)!r} do not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    return model
