"""Training callbacks: how a compression method plugs into any training loop.

A method returns callbacks from ``Method.callbacks``; ``fit`` (or a user loop)
calls ``loss_term`` after the task loss (e.g. L1 on BN gamma for network
slimming) and ``after_step`` after each optimizer step (re-apply masks, clip
latent binary weights to [-1, 1]).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Callback:
    """Base class; override what you need.

    ``task_weight`` scales the task (cross-entropy) loss; ``fit`` multiplies the
    weights of all callbacks (distillation uses ``1 - alpha``).
    """

    task_weight: float = 1.0

    def on_train_begin(self, model: nn.Module) -> None:
        """Once before the first epoch."""

    def loss_term(
        self, model: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """Extra loss added to the task loss for this batch (or None)."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """After every optimizer step; ``step`` counts from 0 over the whole run."""

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict) -> None:
        """After each epoch's validation."""

    def on_train_end(self, model: nn.Module) -> None:
        """Once after the last epoch."""

    def state_dict(self) -> dict:
        """State that ``fit`` writes into each epoch checkpoint (tensors, numbers, nested dicts/lists)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on resume (called after :meth:`on_train_begin`)."""
