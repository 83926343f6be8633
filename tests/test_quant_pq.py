"""quant.pq: product quantization and its lookup-table kernel."""

import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from references import product_reference
from torchslim.quant import PQ, pq_kmeans
from torchslim.runtime.product import ProductLinear, choose_pq_kernel

from contract import MethodContract


class TestPQContract(MethodContract):
    config = PQ(sub_dim=2, bits=5, kernel="dense")
    bad_configs = (lambda: PQ(bits=0), lambda: PQ(sub_dim=0), lambda: PQ(kernel="gpu"), lambda: PQ(iters=0))
    model_names = ("lenet5", "vgg_small")
    prepare_rel_error = 0.6

    def prepare_reference(self, original, prepared):
        return product_reference(original, prepared)


def test_pq_kmeans_reconstructs_clustered_rows():
    torch.manual_seed(0)
    centers = torch.randn(4, 8)
    w = centers[torch.randint(0, 4, (64,))] + 0.001 * torch.randn(64, 8)
    codes, books = pq_kmeans(w, sub_dim=4, k=4)
    assert codes.shape == (64, 2) and books.shape == (2, 4, 4) and codes.max() < 4
    rebuilt = torch.cat([books[j, codes[:, j]] for j in range(2)], dim=1)
    assert (rebuilt - w).abs().max() < 0.01


@pytest.mark.parametrize("rows,cols,sub_dim,bits", [(40, 64, 8, 3), (256, 1152, 4, 4), (10, 24, 2, 1), (17, 36, 3, 2)])
@pytest.mark.parametrize("batch", [1, 5])
def test_lut_kernel_equals_dense_kernel(rows, cols, sub_dim, bits, batch):
    """The table kernel computes the dense layer's function: per output the same m * d products summed
    in another order, so |difference| <= 2 (m d + 1) u sum |products| (u = 2^-24). Catches: a code or
    codebook transposed wrongly, rows not a multiple of 16 (padding) or codebooks with fewer than 16
    codewords mishandled, the batch loop or the bias wrong, a row block skipped."""
    torch.manual_seed(0)
    lin = nn.Linear(cols, rows)
    pq = ProductLinear(cols, rows, sub_dim=sub_dim, bits=bits)
    pq.set_codes(*pq_kmeans(lin.weight, sub_dim, 2**bits))
    pq.bias.data.copy_(lin.bias.data)
    x = torch.randn(batch, cols)
    with torch.no_grad():
        pq.kernel = "dense"
        dense = pq(x)
        pq.kernel = "lut"
        got = pq(x)
        magnitude = nn.functional.linear(x.abs(), pq.weight2d().abs(), pq.bias.abs())
    assert bool(((got - dense).abs() <= 2 * (cols + 1) * 2.0**-24 * magnitude).all())


def test_lut_kernel_avx2_variant(monkeypatch):
    """The AVX2 form of the table look-up (two 8-float permutes and a blend on the index's bit 3),
    compiled and checked here too (an AVX-512 CPU runs AVX2 code). Catches: the blend taking the wrong
    half, i.e. codes 8-15 read from the first half of the table."""
    from torchslim.runtime import product as product_mod

    monkeypatch.setattr(product_mod, "_simd", lambda: "avx2")
    monkeypatch.setattr(product_mod, "_NUMBA", None)
    try:
        assert product_mod._numba_kernels()["simd"] == "avx2"
        for batch in (1, 3):
            test_lut_kernel_equals_dense_kernel(33, 64, 4, 4, batch)
    finally:
        product_mod._NUMBA = None  # the next use compiles this CPU's own variant again


def test_lut_kernel_choice_and_batch_limit(monkeypatch):
    """``choose_pq_kernel`` keeps the table kernel up to the largest batch at which it measured
    faster (the dense weight above it), and the layer follows that limit. Catches: the limit ignored
    (the table kernel at batch 256), a limit past the first loss, the choice not recorded."""
    from torchslim.runtime import product as product_mod
    from torchslim.runtime import timing as timing_mod

    torch.manual_seed(0)
    pq = ProductLinear(64, 40, sub_dim=8, bits=3)
    pq.set_codes(torch.randint(0, 8, (40, 8)), torch.randn(8, 8, 8))
    fake = {"b1": {"lut": 1.0, "dense": 2.0}, "b4": {"lut": 1.0, "dense": 2.0}, "b16": {"lut": 3.0, "dense": 2.0}}
    fake["b64"] = {"lut": 1.0, "dense": 2.0}  # a win after a loss does not extend the limit
    monkeypatch.setattr(timing_mod, "time_candidates", lambda *a, **k: fake)
    assert choose_pq_kernel(pq, torch.randn(1, 64)) == "lut" and pq.lut_batch == 4 and pq.timing == fake
    monkeypatch.undo()
    calls = []
    real = product_mod._numba_kernels
    monkeypatch.setattr(product_mod, "_numba_kernels", lambda: calls.append(1) or real())
    with torch.no_grad():
        pq(torch.randn(4, 64))
        assert len(calls) == 1
        x = torch.randn(5, 64)
        assert torch.equal(pq(x), nn.functional.linear(x, pq.weight2d(), pq.bias)) and len(calls) == 1
    with pytest.raises(ValueError, match="lut_batch"):
        ProductLinear(64, 40, sub_dim=8, bits=3, lut_batch=0)


def test_codeword_gradient_is_sum_of_subvector_gradients():
    torch.manual_seed(0)
    pq = ProductLinear(8, 20, sub_dim=4, bits=2, bias=False)
    codes = torch.randint(0, 4, (20, 2))
    pq.set_codes(codes, torch.randn(2, 4, 4))
    x = torch.randn(3, 8)
    pq(x).pow(2).sum().backward()
    w = pq.weight2d().detach().clone().requires_grad_(True)
    nn.functional.linear(x, w).pow(2).sum().backward()
    g = w.grad.view(20, 2, 4)
    expect = torch.zeros(2, 4, 4)
    for j in range(2):
        expect[j].index_add_(0, codes[:, j], g[:, j])
    torch.testing.assert_close(pq.codebooks.grad, expect)


def test_small_or_indivisible_layers_are_skipped_with_warning(tmp_path):
    model = ts.create_model("lenet5")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ts.compress_(model, PQ(sub_dim=4, bits=4, kernel="dense"))
    (msg,) = [str(x.message) for x in w if "skipping" in str(x.message)]  # one warning names every layer
    assert "'0' (rows=20, row length=25)" in msg  # 25 % 4 != 0
    assert "'7' (rows=10, row length=500)" in msg  # 10 rows <= 16 codewords
    assert isinstance(model[5], ProductLinear)
    ts.convert_(model)
    dense = ts.save(ts.create_model("lenet5"), tmp_path / "d.slim")
    assert ts.save(model, tmp_path / "p.slim") * 5 < dense
