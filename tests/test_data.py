"""Data readers and loaders: real Fashion-MNIST files and generated fixtures."""

import gzip
import struct

import numpy as np
import pytest
import torch

from torchslim.data import DataConfig, DataError, load_split, make_loaders, read_idx
from torchslim.data.readers import read_cifar_binary, read_image_folder


def _write_idx(path, arr: np.ndarray, gz=False):
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_real_fashion_mnist_files(fashion_dir):
    """The Debian package's IDX files parse to 60k/10k images with balanced labels."""
    x, y = load_split(DataConfig(dir=str(fashion_dir)), "train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [6000] * 10
    xt, yt = load_split(DataConfig(dir=str(fashion_dir)), "test")
    assert xt.shape == (10000, 1, 28, 28) and torch.bincount(yt).tolist() == [1000] * 10


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr, gz)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)


def test_idx_truncated_names_file(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    _write_idx(tmp_path / "t", arr)
    raw = (tmp_path / "t").read_bytes()
    (tmp_path / "t").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t")


def test_idx_bad_magic(tmp_path):
    (tmp_path / "b").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 10)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "b")


def test_idx_corrupt_gzip(tmp_path):
    arr = np.zeros((10, 4), np.uint8)
    _write_idx(tmp_path / "c.gz", arr, gz=True)
    raw = (tmp_path / "c.gz").read_bytes()
    (tmp_path / "c.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="c.gz"):
        read_idx(tmp_path / "c.gz")


def test_missing_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_split(DataConfig(dir=str(tmp_path / "nope")), "train")


def test_cifar_binary_fixture(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}.bin", 3) for i in range(1, 6)] + [("test_batch.bin", 2)]:
        rec = np.zeros((n, 3073), np.uint8)
        rec[:, 0] = rng.integers(0, 10, n)
        rec[:, 1:] = rng.integers(0, 256, (n, 3072))
        rec.tofile(tmp_path / name)
    x, y = read_cifar_binary(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and y.shape == (15,)
    raw = np.fromfile(tmp_path / "data_batch_1.bin", np.uint8).reshape(3, 3073)
    assert torch.equal(x[0], torch.from_numpy(raw[0, 1:].reshape(3, 32, 32)))
    assert y[0] == raw[0, 0]
    (tmp_path / "test_batch.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="3073"):
        read_cifar_binary(tmp_path, "test")


def test_image_folder_fixture(tmp_path):
    from PIL import Image

    for ci, cls in enumerate(["cat", "dog"]):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((40, 40, 3), 50 * ci + j, np.uint8)).save(tmp_path / "train" / cls / f"{j}.png")
    x, y = read_image_folder(tmp_path, "train", size=32)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(x[4, 0, 0, 0]) == 51
    (tmp_path / "train" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        read_image_folder(tmp_path, "train")


def test_split_is_deterministic_and_disjoint(fashion_dir):
    cfg = DataConfig(dir=str(fashion_dir), subset=1000, val_size=200, batch_size=50)
    a, b = make_loaders(cfg), make_loaders(cfg, seed=5)
    assert torch.equal(a.val.dataset.x, b.val.dataset.x)  # validation never depends on the seed
    tr = {t.numpy().tobytes() for t in a.train.dataset.x}
    assert len(a.train.dataset) == 800 and len(a.val.dataset) == 200
    assert not any(v.numpy().tobytes() in tr for v in a.val.dataset.x[:50])
    x, y = next(iter(a.test))
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.5


def test_augment_keeps_shape(fashion_dir):
    cfg = DataConfig(dir=str(fashion_dir), subset=300, val_size=60, batch_size=32, augment=True)
    x, _ = next(iter(make_loaders(cfg).train))
    assert x.shape == (32, 1, 28, 28)


def test_bad_data_config():
    with pytest.raises(ValueError, match="use one of"):
        DataConfig(name="imagenet")
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
