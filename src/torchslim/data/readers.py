"""Readers for on-disk image data sets: IDX (MNIST family), CIFAR-10 binary, image folders.

Every reader returns ``(images, labels)`` as a uint8 tensor ``(N, C, H, W)``
and an int64 tensor ``(N,)``. Errors name the file and say how to get the data.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
ENV_DATA_DIR = "TORCHSLIM_DATA_DIR"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_HELP = (
    "Fashion-MNIST is read from IDX files (train-images-idx3-ubyte[.gz], ...). On Debian/Ubuntu run "
    "'apt-get install dataset-fashion-mnist' (files land in /usr/share/datasets/fashion-mnist); "
    "elsewhere download the four IDX files and pass --data-dir DIR or set TORCHSLIM_DATA_DIR=DIR."
)


class DataError(ValueError):
    """A data set file is missing, truncated or malformed."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Format: 2 zero bytes, a dtype byte, a rank byte, ``rank`` big-endian uint32
    dims, then the data in C order.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is truncated or not gzip") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    rank = raw[3]
    head = 4 + 4 * rank
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - head != expected:
        raise DataError(
            f"{path}: IDX header promises {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - head}; the file is truncated or corrupt, fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (root / name).exists():
            return root / name
    raise DataError(f"{root / stem}[.gz]: file not found. {FASHION_HELP}")


def read_idx_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style split ``train`` or ``test`` from ``root`` (Fashion-MNIST, MNIST, KMNIST)."""
    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"data directory {root} {what}. {FASHION_HELP}")
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


CIFAR_HELP = (
    "CIFAR-10 is read in its binary format (data_batch_1.bin .. data_batch_5.bin, "
    "test_batch.bin, from cifar-10-binary.tar.gz); pass --data-dir to the extracted folder."
)


def read_cifar_binary(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 binary: records of 1 label byte + 3072 bytes (3x32x32, channel-major)."""
    root = Path(root)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.exists():
            raise DataError(f"{path}: file not found. {CIFAR_HELP}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % 3073:
            raise DataError(f"{path}: size {raw.size} is not a multiple of 3073-byte records; truncated or corrupt")
        rec = raw.reshape(-1, 3073)
        if rec[:, 0].max() > 9:
            raise DataError(f"{path}: label byte above 9; not a CIFAR-10 binary file")
        labels.append(rec[:, 0].astype(np.int64))
        images.append(rec[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image_folder(
    root: str | os.PathLike, split: str, *, size: int = 32, grayscale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image folder: ``root/<split>/<class>/*.png`` (or ``root/<class>/*`` for ``train``).

    Classes are the sorted subfolder names; images are resized to ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    base = root / split if (root / split).is_dir() else (root if split == "train" else None)
    if base is None or not base.is_dir():
        raise DataError(f"{root}: no '{split}' folder; lay images out as ROOT/{split}/<class>/<image>")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{base}: no class subfolders; lay images out as {base}/<class>/<image>")
    mode = "L" if grayscale else "RGB"
    images, labels = [], []
    for ci, cls in enumerate(classes):
        for f in sorted((base / cls).iterdir()):
            if f.suffix.lower() not in _IMG_EXT:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((size, size))
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{f}: cannot decode image ({e})") from None
            images.append(arr[None] if grayscale else arr.transpose(2, 0, 1))
            labels.append(ci)
    if not images:
        raise DataError(f"{base}: no images with extensions {sorted(_IMG_EXT)}")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)
