"""Binary and low-bit networks: quantizer gradients, packing, exact xnor-popcount products."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import torchslim as ts
from references import binary_reference
from torchslim.binary import BNN, BWN, XNOR, BinaryConnect, KBit
from torchslim.binary.quantizers import bwn_scale, get_quantizer
from torchslim.runtime import binary as rb

from contract import MethodContract


class _BinaryContract(MethodContract):
    """A binarized untrained net is far from the float one by design: prepare is checked against
    the paper's formulas recomputed in plain torch (tests/references.py)."""

    model_names = ("vgg_small", "resnet20")
    convert_atol = 1e-4

    def prepare_reference(self, original, prepared):
        return binary_reference(original, prepared)


class TestBNNContract(_BinaryContract):
    config = BNN()


class TestXNORContract(_BinaryContract):
    config = XNOR()


class TestBiRealBNNContract(_BinaryContract):
    config = BNN(shortcut=True, threshold=True, learned_scale=True)


class TestBiRealXNORContract(_BinaryContract):
    config = XNOR(shortcut=True, threshold=True)


class TestBWNContract(_BinaryContract):
    config = BWN()


class TestConnectContract(_BinaryContract):
    config = BinaryConnect()
    # unscaled +/-1 weights on an untrained net: logits reach 4e7, so float32 rounding of the folded
    # BatchNorm moves them by ~40, 1e-6 of the largest: the bound is float32 rounding over the
    # network's depth, 1e-5 of the output scale (resnet20's untrained residual sums reach 1e19, so
    # the second model is lenet5)
    convert_atol, convert_rtol, convert_scale_rtol = 0.0, 0.0, 1e-5
    model_names = ("vgg_small", "lenet5")


class TestKBitContract(_BinaryContract):
    config = KBit(weight_bits=2, act_bits=2)
    bad_configs = (lambda: KBit(weight_bits=0), lambda: KBit(act_bits=9))


def test_sign_ste_gradient_matches_numpy_reference():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    g = torch.arange(7, dtype=torch.float32)
    q = get_quantizer("ste_sign")(x)
    q.backward(g)
    xn = x.detach().numpy()
    np.testing.assert_array_equal(q.detach().numpy(), np.where(xn < 0, -1.0, 1.0))
    np.testing.assert_array_equal(x.grad.numpy(), g.numpy() * (np.abs(xn) <= 1))


def test_stochastic_sign_mean_is_hard_sigmoid():
    torch.manual_seed(0)
    x = torch.linspace(-1.5, 1.5, 13).repeat(20000, 1)
    mean_plus = (get_quantizer("stochastic_sign")(x) > 0).float().mean(0)
    expected = torch.clamp((x[0] + 1) / 2, 0, 1)
    assert (mean_plus - expected).abs().max() < 0.015  # 20000 draws: 4 sigma ~ 0.014


def test_bwn_alpha_is_per_filter_mean_abs():
    w = torch.randn(6, 3, 3, 3)
    torch.testing.assert_close(bwn_scale(w).flatten(), w.abs().mean(dim=(1, 2, 3)))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), c=st.integers(1, 200), seed=st.integers(0, 1000))
