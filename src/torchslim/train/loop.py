"""``fit`` / ``evaluate``: the one training loop, with callbacks, checkpoints,
resume and data-parallel training under ``torchrun``."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from torchslim.core import inputs
from torchslim.core.inputs import select_output
from torchslim.measure.accuracy import evaluate
from torchslim.train.callbacks import Callback
from torchslim.train.state import flatten, unflatten


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule.

    Attributes:
        epochs: passes over the training split (0: no training).
        optimizer: ``sgd`` (Nesterov momentum) or ``adam``.
        lr: peak learning rate.
        schedule: ``cosine`` (per step, to 0), ``onecycle`` (30 % linear warm-up
            from lr/25, cosine down to lr/1e4) or ``constant``.
        weight_decay, momentum, label_smoothing: as in ``torch``.
        seed: seeds python, numpy and torch before building anything random.
        channels_last: train with NHWC weights and inputs (``torch.channels_last``);
            depthwise-heavy models (mobilenetv2, shufflenetv2) train 1.2-1.8x faster
            on x86 CPUs this way. The model is returned in the default layout.
        output: which output holds the logits when the model returns several (an index
            into a tuple/list, a key of a dict, or a function of the output); default the first.
        steps_per_epoch: stop each epoch after this many batches (a fresh shuffle each epoch, so
            short fine-tunes still see varied data); None: the whole split.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = False
    output: Any = 0
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        def number(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
            if not ok:
                lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
                raise ValueError(f"train.{name}={v!r} must be a number in {lb}{lo}, {hi}{rb}")

        for name, hi in (("epochs", 100_000), ("seed", 2**32 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise ValueError(f"train.{name}={v!r} must be an integer in [0, {hi}]")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"train.optimizer={self.optimizer!r} is not allowed; use 'sgd' or 'adam'")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ValueError(f"train.schedule={self.schedule!r} is not allowed; use cosine, onecycle or constant")
        number("lr", 0, 10, lo_open=True)
        number("momentum", 0, 1, hi_open=True)
        number("weight_decay", 0, 1)
        number("label_smoothing", 0, 1, hi_open=True)
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"train.channels_last={self.channels_last!r} must be true or false")
        spe = self.steps_per_epoch
        if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
            raise ValueError(f"train.steps_per_epoch={spe!r} must be an integer >= 1 or null (the whole split)")

    @staticmethod
    def from_dict(d: dict[str, Any], where: str = "train") -> TrainConfig:
        allowed = {f.name for f in fields(TrainConfig)}
        bad = set(d) - allowed
        if bad:
            raise ValueError(f"{where}: unknown key(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        return TrainConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if callable(self.output):  # JSON (checkpoints): a function by its name
            d["output"] = getattr(self.output, "__qualname__", repr(self.output))
        return d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes (gloo on CPU, nccl on GPU).

    Returns True when running with more than one process.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate at global ``step`` of ``total`` (a pure function, so resume needs no state)."""
    t = min(step / max(total, 1), 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    warm = 0.3
    if t < warm:
        return cfg.lr / 25 + (cfg.lr - cfg.lr / 25) * t / warm
    return cfg.lr / 1e4 + 0.5 * (cfg.lr - cfg.lr / 1e4) * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )


