"""The runtime-layer contract (runtime/base.py), driven by the runtime registry, the import
boundary of ``torchslim.runtime``, and the one kernel-choice rule on controlled timings."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from torchslim.export.spec import build_module, module_spec
from torchslim.measure import layer_table
from torchslim.runtime import (
    CodebookConv2d,
    CodebookLinear,
    KBitAct,
    PackedBinaryConv2d,
    PackedBinaryLinear,
    ProductConv2d,
    ProductLinear,
    SparseConv2d,
    SparseLinear,
    UniformConv2d,
    UniformLinear,
    runtime_layers,
)
from torchslim.runtime import product as product_mod
from torchslim.runtime import sparse as sparse_mod
from torchslim.runtime import timing as timing_mod
from torchslim.runtime.timing import pick


def _conv(groups=1):
    torch.manual_seed(0)
    c = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=groups)
    with torch.no_grad():
        c.weight.mul_(torch.rand_like(c.weight) > 0.6)
    return c


def _sparse_conv():
    return SparseConv2d.from_dense(_conv(), kernel="sparse")


def _sparse_linear():
    lin = nn.Linear(24, 10)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) > 0.7)
    return SparseLinear.from_dense(lin, kernel="sparse")


def _codebook(cls, *args):
    m = cls(*args, bits=3)
    n = math.prod(m.shape)
    m.set_codes(torch.arange(n) % 8, torch.linspace(-1, 1, 8))
    return m


def _uniform(cls, *args, **kw):
    m = cls(*args, bits=4, **kw)
    m.set_weight(torch.randn(m.shape), torch.randn(m.shape[0]))
    return m


def _product(cls, *args):
    m = cls(*args, sub_dim=4, bits=2)
    m.set_codes(torch.randint(0, 4, (m.rows, m.m)), torch.randn(m.m, 4, 4))
    return m


def _binary_conv():
    m = PackedBinaryConv2d(8, 12, [3, 3], [2, 1], [1, 0], input_scaling=True)
    m.set_weight(torch.randn(12, 8, 3, 3), torch.rand(12), torch.randn(12))
    return m


def _binary_linear():
    m = PackedBinaryLinear(70, 5, threshold=True)
    m.set_weight(torch.randn(5, 70), torch.rand(5), torch.randn(5))
    m.threshold.normal_()
    return m


CONV = [8, 12, [3, 3], [2, 2], [1, 1], [1, 1], 1]
# One example per registered runtime layer: (layer factory, input, expected (dense, effective) MACs).
# A format registered without an entry here fails test_every_runtime_layer_has_an_example.
EXAMPLES = {
    "SparseConv2d": (_sparse_conv, (2, 8, 9, 9), "sparse"),
    "SparseLinear": (_sparse_linear, (3, 24), "sparse"),
    "CodebookConv2d": (lambda: _codebook(CodebookConv2d, *CONV), (2, 8, 9, 9), "dense"),
    "CodebookLinear": (lambda: _codebook(CodebookLinear, 24, 10), (3, 24), "dense"),
    "UniformConv2d": (lambda: _uniform(UniformConv2d, *CONV), (2, 8, 9, 9), "dense"),
    "UniformLinear": (lambda: _uniform(UniformLinear, 24, 10), (3, 24), "dense"),
    "ProductConv2d": (lambda: _product(ProductConv2d, 8, 12, [2, 2], [1, 1], [0, 0], [1, 1], 1), (2, 8, 5, 5), "dense"),
    "ProductLinear": (lambda: _product(ProductLinear, 24, 10), (3, 24), "dense"),
    "PackedBinaryConv2d": (_binary_conv, (2, 8, 9, 9), "dense"),
    "PackedBinaryLinear": (_binary_linear, (3, 70), "dense"),
    "KBitAct": (lambda: KBitAct(2), (2, 3, 4, 4), "none"),
}


def test_every_runtime_layer_has_an_example():
    """Catches: a new packed format registered without going through this contract."""
    assert set(runtime_layers()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_spec_round_trip_rebuilds_an_identical_layer(name):
    """Catches: a constructor argument missing from spec_args (the rebuilt layer differs or cannot
    take the state dict), or a spec that is not JSON."""
    make, shape, _ = EXAMPLES[name]
    torch.manual_seed(1)
    layer = make().eval()
    spec = json.loads(json.dumps(module_spec(layer)))
    assert spec["type"] == name
    again = build_module(spec).eval()
    assert type(again) is type(layer)
    again.load_state_dict(layer.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(again(x), layer(x))
    assert module_spec(again) == spec


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_mac_rule_and_weight_counts(name):
    """Catches: a MAC rule that counts the wrong row length (e.g. ignores groups or the kernel
    size), effective MACs that ignore sparsity, and weight counts that report storage instead of
    logical weights."""
    make, shape, kind = EXAMPLES[name]
    layer = make().eval()
    (row,) = layer_table(nn.Sequential(layer), shape[1:])
    with torch.no_grad():
        y = layer(torch.randn(shape))
    if kind == "none":
        assert row["macs"] == row["effective_macs"] == 0 and row["params"] == 0
        return
    per_out = layer.cols if hasattr(layer, "cols") else layer.in_features
    assert row["macs"] == (y.numel() // shape[0]) * per_out
    rows = layer.rows if hasattr(layer, "rows") else layer.out_features
    bias = (
        0
        if getattr(layer, "bias", None) is None or isinstance(layer, (PackedBinaryConv2d, PackedBinaryLinear))
        else rows
    )
    assert row["params"] == rows * per_out + bias
    if kind == "sparse":
        assert row["effective_macs"] == (y.numel() // shape[0] // rows) * layer.nnz
    else:
        assert row["effective_macs"] == row["macs"]


def test_importing_the_runtime_loads_no_training_code():
    """Catches: a deploy-time import of recipe/train/data/yaml or of a method family."""
    code = (
        "import sys, torchslim.runtime, torchslim.export.spec\n"
        "bad = sorted(m for m in sys.modules if m == 'yaml' or m.split('.')[:2] in "
        "[['torchslim', f] for f in ('train', 'recipe', 'data', 'prune', 'quant', 'lowrank', 'binary', "
        "'distill', 'cli')])\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "timing, expected",
    [
        ({"b1": {"sparse": 1.0, "dense": 2.0}, "b256": {"sparse": 10.0, "dense": 20.0}}, "sparse"),
        ({"b1": {"sparse": 1.0, "dense": 2.0}, "b256": {"sparse": 30.0, "dense": 20.0}}, "dense"),  # loses at 256
        ({"b1": {"sparse": 3.0, "dense": 2.0}, "b256": {"sparse": 10.0, "dense": 20.0}}, "dense"),  # loses at 1
        ({"b1": {"sparse": 2.0, "dense": 2.0}, "b256": {"sparse": 10.0, "dense": 20.0}}, "dense"),  # a tie is no win
    ],
)
def test_pick_keeps_the_default_unless_faster_everywhere(timing, expected):
    assert pick(timing, "dense") == expected


def test_pick_takes_the_fastest_winner_at_the_largest_batch():
    timing = {"b1": {"dense": 5.0, "a": 1.0, "b": 2.0}, "b256": {"dense": 50.0, "a": 40.0, "b": 30.0}}
    assert pick(timing, "dense") == "b"


def test_time_candidates_keeps_each_candidates_fastest_round(monkeypatch):
    """Rounds interleave the candidates and keep each one's smallest median; a tuple example (a
    multi-input model) is repeated to each batch. Catches: the last or the largest round kept, the
    rounds not interleaved, a tuple input not batched."""
    from torchslim.runtime import timing as timing_mod

    medians = iter([5.0, 9.0, 3.0, 7.0, 4.0, 8.0])  # a, b, a, b, a, b
    calls = []

    def fake(fn, x, min_run_time=0.2, threads=None):
        calls.append((fn, tuple(t.shape for t in x)))
        return next(medians)

    monkeypatch.setattr(timing_mod, "time_ms", fake)
    example = (torch.zeros(1, 3), torch.zeros(1, 2, 2))
    got = timing_mod.time_candidates({"a": "fa", "b": "fb"}, example, batches=(4,), rounds=3)
    assert got == {"b4": {"a": 3.0, "b": 7.0}}
    assert [c[0] for c in calls] == ["fa", "fb"] * 3
    assert calls[0][1] == ((4, 3), (4, 2, 2))


@pytest.mark.parametrize("fast", ["sparse", "dense"])
def test_sparse_and_pq_kernel_choice_follow_the_measured_timings(monkeypatch, fast):
    """Catches: a kernel choice that ignores its timings (e.g. always the sparse kernel)."""
    slow = {"sparse": "dense", "dense": "sparse"}[fast]
    fake = {"b1": {fast: 1.0, slow: 2.0}, "b256": {fast: 1.0, slow: 2.0}}
    monkeypatch.setattr(timing_mod, "time_candidates", lambda *a, **k: fake)
    layer = _sparse_linear()
    assert sparse_mod.choose_kernel(layer, torch.randn(1, 24)) == fast == layer.kernel
    assert layer.timing == fake
    lut = {"sparse": "lut", "dense": "dense"}
    fake_pq = {b: {lut[k]: v for k, v in t.items()} for b, t in fake.items()}
    monkeypatch.setattr(timing_mod, "time_candidates", lambda *a, **k: fake_pq)
    pq = _product(ProductLinear, 24, 10)
    assert product_mod.choose_pq_kernel(pq, torch.randn(1, 24)) == lut[fast] == pq.kernel


@pytest.mark.parametrize("k", [2, 3])
def test_strided_max_pool_equals_max_pool2d(k):
    """Catches: a view offset or stride off by one, odd sizes not floored, NaN or -inf handled
    differently from ``max_pool2d`` (in the strided views, the batch-1 numba loop and the batched
    channels-last numba loop: a NaN first in its window and one inside a window), a channels-last
    window's first pixel read at the wrong channel."""
    import torch.nn.functional as F

    from torchslim.runtime.pool import StridedMaxPool2d

    g = torch.Generator().manual_seed(0)
    pool = StridedMaxPool2d(k)
    for shape in [(2, 3, 8, 8), (1, 4, 7, 9), (3, 2, 2 * k + 1, k)]:
        x = torch.randint(-3, 3, shape, generator=g).float()  # many ties
        x[0, 0, 0, 0], x[-1, -1, -1, 0] = float("nan"), float("-inf")
        x[0, -1, 1, k - 1] = float("nan")
        assert torch.equal(pool(x).isnan(), F.max_pool2d(x, k).isnan())
        assert torch.equal(pool(x).nan_to_num(7.0), F.max_pool2d(x, k).nan_to_num(7.0)), shape
        xc = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(pool(xc).nan_to_num(7.0), F.max_pool2d(x, k).nan_to_num(7.0))
        assert pool(xc).is_contiguous(memory_format=torch.channels_last)  # stays NHWC: no copy for the next conv
        xb = x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)  # batch-last (direct sparse convs)
        assert torch.equal(pool(xb).nan_to_num(7.0), F.max_pool2d(x, k).nan_to_num(7.0))
        if len(x) > 1:
            assert pool(xb).permute(1, 2, 3, 0).is_contiguous()  # stays batch-last