def test_pack_unpack_lossless(rows, c, seed):
    x = torch.randn(rows, c, generator=torch.Generator().manual_seed(seed))
    words = rb.pack_signs(x)
    assert words.shape == (rows, (c + 63) // 64)
    assert torch.equal(rb.unpack_signs(words, c), torch.where(x < 0, -1.0, 1.0))
    assert torch.equal(rb.pack_rows(x), words)  # numba packer agrees


@pytest.mark.parametrize("c", [1, 63, 64, 65, 130])
def test_xnor_popcount_linear_exact(c):
    torch.manual_seed(c)
    x, w = torch.randn(7, c), torch.randn(5, c)
    layer = rb.PackedBinaryLinear(c, 5)
    layer.set_weight(w.sign(), torch.ones(5), torch.zeros(5))
    ref = x.sign() @ w.sign().t()
    assert torch.equal(layer(x), ref)
    a, b = rb.pack_signs(x), rb.pack_signs(w)
    assert torch.equal(rb.popcount_xor(a, b), rb.popcount_xor_reference(a, b))


@pytest.mark.parametrize(
    "c,k,stride,pad",
    [
        (3, 3, 1, 1),
        (20, 3, 2, 1),
        (32, 3, 1, 1),
        (33, 3, 1, 1),
        (64, 3, 2, 1),
        (70, 3, 1, 0),
        (130, 5, 1, 2),
        (8, 1, 1, 0),
    ],
)
def test_xnor_popcount_conv_exact_with_padding(c, k, stride, pad):
    """37 outputs: two register tiles of 16 and a remainder, with 32-bit words (<= 32 channels) and
    64-bit ones. Catches: a tile's lanes stored at the wrong outputs, a 32-bit word's popcount read
    as 64 bits (the high half of the weight words), the remainder loop skipped, a later chunk of
    patch rows (130 channels, 5x5: 75 rows, chunks of 31) overwriting the earlier chunks' counts."""
    torch.manual_seed(c + k)
    x, w = torch.randn(2, c, 9, 7), torch.randn(37, c, k, k)
    layer = rb.PackedBinaryConv2d(c, 37, [k, k], [stride, stride], [pad, pad])
    layer.set_weight(w.sign(), torch.ones(37), torch.zeros(37))
    ref = F.conv2d(torch.where(x < 0, -1.0, 1.0), w.sign(), stride=stride, padding=pad)  # padded zeros are 0
    assert torch.equal(layer(x), ref)
    assert torch.equal(layer(x.contiguous(memory_format=torch.channels_last)), ref)


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 70),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 3),
    pw=st.integers(0, 3),
    h=st.integers(4, 9),
    w=st.integers(4, 9),
    seed=st.integers(0, 99),
    numba=st.booleans(),
)
def test_xnor_conv_exact_for_asymmetric_kernel_stride_padding(c, kh, kw, sh, sw, ph, pw, h, w, seed, numba):
    """Catches: height and width padding (or stride, kernel size) swapped in the padding
    correction or the patch gather; square shapes cannot tell them apart; the channels-last path
    (NHWC packing, NHWC output) reading a pixel's channels or writing its outputs at wrong offsets."""
    g = torch.Generator().manual_seed(seed)
    x, wt = torch.randn(2, c, h, w, generator=g), torch.randn(3, c, kh, kw, generator=g)
    layer = rb.PackedBinaryConv2d(c, 3, [kh, kw], [sh, sw], [ph, pw])
    layer.set_weight(wt.sign(), torch.ones(3), torch.zeros(3))
    ref = F.conv2d(torch.where(x < 0, -1.0, 1.0), wt.sign(), stride=(sh, sw), padding=(ph, pw))
    saved = rb._numba_kernels()  # built before saving: a None put back would rebuild them every example
    try:
        if not numba:
            rb._NUMBA = False  # the pure-torch reference path
        out = layer(x)
        out_cl = layer(x.contiguous(memory_format=torch.channels_last))
    finally:
        rb._NUMBA = saved
    assert torch.equal(out, ref) and torch.equal(out_cl, ref)


def test_design_rule_warnings():
    with pytest.warns(UserWarning, match="1x1"):
        ts.compress_(ts.create_model("resnet20"), BNN())
    with pytest.warns(UserWarning, match="first or last"):
        ts.compress_(ts.create_model("vgg_small"), XNOR(layers=("0.0", "0.3")))
    with pytest.warns(UserWarning, match="act_bits=6"):
        ts.compress_(ts.create_model("vgg_small"), KBit(act_bits=6))


def test_defaults_keep_first_and_last_float_and_drop_feeding_relus():
    model = ts.compress_(ts.create_model("vgg_small"), BNN())
    assert type(model[0][0]) is torch.nn.Conv2d and type(model[2][3]) is torch.nn.Linear
    # a ReLU that feeds a binary-input layer must go (else the sign it feeds is always +1); only the
    # one before the float classifier stays
    relus = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert relus == ["2.1"]


