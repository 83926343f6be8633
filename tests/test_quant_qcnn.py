"""quant.qcnn: output-error product quantization with error correction."""

import pytest
import torch

import torchslim as ts
from torchslim.quant import QCNN, pq_kmeans
from torchslim.quant.qcnn import refine

from contract import MethodContract


class TestQCNNContract(MethodContract):
    config = QCNN(sub_dim=2, bits=5, iters=2, kernel="dense", max_rows=2048)
    bad_configs = (
        lambda: QCNN(bits=9),
        lambda: QCNN(max_rows=10),
        lambda: QCNN(kernel="x"),
        lambda: QCNN(calib_batches=0),
    )
    model_names = ("lenet5", "vgg_small")
    prepare_rel_error = 0.6


def test_refine_lowers_output_error_and_never_raises_it():
    torch.manual_seed(0)
    w = torch.randn(48, 16)
    x = torch.randn(500, 16) * torch.linspace(0.1, 3, 16)  # anisotropic inputs: weight error != output error
    y = x @ w.t()
    codes, books = pq_kmeans(w, 4, 8)
    errors = []
    for iters in (0, 1, 3):
        c, b = refine(codes, books, x, y, iters) if iters else (codes, books)
        wq = torch.cat([b[j, c[:, j]] for j in range(4)], dim=1)
        errors.append(float((y - x @ wq.t()).pow(2).mean()))
    assert errors[1] < errors[0] and errors[2] <= errors[1] + 1e-6  # each exact sub-space step can only help


def test_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration data"):
        ts.compress_(ts.create_model("lenet5"), QCNN())
