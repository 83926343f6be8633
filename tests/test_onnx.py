"""ONNX export checked by a real client, ONNX Runtime: every registered method's converted form on
foreign models, and the committed artifacts on a slice of the test set."""

import copy
import warnings

import numpy as np
import pytest
import torch

import torchslim as ts
from test_zoo import CONFIGS
from torchslim.core.inputs import call

from zoo import ZOO, build, sample

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# int8: ONNX Runtime runs its own int8 kernels, which round ties their own way: the logits may move
# by one quantization step of the classifier's output (measured: exactly one step), predictions do
# not; a wrong scale or a missing Q/DQ moves them by many steps. Every other form is an exact
# expansion (binary layers included: +/-1 weights and signs), compared to float rounding.
ROUNDING = {"quant.uniform"}


def _run(path, x) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    parts = x if isinstance(x, tuple) else (x,)
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), parts)})


def _converted(method: str, name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = sample(name, 4, g)
    data = [(sample(name, 16, g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    model = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, copy.deepcopy(CONFIGS[method]), data=data, example_inputs=x))
    return model.eval(), x


@pytest.mark.parametrize("name", ["resnet18", "two_head", "two_input"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_onnx_runtime_matches_torchslim(method, name, tmp_path):
    """Catches: an export that silently differs (e.g. packed bits not expanded), a fixed batch size."""
    model, x = _converted(method, name)
    half = tuple(t[:2] for t in x) if isinstance(x, tuple) else x[:2]
    path = ts.export_onnx(model, half, tmp_path / "m.onnx")  # exported at batch 2, run at 4
    onnx.checker.check_model(onnx.load(str(path)))
    with torch.no_grad():
        ref = call(model, x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    outs = _run(path, x)
    assert len(outs) == len(ref)
    for r, o in zip(ref, outs):
        o = torch.from_numpy(o)
        assert o.shape == r.shape
        scale = float(r.abs().max())
        if method in ROUNDING:
            assert torch.equal(o.argmax(-1), r.argmax(-1))
            if r is ref[0]:  # the logits: the last int8 layer's output
                step = float([m for m in model.modules() if type(m).__name__ == "UniformLinear"][-1].act[2])
                assert float((o - r).abs().max()) <= step * (1 + 1e-4)
        else:
            torch.testing.assert_close(o, r, atol=1e-5 * max(scale, 1.0), rtol=1e-4)


def test_int8_exports_as_qdq_with_int8_weights(tmp_path):
    """The int8 model is a QuantizeLinear / DequantizeLinear graph whose weights are int8 tensors."""
    model, x = _converted("quant.uniform", "resnet18")
    graph = onnx.load(str(ts.export_onnx(model, x, tmp_path / "q.onnx"))).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    n_layers = sum(1 for m in model.modules() if type(m).__name__.startswith("Uniform"))
    assert len(int8) == n_layers


def test_binary_weights_export_right_after_load(tmp_path):
    """A BWN file exported straight after ``load`` (bits not yet expanded by a forward) is right."""
    model, x = _converted("binary.bwn", "resnet18")
    ts.save(model, tmp_path / "b.slim")
    fresh = ts.load(tmp_path / "b.slim", model=ZOO["resnet18"]())
    path = ts.export_onnx(fresh, x, tmp_path / "b.onnx")
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(torch.from_numpy(_run(path, x)[0]), ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)


def test_cli_export(tmp_path):
    from torchslim.cli import main

    assert main(["export", "benchmarks/artifacts/lenet300_100_svd.slim", "-o", str(tmp_path / "s.onnx")]) == 0
    x = torch.randn(3, 1, 28, 28)
    ref = ts.load("benchmarks/artifacts/lenet300_100_svd.slim")(x).detach()
    torch.testing.assert_close(torch.from_numpy(_run(tmp_path / "s.onnx", x)[0]), ref, atol=1e-4, rtol=1e-4)


def test_int8_bias_fits_int32_codes_in_onnx_runtime(tmp_path):
    """Catches: input scales so small that a bias does not fit int32 codes of scale s_in * s_w, which
    ONNX Runtime's int8 kernels saturate (a random-init googlenet's classifier: activations of 1e-11,
    every output 0 in ONNX Runtime, 100 % off)."""
    from torchslim.quant import Uniform

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 10)
    ).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-10)  # the classifier sees activations of ~1e-11
        model[0].bias.zero_()
        model[3].bias.uniform_(-0.1, 0.1)
    x = torch.randn(4, 3, 8, 8)
    data = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long))]
    ts.convert_(ts.compress_(model, Uniform(), data=data, example_inputs=x))
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(_run(ts.export_onnx(model, x, tmp_path / "q.onnx"), x)[0])
    step = float(model[3].act[2])
    assert float((got - ref).abs().max()) <= step * (1 + 1e-4)


@pytest.mark.parametrize(
    "name", ["lenet5_deep_compression", "lenet5_magnitude", "vgg_small_kmeans4", "vgg_small_xnor", "vgg_small_bnn"]
)
def test_compressed_artifacts_export_near_their_slim_size(name, tmp_path):
    """Codebook, sparse and binary weights stay compact in ONNX (Gather of packed codes, Scatter of
    sparse values, packed sign bits), and ONNX Runtime computes what torch does. Catches: a layer
    exported as its dense expansion (Deep Compression LeNet-5 was 1,725,610 bytes, 45x its .slim),
    the exporter folding the compact subgraph back into a dense constant."""
    from pathlib import Path

    art = Path(__file__).resolve().parent.parent / "benchmarks" / "artifacts" / f"{name}.slim"
    model = ts.load(art)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    assert path.stat().st_size <= 3 * art.stat().st_size, (path.stat().st_size, art.stat().st_size)
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(_run(path, x)[0])
    torch.testing.assert_close(got, ref, atol=1e-5 * max(float(ref.abs().max()), 1.0), rtol=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_codes_unpack_in_the_graph_as_in_the_runtime(bits):
    """Catches: a wrong shift or modulus in the graph's unpacking (ops ONNX opset 17 has)."""
    from torchslim.runtime.codebook import unpack_bits
    from torchslim.runtime.compact import graph_codes, unpack_in_graph

    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits))
    stream, width = graph_codes(codes, bits)
    assert width == (bits if bits in (1, 2, 4, 8) else 8)
    assert stream.numel() == (1001 * width + 7) // 8
    assert torch.equal(unpack_in_graph(stream, width, 1001), codes)
    assert torch.equal(unpack_bits(stream, width, 1001), codes)


@pytest.mark.parametrize("method", ["quant.pq", "quant.qcnn"])
def test_product_quantized_layers_export_as_codes_and_codebooks(method, tmp_path):
    """Catches: PQ / Q-CNN layers exported as their dense expansion (vgg_small: a 2.3 MB ONNX file for
    a 356 kB .slim), and codewords gathered from the wrong subspace's codebook (offsets)."""
    from torchslim.core.config import MethodConfig

    torch.manual_seed(0)
    model = ts.create_model("vgg_small").eval()
    data = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, MethodConfig.from_dict({"method": method}), data=data))
    slim = ts.save(model, tmp_path / "m.slim")
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    path = ts.export_onnx(model, x, tmp_path / "m.onnx")
    assert path.stat().st_size <= 1.3 * slim, (path.stat().st_size, slim)
    with torch.no_grad():
        ref = model(x)
    got = torch.from_numpy(_run(path, x)[0])
    torch.testing.assert_close(got, ref, atol=1e-5 * max(float(ref.abs().max()), 1.0), rtol=1e-4)