def test_clip_callback_and_packed_file_is_small(tmp_path):
    from torchslim.api import method_callbacks

    model = ts.compress_(ts.create_model("vgg_small"), XNOR())
    with torch.no_grad():
        model[0][3].weight.mul_(5)
    for cb in method_callbacks(model):
        cb.after_step(model, 0)
    assert model[0][3].weight.abs().max() <= 1
    ts.save(ts.create_model("vgg_small"), tmp_path / "f.slim")
    ts.save(ts.convert_(model.eval()), tmp_path / "b.slim")
    assert (tmp_path / "f.slim").stat().st_size >= 20 * (tmp_path / "b.slim").stat().st_size


def test_reference_path_without_numba(monkeypatch):
    monkeypatch.setattr(rb, "_NUMBA", False)
    test_xnor_popcount_conv_exact_with_padding(70, 3, 1, 1)
    test_xnor_popcount_linear_exact(65)


def test_packed_layers_count_their_macs():
    from torchslim.measure import count_macs

    model = ts.create_model("vgg_small")
    dense = count_macs(model, (1, 28, 28))
    ts.convert_(ts.compress_(model, XNOR()).eval())
    assert count_macs(model, (1, 28, 28)) == dense


class _SharedReluNet(torch.nn.Module):
    """A user's net with one ReLU module called five times (as torchvision's BasicBlock does), a
    stride-2 conv on odd maps and a conv whose channels do not allow a shortcut."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c0, self.b0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.fc1, self.fc, self.r = nn.Linear(12 * 5 * 5, 20), nn.Linear(20, 3), nn.ReLU()

    def forward(self, x):
        x = self.r(self.b0(self.c0(x)))
        x = self.r(self.b1(self.c1(x)))
        x = self.r(self.b2(self.c2(x)))
        x = self.r(self.b3(self.c3(x)))
        return self.fc(self.r(self.fc1(x.flatten(1))))


def _bireal(cfg, seed=0):
    torch.manual_seed(seed)
    model, x = _SharedReluNet(), torch.randn(6, 1, 9, 9)
    with pytest.warns(UserWarning, match=r"no real-valued shortcut for \['c3'\]"):
        ts.compress_(model, cfg, example_inputs=x[:1])
    model.train()
    for _ in range(3):  # BN running statistics away from their init
        model(torch.randn(8, 1, 9, 9))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("threshold"):
                p.normal_(0, 0.3)
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    return model.eval(), x


@pytest.mark.parametrize(
    "cfg", [BNN(shortcut=True, threshold=True, learned_scale=True), XNOR(shortcut=True, threshold=True)]
)
def test_bireal_shortcut_and_threshold_pack_exactly_on_a_user_model(cfg, tmp_path):
    """Catches: a packed layer that drops the threshold or the shortcut, a shortcut with the wrong
    spatial size or channel order, a BatchNorm folded into the sum instead of the conv, a file
    or ONNX graph that loses either."""
    model, x = _bireal(cfg)
    assert isinstance(model.b1, torch.nn.Identity) and isinstance(model.b3, torch.nn.BatchNorm2d)
    with torch.no_grad():
        ref, fake = binary_reference(model, model)(x), model(x)
    assert torch.allclose(fake, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    ts.convert_(model)
    assert model.c2.shortcut and not model.c3.shortcut and model.fc1.threshold is not None
    with torch.no_grad():
        out = model(x)
    # BN folded into the scale: float32 rounding of the fold only
    assert torch.allclose(out, fake, rtol=0, atol=1e-5 * float(fake.abs().max()))
    ts.save(model, tmp_path / "m.slim")
    with torch.no_grad():
        assert torch.equal(ts.load(tmp_path / "m.slim", model=_SharedReluNet())(x), out)
    ort = pytest.importorskip("onnxruntime")
    path = ts.export_onnx(model, x[:2], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, out.numpy(), rtol=0, atol=1e-5 * float(out.abs().max()))


def test_learned_threshold_gradient_is_the_straight_through_estimator():
    """d L / d t_c = -sum_b 1[|x_bc - t_c| <= 1] (g W)_bc for y = sign(x - t) W^T (BNN, no scaling).
    Catches: a threshold outside the autograd graph, a sign flipped, the STE window at x, not x - t."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 2))
    ts.compress_(lin, BNN(threshold=True))
    layer = lin[1]
    with torch.no_grad():
        layer.threshold.normal_(0, 0.5)
    x, g = torch.randn(7, 6) * 1.5, torch.randn(7, 5)
    (layer(x) * g).sum().backward()
    w = torch.where(layer.weight < 0, -1.0, 1.0)
    inside = ((x - layer.threshold).abs() <= 1).float()
    expected = -(inside * (g @ w)).sum(0)
    assert torch.allclose(layer.threshold.grad, expected, rtol=1e-6, atol=1e-6)


