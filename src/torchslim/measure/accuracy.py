"""Accuracy of a model (or an engine's runner) on labelled data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from torchslim.core import inputs
from torchslim.core.inputs import select_output


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device | str | None = None, output: Any = 0
) -> dict[str, float]:
    """Top-1 (and top-5 with more than 5 classes) accuracy in percent, and mean loss; ``output``
    selects the logits of a model with several outputs (:func:`select_output`)."""
    device = torch.device(device) if device else next(model.parameters(), torch.zeros(0)).device
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss = 0.0
    for x, y in loader:
        x, y = inputs.to(x, device), y.to(device)
        out = select_output(inputs.call(model, x), output)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        n += len(y)
    model.train(was_training)
    res = {"top1": 100.0 * correct1 / max(n, 1), "loss": loss / max(n, 1)}
    if out.shape[1] > 5:
        res["top5"] = 100.0 * correct5 / max(n, 1)
    return res
