"""Failure classes the real-architecture sweep (tests/foreign.py) found, each pinned on a small model
written here so that it runs without timm: the sweep's CI subset (tests/test_foreign.py) checks the
same classes on the real architectures."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.binary import BNN, XNOR
from torchslim.core.inputs import call
from torchslim.prune import Filters, GroupLasso, Magnitude
from torchslim.quant import PQ


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: a BatchNorm subclass that also applies an activation."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: LayerNorm over the channels of an NCHW map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _net(norm=BatchNormAct) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        norm(16),
        nn.Conv2d(16, 16, 3, padding=1),
        norm(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


@pytest.mark.parametrize("norm", [BatchNormAct, LayerNorm2d])
def test_pruned_norm_subclasses_reload_onto_a_fresh_instance(norm, tmp_path):
    """Catches: a reload that cannot resize norm subclasses the spec does not name (timm's
    BatchNormAct2d / LayerNorm2d: 'size mismatch for bn1.weight'), an error that hides the cause."""
    model, x = _net(norm), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, Filters(ratio=0.5), example_inputs=x))
    assert model[1].weight.shape[0] == 8
    ts.save(model, tmp_path / "m.slim")
    loaded = ts.load(tmp_path / "m.slim", model=_net(norm))
    assert torch.equal(loaded(x), model(x))
    assert tuple(loaded[1].weight.shape) == (8,) and (getattr(loaded[1], "num_features", 8) == 8)


def test_resize_on_load_refuses_what_is_not_a_channel_count():
    """Only channel counts are resized from a file: a kernel size, or a matrix of a module without a
    resize rule, is a mismatch reported with both shapes (a module's own per-channel vector, such as
    ConvNeXt's layer scale, follows the file). Catches: a 5x5 conv silently given a file's 3x3
    weights, any module's parameters reshaped from a file."""
    from torchslim.export.spec import resize_to

    with pytest.raises(ValueError, match=r"weight: file \[16, 8, 3, 3\] vs model \[16, 16, 5, 5\]"):
        resize_to(nn.Conv2d(16, 16, 5), {"weight": torch.zeros(16, 8, 3, 3), "bias": torch.zeros(16)})

    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Parameter(torch.ones(16))  # a per-channel vector (layer scale) follows the file
            self.m = nn.Parameter(torch.ones(4, 16))  # a matrix of a module without a rule does not

    gain = Gain()
    resize_to(gain, {"g": torch.ones(8), "m": torch.ones(4, 16)})
    assert gain.g.shape == (8,)
    with pytest.raises(ValueError, match=r"m: file \[4, 8\] vs model \[4, 16\]"):
        resize_to(Gain(), {"g": torch.ones(16), "m": torch.ones(4, 8)})


def test_filters_on_a_layernorm_model_says_the_converted_model_differs():
    """LayerNorm statistics span the channels: masking a channel is not removing it. Catches: the
    converted model silently different from the prepared one (convnext_atto: 16 % of the output)."""
    with pytest.warns(UserWarning, match="differs from the masked one"):
        ts.compress_(_net(LayerNorm2d), Filters(ratio=0.5), example_inputs=torch.randn(2, 3, 8, 8))


class Heads(nn.Module):
    """Attention-like: a Linear whose outputs are reshaped into (heads, head_dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 10)

    def forward(self, x):  # x: (batch, tokens, 16)
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 8).unbind(2)
        att = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.proj(att.reshape(x.shape[0], x.shape[1], 16)).mean(1)


@pytest.mark.parametrize("config", [Filters(ratio=0.3), GroupLasso(ratio=0.3)])
def test_structured_pruning_refuses_channels_reshaped_into_heads(config):
    """Catches: a pruned attention model that cannot run (ViT: shape '[2, 5, 3, 3, 64]' is invalid)."""
    with pytest.raises(ValueError, match="does not run like the original"):
        ts.compress_(Heads().eval(), config, example_inputs=torch.randn(2, 5, 16))


@pytest.mark.parametrize("config", [BNN(), XNOR()])
def test_binary_linear_on_token_shaped_inputs(config, tmp_path):
    """A Linear fed (batch, tokens, features), as in every ViT block: every token is a row. Catches:
    scales broadcast along dim 1 (crash: 'size of tensor a (5) must match ... (576)'), XNOR's row
    scale taken over the tokens, the packed layer or its ONNX form not flattening the tokens."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.randn(3, 5, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.compress_(model, config, example_inputs=x)
    with torch.no_grad():
        prepared = model(x)
        rows = model(x.reshape(15, 16)).reshape(3, 5, 10)
        assert torch.equal(prepared, rows)
        converted = ts.convert_(model)(x)
    assert converted.shape == (3, 5, 10)
    torch.testing.assert_close(converted, prepared, rtol=1e-5, atol=1e-5)
    from torchslim.export.onnx import lowered_model

    with torch.no_grad():
        torch.testing.assert_close(lowered_model(model, x)(x), converted, rtol=1e-5, atol=1e-5)


def test_binary_lowering_keeps_integer_sums_exact_for_onnx_runtime(tmp_path):
    """+/-1 sums are integers and the next sign must see a 0 as 0: the lowered graph rounds them
    before the scale, so ONNX Runtime cannot fold the scale into the weights (Conv + Mul fusion) and
    turn a 0 into +/-1e-8. Catches: the Round dropped (BNN mobilenetv2: 28 % off in ORT)."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 2),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 2),
        nn.Flatten(),
        nn.LazyLinear(10),
    )
    x = torch.randn(4, 3, 6, 6)
    model(x)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, BNN(), example_inputs=x))
    path = ts.export_onnx(model, x, tmp_path / "b.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    # this small model's sums happen to stay exact through ORT's fusion (the flip needs a real net:
    # the binary.bnn cells of tests/test_foreign.py), so the graph's contract is checked too: every
    # product of binary inputs is rounded before anything multiplies it
    from torchslim.runtime.binary import _PackedBase

    graph = pytest.importorskip("onnx").load(str(path)).graph
    binary_inputs = sum(1 for m in model.modules() if isinstance(m, _PackedBase) and m.binary_input)
    rounded = [n for n in graph.node if n.op_type == "Round"]
    assert binary_inputs > 0 and len(rounded) == binary_inputs
    producers = {o: n for n in graph.node for o in n.output}
    assert all(producers[r.input[0]].op_type in ("Conv", "Gemm", "MatMul") for r in rounded)


@pytest.mark.parametrize("config", [Filters(ratio=0.3), GroupLasso(ratio=0.3)])
def test_structured_pruning_refuses_layers_the_example_input_does_not_reach(config):
    """An auxiliary head that runs only in training is not in the eval-mode channel graph. Catches:
    its input channels pruned away without it (googlenet: the first train-mode forward crashed with
    'expected input[2, 256, 4, 4] to have 512 channels')."""

    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.aux = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 4, 1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y = self.a(x)
            out = self.fc(self.b(y).mean((2, 3)))
            return (out, self.aux(y)) if self.training else out

    with pytest.raises(ValueError, match=r"\['aux'\] are not reached"):
        ts.compress_(WithAux().eval(), config, example_inputs=torch.randn(2, 3, 8, 8))


def test_magnitude_pruned_model_with_an_unreached_branch_deep_copies():
    """torch's pruning computes ``weight`` with autograd at apply time; a layer no forward reaches
    (googlenet's train-only aux heads) kept it. Catches: deepcopy of the prepared model failing."""

    class Aux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.aux = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            return (self.main(x), self.aux(x)) if self.training else self.main(x)

    model = Aux().eval()
    ts.compress_(model, Magnitude(sparsity=0.5, kernel="dense"), example_inputs=torch.randn(2, 8))
    twin = copy.deepcopy(model)
    assert torch.equal(call(twin, torch.ones(1, 8)), call(model, torch.ones(1, 8)))


def test_a_prepared_model_with_non_finite_outputs_is_reported():
    """Catches: BinaryConnect turning densenet121's outputs into NaN without a word."""

    class Blowup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * torch.exp(self.fc.weight.abs().sum() * 100)

    with pytest.warns(UserWarning, match="not finite"):
        ts.compress_(Blowup().eval(), Magnitude(sparsity=0.5, kernel="dense"), example_inputs=torch.randn(2, 4))


@pytest.mark.parametrize("scale, warns", [(3e34, False), (4e34, True)])
def test_outputs_near_the_float_range_end_are_reported(scale, warns):
    """Catches: Q-CNN on a random-init inception_v3 reaching 2.7e38 (finite) with 2 threads and inf
    with 1: the check passed by luck. Bound: finfo(float32).max / 1e4 = 3.4028e34, tested either side."""

    class Huge(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.full((x.shape[0], 1), scale) + 0 * self.fc(x).sum()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ts.compress_(Huge().eval(), Magnitude(sparsity=0.5, kernel="dense"), example_inputs=torch.randn(2, 4))
    assert any("not finite" in str(w.message) for w in caught) == warns


class _ReadsItsLayer(nn.Module):
    """timm's edgenext PositionalEncodingFourier in miniature: the parent takes device and dtype from
    ``self.proj.weight`` before calling the layer on an input of its own making."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1))
        self.proj = nn.Conv2d(4, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        pos = torch.ones(1, 4, *x.shape[-2:], device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        return self.head((self.body(x) + self.proj(pos)).mean((2, 3)))


@pytest.mark.parametrize("config", [XNOR(), Magnitude(sparsity=0.5), PQ()])
def test_layers_whose_weight_the_model_reads_are_kept_with_a_warning(config):
    """Catches: replacing a layer whose ``.weight`` the parent's forward reads (timm's edgenext):
    the converted model crashed with "'PackedBinaryConv2d' object has no attribute 'weight'"."""
    model, x = _ReadsItsLayer().eval(), torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"reads the weights of \['proj'\]"):
        ts.compress_(model, config, example_inputs=x)
    ts.convert_(model)
    assert type(model.proj) is nn.Conv2d and type(model.body[1]) is not nn.Conv2d
    assert torch.isfinite(model(x)).all()


class _ChannelsLastMlp(nn.Module):
    """timm's ConvNeXt / edgenext MLP: Linear layers on (batch, H, W, C) maps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 64), nn.Linear(64, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.permute(0, 2, 3, 1)))).mean((1, 2))


def test_qcnn_on_linear_layers_fed_channels_last_maps():
    """Catches: Q-CNN's output rows of a Linear with a 4-D output taken as an NCHW conv map (its bias
    subtracted over H: 'The size of tensor a (16) must match the size of tensor b (96)')."""
    from torchslim.quant import QCNN

    model, x = _ChannelsLastMlp().eval(), torch.randn(4, 8, 6, 6)
    ref = model(x)
    ts.compress_(model, QCNN(sub_dim=4, bits=4, iters=1), [(x, torch.zeros(4))], example_inputs=x)
    ts.convert_(model)
    err = (model(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.5, err