def test_shared_relu_module_is_kept_and_reported_unless_shortcuts_remove_it():
    """Catches: a ReLU module removed because one of its calls feeds a binary layer while another
    feeds a float one (the float path silently loses its nonlinearity), and a kept one not reported."""
    model = _SharedReluNet()
    with pytest.warns(UserWarning, match=r"ReLU modules \{'r'"):
        ts.compress_(model, BNN(), example_inputs=torch.randn(1, 1, 9, 9))
    assert isinstance(model.r, torch.nn.ReLU)
    model, _ = _bireal(BNN(shortcut=True))
    assert isinstance(model.r, torch.nn.Identity)


@pytest.mark.parametrize("bad", [{"shortcut": 1}, {"threshold": "yes"}, {"learned_scale": None}])
def test_binary_training_options_are_booleans(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BNN(**bad)


@pytest.mark.parametrize("c", [24, 64, 70, 130])
def test_channels_last_binary_conv_with_every_option(c):
    """The NHWC path with XNOR's K, a learned threshold and a Bi-Real shortcut (channel copies and a
    strided window mean) against the NCHW path: bit-equal where K's channel sum has one order (one
    word), else within the float rounding of that sum. Catches: the shortcut read in NCHW order from
    an NHWC tensor, K's channel sums taken per word instead of over all channels, the threshold
    skipped in the NHWC packer, the output returned NCHW-strided."""
    torch.manual_seed(c)
    layer = rb.PackedBinaryConv2d(c, 2 * c, [3, 3], [2, 2], [1, 1], input_scaling=True, threshold=True, shortcut=True)
    layer.set_weight(torch.randn(2 * c, c, 3, 3), torch.rand(2 * c), torch.randn(2 * c))
    layer.threshold.normal_()
    x = torch.randn(3, c, 9, 11)
    with torch.no_grad():
        want, got = layer(x), layer(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    if c <= 64:
        assert torch.equal(got, want)
    else:  # K = box mean of (sum_c |x - t|) / C: the sum's order differs, relative error <= c * 2^-24
        assert torch.allclose(got, want, rtol=0, atol=4 * c * 2.0**-24 * float(want.abs().max()))


@pytest.mark.parametrize("channels_last", [False, True])
def test_xnor_scale_map_of_the_kernels_equals_the_reference(channels_last):
    """XNOR-Net's K in the numba path (channel sums while packing, then ``k_map``'s window means)
    against the pure-torch path (``input_scale_map``: mean of |x| over channels, then a box conv),
    for an asymmetric kernel, stride and padding and two words of channels. Only the summation
    order differs: K is a sum of c + kh kw rounded terms, so each output ``dot * K`` (|dot| <= n_bits)
    moves by at most n_bits * K * (c + kh kw + 4) * 2^-24. Catches: a window row or column offset
    without its padding, the window's mean not divided by its size, the channel mean not divided
    by c, a second word's sums dropped."""
    torch.manual_seed(0)
    c = 70
    layer = rb.PackedBinaryConv2d(c, 5, [3, 2], [2, 1], [1, 0], input_scaling=True)
    layer.set_weight(torch.randn(5, c, 3, 2), torch.ones(5), torch.zeros(5))
    x = torch.randn(2, c, 9, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    saved = rb._numba_kernels()
    assert saved, "numba is a test dependency"
    try:
        with torch.no_grad():
            got = layer(x)
            rb._NUMBA = False
            want = layer(x)
    finally:
        rb._NUMBA = saved
    k_max = float(rb.input_scale_map(x, [3, 2], [2, 1], [1, 0]).max())
    bound = layer.n_bits * k_max * (c + 6 + 4) * 2.0**-24
    assert (got - want).abs().max() <= bound


_CACHE_PROBE = """
import torch
import torchslim.runtime.binary as rb
layer = rb.PackedBinaryConv2d(20, 16, [3, 3], [1, 1], [1, 1], input_scaling=True, threshold=True)
layer(torch.randn(2, 20, 6, 6).contiguous(memory_format=torch.channels_last))
k = rb._numba_kernels()
misses = sum(sum(f.stats.cache_misses.values()) for f in k.values())
print(misses, sum(sum(f.stats.cache_hits.values()) for f in k.values()))
"""


def test_binary_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """A second process loads the compiled binary kernels instead of compiling them again. Catches:
    kernels whose cache key changes in every process (jitted helpers held in a closure: numba keys a
    function by its closure's pickled contents), which cost 8-14 s on every first binary forward."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def misses_hits() -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True, check=True)
        misses, hits = out.stdout.split()
        return int(misses), int(hits)

    assert misses_hits()[0] > 0  # an empty cache compiles: the check below can fail
    misses, hits = misses_hits()
    assert misses == 0 and hits > 0


def test_binary_and_sparse_kernels_are_exact_as_compiled_for_an_avx2_only_cpu(tmp_path):
    """The kernels' exactness tests again in a process where numba compiles for Haswell (AVX2, scalar
    popcnt, no VPOPCNTDQ) and oneDNN is capped at AVX2, as on the AVX2-only CPUs users have. Catches:
    a kernel path that only the AVX-512 machines ran (the suite once failed only on an AVX2-only CPU)."""
    from torchslim.measure.latency import AVX2_ONLY_ENV

    env = {**os.environ, **AVX2_ONLY_ENV, "NUMBA_CACHE_DIR": str(tmp_path)}
    tests = ["tests/test_binary.py", "tests/test_runtime.py"]
    pick = "popcount or xnor_conv_exact or channels_last_binary or scale_map or sparse_conv or strided_max_pool"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *tests, "-k", pick],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and " deselected" in out.stdout


@pytest.mark.parametrize("artifact", ["vgg_small_xnor.slim", "vgg_small_bnn.slim"])
def test_torch_export_takes_packed_binary_layers_as_custom_ops(artifact, tmp_path):
    """``torch.export`` (dynamic batch) of a packed binary model: every packed layer is one
    ``torchslim::runtime_layer`` node running the packed kernels, the program equals the model bit
    for bit at another batch size, survives ``torch.export.save`` / ``load``, and dynamo sees no graph
    break. Catches: the numba kernels reached with fake tensors (export failed on data pointers), a
    fake kernel with the wrong output shape, an op that is not the layer's own forward."""
    import torch._dynamo

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "artifacts"
    model = ts.load(root / artifact).eval()
    packed = sum(isinstance(m, (rb.PackedBinaryConv2d, rb.PackedBinaryLinear)) for m in model.modules())
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),), dynamic_shapes=({0: batch},))
    ops = [n for n in ep.graph.nodes if n.target is torch.ops.torchslim.runtime_layer.default]
    assert len(ops) == packed > 0
    torch.export.save(ep, tmp_path / "m.pt2")
    again = torch.export.load(tmp_path / "m.pt2")
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ep.module()(x), ref) and torch.equal(again.module()(x), ref)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    seen = []  # the fake kernel gives each layer's real output shape (opcheck: fake vs real)
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m, i[0])))
        for m in model.modules()
        if isinstance(m, (rb.PackedBinaryConv2d, rb.PackedBinaryLinear))
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m, inp in seen:
        state = [getattr(m, n) for n in m.op_state]
        args = (inp, state, m.op_spec)
        torch.library.opcheck(torch.ops.torchslim.runtime_layer.default, args, test_utils="test_faketensor")
