"""quant.pq: product quantization and its lookup-table kernel."""

import warnings

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.quant import PQ, pq_kmeans
from torchslim.runtime.product import ProductLinear, choose_pq_kernel

from contract import MethodContract


class TestPQContract(MethodContract):
    config = PQ(sub_dim=2, bits=5, kernel="dense")
    bad_configs = (lambda: PQ(bits=0), lambda: PQ(sub_dim=0), lambda: PQ(kernel="gpu"), lambda: PQ(iters=0))
    model_names = ("lenet5", "vgg_small")
    prepare_rel_error = 0.6


def test_pq_kmeans_reconstructs_clustered_rows():
    torch.manual_seed(0)
    centers = torch.randn(4, 8)
    w = centers[torch.randint(0, 4, (64,))] + 0.001 * torch.randn(64, 8)
    codes, books = pq_kmeans(w, sub_dim=4, k=4)
    assert codes.shape == (64, 2) and books.shape == (2, 4, 4) and codes.max() < 4
    rebuilt = torch.cat([books[j, codes[:, j]] for j in range(2)], dim=1)
    assert (rebuilt - w).abs().max() < 0.01


def test_lut_kernel_equals_dense_kernel():
    torch.manual_seed(0)
    lin = nn.Linear(64, 40)
    pq = ProductLinear(64, 40, sub_dim=8, bits=3)
    pq.set_codes(*pq_kmeans(lin.weight, 8, 8))
    pq.bias.data.copy_(lin.bias.data)
    x = torch.randn(5, 64)
    with torch.no_grad():
        pq.kernel = "dense"
        dense = pq(x)
        pq.kernel = "lut"
        torch.testing.assert_close(pq(x), dense, atol=1e-5, rtol=1e-4)
    choose_pq_kernel(pq, x[:1], batches=(1, 4), min_run_time=0.01)  # the rule: tests/test_runtime.py
    assert set(pq.timing) == {"b1", "b4"} and all(set(t) == {"lut", "dense"} for t in pq.timing.values())


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
