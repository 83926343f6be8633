"""Kernel choices re-timed on the machine that runs the model.

A packed layer with more than one kernel (sparse / dense, product-quantization lookup table /
dense) stores the choice measured when it was converted, with its timings. That choice belongs
to the CPU it was timed on (AVX-512 or AVX2 only, core count, cache sizes): :func:`retune_kernels`
times every such layer again on its real input, here, and keeps the faster kernel; the file is
then rewritten with the new choices by :func:`torchslim.export.slim.retune` (``torchslim tune``).
"""

from __future__ import annotations

import torch.nn as nn

from torchslim.core.surgery import capture_inputs


def retune_kernels(model: nn.Module) -> dict[str, str]:
    """Re-time the kernels of every layer that has a choice (a ``tune(example)`` method) on the
    input it sees in the model; returns ``{layer: kernel}``."""
    mods = dict(model.named_modules())
    names = [n for n, m in mods.items() if callable(getattr(m, "tune", None))]
    if not names:
        return {}
    inputs = capture_inputs(model, names)
    return {n: mods[n].tune(inputs[n]) for n in names}