def test_fast_pooling_shares_everything_but_the_pools():
    """The eager engine's view of a model: eligible pools swapped, the model itself unchanged,
    parameters shared, outputs identical. Catches: the user's model mutated, a deep copy of the
    packed layers, an overlapping pool (stride < kernel) swapped."""
    from torchslim.runtime.pool import StridedMaxPool2d, fast_pooling

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(4, 4, 3), nn.MaxPool2d(3, stride=2))
    ).eval()
    fast = fast_pooling(model)
    assert type(fast[1]) is StridedMaxPool2d and type(fast[2][1]) is nn.MaxPool2d
    assert type(model[1]) is nn.MaxPool2d and fast[0] is model[0] and fast[2] is model[2]
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))


# the layers whose kernel is the dense op on an expanded weight (the eager engine runs them as such)
RUNS_DENSE = {"CodebookConv2d", "CodebookLinear", "ProductConv2d", "ProductLinear"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_as_dense_stands_in_only_for_dense_kernels(name):
    """``as_dense`` gives a plain layer with the packed layer's function where the layer's own kernel is
    the dense op anyway, and nothing where its kernel does better. Catches: a stand-in that drops the
    scale or the bias, or one offered for a sparse-kernel or xnor-popcount layer (which would throw
    away its speed)."""
    make, shape, _ = EXAMPLES[name]
    layer = make().eval()
    dense = layer.as_dense()
    assert (dense is not None) == (name in RUNS_DENSE), name
    if dense is None:
        return
    assert type(dense) in (nn.Conv2d, nn.Linear)
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(dense(x), layer(x))  # the same op on the same expanded weight


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_as_dense_follows_the_measured_kernel_and_binary_weights(kernel):
    """A sparse layer stands in as dense only when its measured kernel is ``dense``; binary weights on
    float inputs (BWN) as one conv with ``scale * W`` (the scale moves inside the sum: float rounding,
    bounded by 2 (terms + 1) u sum |products|)."""
    layer = SparseConv2d.from_dense(_conv(), kernel=kernel)
    assert (layer.as_dense() is None) == (kernel == "sparse")
    bwn = PackedBinaryConv2d(8, 12, [3, 3], [2, 1], [1, 0], binary_input=False)
    w = torch.randn(12, 8, 3, 3)
    bwn.set_weight(w, torch.rand(12), torch.randn(12))
    dense = bwn.as_dense()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        want, got = bwn(x), dense(x)
        mag = nn.functional.conv2d(x.abs(), w.sign().abs(), None, (2, 1), (1, 0)) * bwn.scale.view(1, -1, 1, 1)
        mag = mag + bwn.bias.abs().view(1, -1, 1, 1)
    assert bool(((got - want).abs() <= 2 * (8 * 9 + 1) * 2.0**-24 * mag).all())


def test_kernel_modules_fall_back_when_numba_is_missing(monkeypatch):
    """Each numba-backed runtime module reports no kernels (its layers then run their pure-torch form)
    when numba cannot be imported, and builds nothing. Catches: a module importing numba outside the
    shared guard (an ImportError on a machine without numba)."""
    import sys

    from torchslim.runtime import _numba, binary, pool, product, sparse

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    assert _numba.compiled(lambda: pytest.fail("built without numba")) is False
    for mod in (binary, product, sparse, pool):
        monkeypatch.setattr(mod, "_NUMBA", None)
        assert mod._numba_kernels() is False, mod.__name__
    x = torch.randn(1, 3, 6, 6)  # batch 1: the numba loop's case, now max_pool2d
    assert torch.equal(pool.StridedMaxPool2d(2)(x), nn.functional.max_pool2d(x, 2))


def test_numba_threads_follow_torch():
    """numba's parallel loops use torch's thread count, re-set when torch's changes. Catches: the
    cached count never set again (a user's ``torch.set_num_threads`` ignored by the numba kernels)."""
    numba = pytest.importorskip("numba")
    from torchslim.runtime._numba import match_torch_threads

    old = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            match_torch_threads()
            assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(old)
        match_torch_threads()


def test_sparse_conv_refuses_an_input_with_other_channels_than_it_declares():
    """Catches: the direct sparse conv (numba) reading channels its input does not have: a file that
    declares in_channels 1300 with column indices up to it segfaulted ``torchslim eval`` (exit 139)."""
    from torchslim.runtime import SparseConv2d

    conv = nn.Conv2d(8, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, :4] = 0  # stored weights only on channels 4..7
    layer = SparseConv2d.from_dense(conv, "sparse").eval()
    with torch.no_grad():
        assert torch.allclose(layer(torch.ones(1, 8, 5, 5)), conv(torch.ones(1, 8, 5, 5)), atol=1e-5)
        with pytest.raises(ValueError, match=r"reads \(N, 8, H, W\)"):
            layer(torch.ones(1, 1, 5, 5))
