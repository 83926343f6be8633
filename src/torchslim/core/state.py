"""What torchslim remembers on a model: one documented namespace, ``model.torchslim``.

Fields (all plain data, deep-copied with the model, never pickled into files):

* ``arch``: ``{"name", "kwargs"}`` of the registry architecture the model was built from
  (``create_model``), or None for a user's own module;
* ``example_inputs``: the first sample of the example batch given to ``compress_`` (batch dim
  kept); methods that run the model (kernel timing, dependency graphs, hints, MAC counts) use it;
* ``original``: for a model outside the registry, the specs of its layers before the first
  method changed them; ``save`` stores what differs, so ``load(path, model=MyNet())`` can
  rebuild the replaced layers on a fresh instance;
* ``pending``: configs prepared by ``compress_`` and not yet made permanent by ``convert_``;
* ``read_outside``: layers whose weight the model's own code reads (see
  :func:`torchslim.core.surgery.read_from_outside`); methods keep them as they are;
* ``log``: per-layer decisions of the methods applied (ranks, kernel timings), saved in the file;
* ``header``: the JSON header of the ``.slim`` file the model was loaded from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

ATTR = "torchslim"


@dataclass
class SlimState:
    arch: dict | None = None
    example_inputs: Any = None
    original: dict | None = None
    pending: list = field(default_factory=list)
    read_outside: tuple = ()
    log: list = field(default_factory=list)
    header: dict | None = None
    activation_bytes: int = 0  # float32 layer outputs of one sample, measured by load's check forward


def slim_state(model: nn.Module) -> SlimState:
    """The model's torchslim namespace, created empty on first use."""
    state = model.__dict__.get(ATTR)
    if state is None:
        state = model.__dict__[ATTR] = SlimState()
    return state