def _log(msg: str) -> None:
    if is_main_process():
        print(msg, file=sys.stderr, flush=True)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    cfg: TrainConfig,
    *,
    val_loader: DataLoader | None = None,
    callbacks: Iterable[Callback] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """Train ``model`` in place and return its history.

    With ``checkpoint_dir``, state (model, optimizer, RNG, history) is written
    after every epoch to ``checkpoint_dir/last.ckpt`` and a rerun resumes after
    the last finished epoch. Under ``torchrun`` the model is wrapped in
    DistributedDataParallel and only rank 0 writes and prints.
    """
    callbacks = list(callbacks)
    device = torch.device(device) if device else default_device()
    distributed = init_distributed()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)
    opt = make_optimizer(model, cfg)
    history: dict[str, Any] = {"epochs": [], "seconds": 0.0}
    start_epoch = 0
    ckpt = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        start_epoch, history, cb_states = _load_checkpoint(ckpt, model, opt, train_loader, cfg)
        _log(f"[{desc}] resuming after epoch {start_epoch}/{cfg.epochs} from {ckpt}")
    else:
        seed_everything(cfg.seed)
        cb_states = None
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if progress is None:
        progress = sys.stderr.isatty()
    steps = min(len(train_loader), cfg.steps_per_epoch or len(train_loader))
    total = cfg.epochs * steps
    task_weight = math.prod(cb.task_weight for cb in callbacks)
    for cb in callbacks:
        cb.on_train_begin(model)
    if cb_states is not None and any(cb_states):
        if len(cb_states) != len(callbacks):
            raise ValueError(
                f"{ckpt} was written with {len(cb_states)} training callbacks, this run has "
                f"{len(callbacks)}; delete it to start over, or resume with the same method"
            )
        for cb, state in zip(callbacks, cb_states):
            cb.load_state_dict(state)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        net.train()
        it = train_loader
        if progress and is_main_process():
            from tqdm import tqdm

            it = tqdm(train_loader, desc=f"[{desc}] epoch {epoch + 1}/{cfg.epochs}", leave=False)
        seen = correct = 0
        run_loss = 0.0
        for i, (x, y) in enumerate(it):
            if i == steps:
                break
            step = epoch * steps + i
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, total)
            x, y = inputs.to(x, device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=layout)
            out = select_output(inputs.call(net, x), cfg.output)
            loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing) * task_weight
            for cb in callbacks:
                extra = cb.loss_term(model, x, out, y)
                if extra is not None:
                    loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for cb in callbacks:
                cb.after_step(model, step)
            seen += len(y)
            correct += (out.argmax(1) == y).sum().item()
            run_loss += loss.item() * len(y)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": run_loss / max(seen, 1),
            "train_top1": 100.0 * correct / max(seen, 1),
            "seconds": time.perf_counter() - t0,
        }
        if val_loader is not None:
            metrics.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device, cfg.output).items()})
        history["epochs"].append(metrics)
        history["seconds"] += metrics["seconds"]
        for cb in callbacks:
            cb.on_epoch_end(model, epoch, metrics)
        _log(
            f"[{desc}] epoch {epoch + 1}/{cfg.epochs} loss {metrics['train_loss']:.4f} "
            f"train {metrics['train_top1']:.2f}%"
            + (f" val {metrics['val_top1']:.2f}%" if "val_top1" in metrics else "")
            + f" ({metrics['seconds']:.0f}s)"
        )
        if ckpt is not None and is_main_process():
            _save_checkpoint(
                ckpt, model, opt, train_loader, cfg, epoch + 1, history, [cb.state_dict() for cb in callbacks]
            )
    for cb in callbacks:
        cb.on_train_end(model)
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loader: DataLoader,
    cfg: TrainConfig,
    epoch: int,
    history: dict,
    cb_states: list,
) -> None:
    from torchslim.export.slim import write_slim

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    gen = getattr(loader, "generator", None)
    state = {
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "loader_rng": gen.get_state() if gen is not None else None,
        "callbacks": cb_states,
    }
    skeleton = flatten(state, tensors, "state")
    write_slim(
        path,
        tensors,
        {"arch": None, "checkpoint": {"epoch": epoch, "train": cfg.to_dict(), "history": history, "state": skeleton}},
    )


def _load_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, cfg: TrainConfig
) -> tuple[int, dict, list | None]:
    from torchslim.export.slim import read_slim

    tensors, header = read_slim(path)
    ck = header.get("checkpoint")
    if ck is None:
        raise ValueError(f"{path} is not a training checkpoint")
    if ck["train"] != cfg.to_dict():
        raise ValueError(
            f"{path} was written with different train settings {ck['train']}; "
            "delete it to start over, or restore the settings to resume"
        )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = unflatten(ck["state"], tensors)
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    gen = getattr(loader, "generator", None)
    if gen is not None and state["loader_rng"] is not None:
        gen.set_state(state["loader_rng"])
    return ck["epoch"], ck["history"], state.get("callbacks")  # None: written before callbacks had state
