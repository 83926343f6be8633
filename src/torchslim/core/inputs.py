"""Model inputs: one tensor, or a tuple of tensors for a model whose ``forward`` takes several.

Every place that runs a model on an example (MAC counting, kernel timing, dependency graphs,
calibration, training and evaluation batches, the load-time check of a file, ONNX export) goes
through these helpers, so a multi-input model works wherever a single-input one does.

An input *shape* (what a ``.slim`` header records, without the batch dimension) is a list of
ints for one input, or a list of such lists for several inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

Inputs = torch.Tensor | tuple
MAX_NUMEL = 1 << 24  # elements of one sample a recorded input shape may declare


def check(x: Any, what: str = "example_inputs") -> Inputs:
    """``x`` as a tensor or a tuple of tensors, each with a batch dimension; a clear error otherwise."""
    if isinstance(x, list):
        x = tuple(x)
    parts = x if isinstance(x, tuple) else (x,)
    if not parts or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in parts):
        got = type(x).__name__ if not isinstance(x, tuple) else f"tuple of {[type(t).__name__ for t in parts]}"
        raise ValueError(
            f"{what} must be one input batch as a tensor, or a tuple of tensors for a model with "
            f"several inputs (batch dimension first); got {got}"
        )
    if isinstance(x, tuple) and len({t.shape[0] for t in parts}) != 1:
        raise ValueError(f"{what}: the tensors of the tuple must have the same batch size")
    return x


def of_batch(batch: Any) -> Inputs:
    """The model inputs of a data batch: ``x`` of an ``(x, y)`` pair (``x`` may itself be a tuple
    of tensors), or the batch itself when it holds no targets."""
    return batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch


def _map(x: Inputs, fn) -> Inputs:
    return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def call(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, or ``model(*x)`` for a tuple of inputs."""
    return model(*x) if isinstance(x, tuple) else model(x)


def to(x: Inputs, device, non_blocking: bool = False) -> Inputs:
    return _map(x, lambda t: t.to(device, non_blocking=non_blocking))


def first(x: Inputs) -> Inputs:
    """The first sample (batch dimension kept), detached and copied."""
    return _map(x, lambda t: t[:1].detach().clone())


def repeat(x: Inputs, batch: int) -> Inputs:
    """A batch of ``batch`` copies of ``x``'s first sample."""
    return _map(x, lambda t: t[:1].expand(batch, *t.shape[1:]).clone())


def shape_of(x: Inputs) -> list:
    """The input shape without the batch dimension (a list of lists for several inputs)."""
    return [list(t.shape[1:]) for t in x] if isinstance(x, tuple) else list(x.shape[1:])


def is_multi(shape) -> bool:
    return len(shape) > 0 and isinstance(shape[0], (list, tuple))


def check_shape(shape: Any) -> tuple:
    """A recorded input shape as a tuple (of tuples); ValueError naming what is wrong."""

    def one(s) -> tuple[int, ...]:
        if not isinstance(s, (list, tuple)) or not all(isinstance(d, int) and 0 < d <= 1 << 16 for d in s):
            raise ValueError(f"an input shape must be a list of positive ints (without the batch), got {s!r}")
        if len(s) > 8:
            raise ValueError(f"an input shape has at most 8 dimensions, got {len(s)}")
        return tuple(s)

    if isinstance(shape, (list, tuple)) and is_multi(shape):
        if len(shape) > 16:
            raise ValueError(f"at most 16 model inputs are supported, got {len(shape)}")
        out = tuple(one(s) for s in shape)
    else:
        out = one(shape)
    if numel(out) > MAX_NUMEL:  # a file's declared input is allocated to check the model runs
        raise ValueError(f"an input of {numel(out):,} elements per sample is more than {MAX_NUMEL:,}")
    return out


def from_shape(shape, batch: int = 1, device=None, random: bool = False) -> Inputs:
    """Zeros (or standard normal samples) of ``shape`` with a batch dimension of ``batch``."""
    make = torch.randn if random else torch.zeros
    if is_multi(shape):
        return tuple(make((batch, *s), device=device) for s in shape)
    return make((batch, *shape), device=device)


def numel(shape) -> int:
    """Elements of one sample of ``shape``."""
    parts = shape if is_multi(shape) else [shape]
    return sum(int(torch.Size(s).numel()) for s in parts)


def select_output(out: Any, output: Any = 0) -> torch.Tensor:
    """The logits among a model's outputs: the output itself when it is a tensor, else
    ``output(out)`` for a function, ``out[output]`` for an index (tuple/list) or key (dict)."""
    if isinstance(out, torch.Tensor):
        return out
    if callable(output):
        return output(out)
    try:
        return out[output]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"the model returns a {type(out).__name__}; output={output!r} does not select its logits "
            "(give an index, a key or a function)"
        ) from None


def arch_shape(arch: dict | None) -> tuple | None:
    """A registry model's input shape ``(C, S, S)`` from the kwargs ``create_model`` recorded
    (``in_channels``, ``input_size``: the registry's per-model default input); None when not recorded.
    ValueError past :data:`MAX_NUMEL` elements per sample, like a recorded shape."""
    kw = (arch or {}).get("kwargs") or {}
    c, s = kw.get("in_channels"), kw.get("input_size")
    if isinstance(c, int) and isinstance(s, int) and not isinstance(c, bool) and not isinstance(s, bool):
        return check_shape([c, s, s])  # the one input-size cap, as for a recorded input_shape
    return None
