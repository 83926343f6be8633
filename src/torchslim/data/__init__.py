"""Data sets and loaders: a deterministic train/validation split carved from the
training set; the test set is used only for reported numbers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from torchslim.data.readers import (
    DEFAULT_FASHION_DIR,
    ENV_DATA_DIR,
    DataError,
    read_cifar_binary,
    read_idx,
    read_idx_split,
    read_image_folder,
)

__all__ = ["DataConfig", "DataError", "Loaders", "load_split", "make_loaders", "read_idx", "DATASETS"]

# name -> (reader(root, split, cfg), channel mean, channel std); stats of the training sets.
DATASETS: dict[str, tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], tuple, tuple]] = {
    "fashion_mnist": (lambda r, s, c: read_idx_split(r, s), (0.2860,), (0.3530,)),
    "mnist": (lambda r, s, c: read_idx_split(r, s), (0.1307,), (0.3081,)),
    "kmnist": (lambda r, s, c: read_idx_split(r, s), (0.1918,), (0.3483,)),
    "cifar10": (lambda r, s, c: read_cifar_binary(r, s), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "image_folder": (
        lambda r, s, c: read_image_folder(r, s, size=c.image_size, grayscale=c.grayscale),
        (0.5,),
        (0.25,),
    ),
}


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is served.

    Attributes:
        name: one of ``DATASETS``.
        dir: data folder; default ``$TORCHSLIM_DATA_DIR`` or, for Fashion-MNIST,
            /usr/share/datasets/fashion-mnist.
        batch_size: training batch size (evaluation uses 2x).
        val_size: images held out of the training set for validation.
        augment: random crop (pad 2/4 px) and horizontal flip on training batches.
        subset: use only the first N training and N//5 test images (tests, smoke runs).
        image_size, grayscale: for ``image_folder`` only.
    """

    name: str = "fashion_mnist"
    dir: str | None = None
    batch_size: int = 128
    val_size: int = 5000
    augment: bool = False
    subset: int | None = None
    image_size: int = 32
    grayscale: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in DATASETS:
            raise ValueError(f"data.name={self.name!r} is unknown; use one of {sorted(DATASETS)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size!r} must be a positive integer")
        if not isinstance(self.val_size, int) or self.val_size < 0:
            raise ValueError(f"data.val_size={self.val_size!r} must be an integer >= 0")
        if self.subset is not None and (not isinstance(self.subset, int) or self.subset < 10):
            raise ValueError(f"data.subset={self.subset!r} must be an integer >= 10 or null")
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"data.image_size={self.image_size!r} must be an integer in [8, 1024]")
        for key in ("augment", "grayscale"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"data.{key}={getattr(self, key)!r} must be true or false")
        if self.dir is not None and not isinstance(self.dir, str):
            raise ValueError(f"data.dir={self.dir!r} must be a path or null")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> DataConfig:
        allowed = {f.name for f in fields(DataConfig)}
        bad = set(d) - allowed
        if bad:
            raise ValueError(f"data: unknown key(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        return DataConfig(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def root(self) -> str:
        if self.dir:
            return os.path.expanduser(self.dir)
        if os.environ.get(ENV_DATA_DIR):
            return os.environ[ENV_DATA_DIR]
        if self.name == "fashion_mnist":
            return DEFAULT_FASHION_DIR
        raise DataError(f"data set {self.name!r} has no default location; pass --data-dir DIR or set {ENV_DATA_DIR}")

    @property
    def mean(self) -> tuple[float, ...]:
        return DATASETS[self.name][1]

    @property
    def std(self) -> tuple[float, ...]:
        return DATASETS[self.name][2]


# classes each data set declares (image_folder: one per class folder, so its labels are in range)
CLASSES = {"fashion_mnist": 10, "mnist": 10, "kmnist": 10, "cifar10": 10}


def load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw uint8 images (N, C, H, W) and labels of ``train`` or ``test``; labels outside the data
    set's declared classes are an error (a stray 200 would otherwise build a 201-class model)."""
    x, y = DATASETS[cfg.name][0](cfg.root(), split, cfg)
    n = CLASSES.get(cfg.name)
    if n is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= n):
        bad = y[(y < 0) | (y >= n)]
        raise DataError(
            f"{cfg.root()}: the {split} labels hold {int(bad[0])} ({len(bad)} label(s) outside the "
            f"{n} classes of {cfg.name}); the data files are corrupt"
        )
    if cfg.subset is not None:
        n = cfg.subset if split == "train" else max(10, cfg.subset // 5)
        x, y = x[:n], y[:n]
    return x, y


class _Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class _Collate:
    """Stack uint8 images, scale to [0, 1], normalise, optionally augment (batch-wise)."""

    def __init__(self, mean: tuple, std: tuple, augment: bool) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.augment = augment

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([b[0] for b in batch]).float().div_(255)
        y = torch.stack([b[1] for b in batch])
        if self.augment:
            x = _augment(x)
        return (x - self.mean) / self.std, y


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Random crop after zero padding (2 px for 28 px images, 4 px otherwise) and horizontal flip."""
    n, _, h, w = x.shape
    p = 2 if h <= 28 else 4
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    ox = torch.randint(0, 2 * p + 1, (n,)).tolist()
    oy = torch.randint(0, 2 * p + 1, (n,)).tolist()
    out = torch.stack([padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    in_channels: int
    input_size: int
    num_classes: int


def make_loaders(cfg: DataConfig, *, distributed: bool = False, seed: int = 0) -> Loaders:
    """Train / validation / test loaders. The validation split is the last
    ``val_size`` images of a fixed (seed 0) permutation of the training set, so
    it never changes between runs."""
    x, y = load_split(cfg, "train")
    xt, yt = load_split(cfg, "test")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    nval = min(cfg.val_size, len(y) // 5)
    tr, va = perm[: len(y) - nval], perm[len(y) - nval :]
    train_ds = _Images(x[tr], y[tr])
    sampler = None
    if distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_ds, shuffle=True, seed=seed)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(
        train_ds,
        cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=g,
        collate_fn=_Collate(cfg.mean, cfg.std, cfg.augment),
        drop_last=len(tr) > cfg.batch_size,
    )
    plain = _Collate(cfg.mean, cfg.std, False)
    val = DataLoader(_Images(x[va], y[va]), 2 * cfg.batch_size, collate_fn=plain) if nval else None
    test = DataLoader(_Images(xt, yt), 2 * cfg.batch_size, collate_fn=plain)
    num_classes = int(max(y.max(), yt.max())) + 1
    return Loaders(train, val, test, x.shape[1], x.shape[2], num_classes)
