"""Training: ``fit``, callbacks, checkpoints, data-parallel runs."""

from torchslim.train.callbacks import Callback
from torchslim.train.loop import TrainConfig, fit, init_distributed, is_main_process, seed_everything

__all__ = ["Callback", "TrainConfig", "fit", "init_distributed", "is_main_process", "seed_everything"]
