"""quant.kmeans, bit packing, Huffman coding and Deep-Compression storage."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import torchslim as ts
from references import kmeans_reference
from torchslim.export import huffman
from torchslim.prune import Magnitude
from torchslim.quant import KMeans, kmeans_1d
from torchslim.runtime.codebook import CodebookLinear, pack_bits, unpack_bits
from torchslim.runtime.sparse import SparseLinear, csr_cols, csr_gaps

from contract import MethodContract


class TestKMeansContract(MethodContract):
    config = KMeans(bits=4, overrides={"re:.*fc.*": {"bits": 6}})
    bad_configs = (
        lambda: KMeans(bits=0),
        lambda: KMeans(bits=9),
        lambda: KMeans(init="kmeans++"),
        lambda: KMeans(iters=0),
        lambda: KMeans(overrides={"fc": {"bits": 12}}),
    )
    model_names = ("lenet5", "resnet20")
    prepare_rel_error = 0.2
    # measured 1.3e-3: 30 Lloyd steps do not converge on the 400k-weight fc; float32 / float64 means drift
    reference_rtol = 5e-3

    def prepare_reference(self, original, prepared):
        return kmeans_reference(original, self.config)


@given(st.lists(st.integers(0, 255), max_size=300), st.integers(1, 8))
def test_pack_unpack_round_trip(values, bits):
    """Also across the chunks the packers work in (made 16 codes here, 2**20 in use: packing a 38M-weight
    layer in one step took 5 GB): catches a chunk that does not end on a whole byte / group of 8 codes."""
    from unittest import mock

    codes = torch.tensor([v % (2**bits) for v in values], dtype=torch.int64)
    packed = pack_bits(codes, bits)
    assert packed.numel() == (len(values) * bits + 7) // 8
    assert packed.tolist() == [  # byte j holds bits 8j..8j+7 of the stream, code i's bit k at i * bits + k
        sum(
            ((int(codes[(8 * j + t) // bits]) >> ((8 * j + t) % bits)) & 1) << t
            for t in range(8)
            if 8 * j + t < len(values) * bits
        )
        for j in range(packed.numel())
    ]
    assert torch.equal(unpack_bits(packed, bits, len(values)), codes)
    with mock.patch("torchslim.runtime.codebook._CHUNK", 16):
        assert torch.equal(pack_bits(codes, bits), packed)
        assert torch.equal(unpack_bits(packed, bits, len(values)), codes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-50, 2000), min_size=0, max_size=400))
def test_huffman_decode_encode_identity(values):
    x = np.asarray(values, dtype=np.int64)
    stream, alphabet, lengths = huffman.encode(x)
    assert np.array_equal(huffman.decode(stream, alphabet, lengths, len(x)), x)


def _csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=mask.shape[0]))])
    return crow, cols


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_csr_gap_coder_round_trip(rows, cols, density, seed):
    """Catches: a gap coder that drops a row start (e.g. the last non-empty row holding one weight),
    or decodes empty rows wrongly. Patterns span empty matrices, empty and single-entry rows."""
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < density
    crow, col = _csr(mask)
    gaps = csr_gaps(crow, col)
    assert (gaps >= 0).all()
    assert np.array_equal(csr_cols(crow, gaps), col)


@pytest.mark.parametrize("last_rows", [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
def test_csr_gap_coder_edge_rows_through_a_huffman_file(last_rows, tmp_path):
    """The same through a saved file whose column stream is really Huffman-coded: random sparse
    rows, an empty row, then rows shaped by ``last_rows`` (1 = a single weight, 0 = empty)."""
    rng = np.random.default_rng(0)
    mask = rng.random((60, 200)) < 0.1
    mask[10] = False
    for i, single in enumerate(last_rows):
        mask[56 + i] = False
        mask[56 + i, 7 * i + 3] = bool(single)
    lin = nn.Linear(200, 60, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.from_numpy(mask))
    model = nn.Sequential(SparseLinear.from_dense(lin))
    ts.save(model, tmp_path / "m.slim", entropy="huffman")
    assert "0.col" in ts.load(tmp_path / "m.slim", model=copy.deepcopy(model)).torchslim.header["entropy"]
    loaded = ts.load(tmp_path / "m.slim", model=copy.deepcopy(model))
    assert torch.equal(loaded[0].dense_weight(), lin.weight.detach())


def test_huffman_skewed_stream_is_length_limited():
    x = np.random.default_rng(0).geometric(0.3, 50000)
    stream, alphabet, lengths = huffman.encode(x)
    assert lengths.max() <= huffman.MAX_LEN
    assert np.array_equal(huffman.decode(stream, alphabet, lengths, len(x)), x)
    assert stream.nbytes < 0.5 * len(x)  # < 4 bits per symbol for a geometric(0.3) source


def test_truncated_huffman_stream_raises():
    x = np.arange(100) % 7
    stream, alphabet, lengths = huffman.encode(x)
    with pytest.raises(ValueError, match="declares 100 symbols but holds only 40 bits"):
        huffman.decode(stream[:5], alphabet, lengths, len(x))  # fewer bits than symbols: refused up front
    with pytest.raises(ValueError, match="ends early"):
        huffman.decode(stream[: len(stream) - 3], alphabet, lengths, len(x))  # enough bits, cut short


def test_kmeans_1d_codes_and_centroids():
    torch.manual_seed(0)
    w = torch.cat([torch.randn(300) * 0.01 - 1, torch.randn(300) * 0.01 + 1])
    codes, c = kmeans_1d(w, 2)
    assert codes.max() < 2 and torch.allclose(c, torch.tensor([-1.0, 1.0]), atol=0.01)
    for init in ("linear", "density", "random"):
        codes, c = kmeans_1d(torch.randn(1000), 16, init)
        assert codes.min() >= 0 and codes.max() < 16 and torch.all(c[1:] >= c[:-1])
    w = torch.randn(1000)
    codes, c = kmeans_1d(w, 16)
    assert torch.equal(codes, (w[:, None] - c).abs().argmin(1))  # every weight at its nearest centroid


def test_codes_below_2_pow_bits_and_nearest():
    torch.manual_seed(0)
    lin = nn.Linear(50, 40)
    model = nn.Sequential(lin)
    ts.compress_(model, KMeans(bits=3))
    q = model[0]
    idx = q.indices()
    assert idx.max() < 8 and q.codebook.numel() == 8
    nearest = (lin.weight.detach()[..., None] - q.codebook.detach()).abs().argmin(-1)
    assert (idx == nearest).float().mean() > 0.99


def test_centroid_gradient_is_sum_of_weight_gradients():
    torch.manual_seed(0)
    q = CodebookLinear(6, 4, bits=2)
    codes = torch.randint(0, 4, (4, 6))
    q.set_codes(codes, torch.tensor([-1.0, -0.2, 0.3, 1.0]))
    x = torch.randn(5, 6)
    q(x).pow(2).sum().backward()
    w = q.codebook.detach()[codes].clone().requires_grad_(True)
    nn.functional.linear(x, w, q.bias).pow(2).sum().backward()
    expect = torch.zeros(4).index_add_(0, codes.flatten(), w.grad.flatten())
    torch.testing.assert_close(q.codebook.grad, expect)


def test_zeros_stay_zero_and_codebook_fine_tunes():
    torch.manual_seed(0)
    model = ts.create_model("lenet300_100")
    ts.compress_(model, Magnitude(sparsity=0.9, kernel="dense"))
    ts.convert_(model)
    dense0 = model[1].dense_weight() == 0
    ts.compress_(model, KMeans(bits=4))
    ts.convert_(model)
    assert model[1].bits == 4 and (model[1].dense_weight()[dense0] == 0).all()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    before = model[1].codebook.detach().clone()
    loss = model(torch.randn(8, 1, 28, 28)).pow(2).mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model[1].codebook.detach())
    assert (model[1].dense_weight()[dense0] == 0).all()


def test_deep_compression_storage_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ts.create_model("lenet5").eval()
    x = torch.randn(3, 1, 28, 28)
    dense = ts.save(model, tmp_path / "f.slim")
    ts.compress_(model, Magnitude(sparsity=0.92, kernel="dense"))
    ts.convert_(model)
    pruned = ts.save(model, tmp_path / "p.slim")
    ts.compress_(model, KMeans(bits=5))
    ts.convert_(model)
    quant = ts.save(model, tmp_path / "q.slim")
    huff = ts.save(model, tmp_path / "h.slim", entropy="huffman")
    assert dense > pruned > quant > huff and dense / huff > 25
    y = model(x)
    for f in ("q.slim", "h.slim"):
        assert torch.equal(ts.load(tmp_path / f)(x), y)
    raw = bytearray((tmp_path / "h.slim").read_bytes())
    raw[-200] ^= 0x55
    (tmp_path / "bad.slim").write_bytes(bytes(raw))
    with pytest.raises(ts.export.SlimFileError):
        ts.load(tmp_path / "bad.slim")


def test_huffman_stream_that_ends_early_is_refused():
    """Catches: decoding past the end of the stream (zeros read as codes) instead of refusing a
    stream that declares more symbols than its bits hold: four equally likely symbols take 2 bits
    each, so 8 symbols fill 2 bytes and a 9th is past the end."""
    from torchslim.export import huffman

    stream, alphabet, lengths = huffman.encode(np.array([0, 1, 2, 3] * 2))
    assert len(stream) == 2 and set(lengths.tolist()) == {2}
    assert huffman.decode(stream, alphabet, lengths, 8).tolist() == [0, 1, 2, 3] * 2
    with pytest.raises(ValueError, match="ends early"):
        huffman.decode(stream, alphabet, lengths, 9)
