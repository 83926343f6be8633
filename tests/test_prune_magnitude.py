"""prune.magnitude and the packed sparse runtime."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchslim as ts
from references import masked_reference
from torchslim.api import method_callbacks
from torchslim.prune import Magnitude, sparsity
from torchslim.prune.magnitude import MaskCallback
from torchslim.prune.schedule import progress_at
from torchslim.runtime import SparseConv2d, SparseLinear, choose_kernel

from contract import MethodContract


class TestMagnitudeContract(MethodContract):
    config = Magnitude(
        sparsity=0.5, kernel="sparse", exclude=("re:.*shortcut.*",), overrides={"re:.*fc.*": {"sparsity": 0.3}}
    )
    bad_configs = (
        lambda: Magnitude(sparsity=1.0),
        lambda: Magnitude(sparsity=-0.1),
        lambda: Magnitude(scope="model"),
        lambda: Magnitude(schedule="cubic"),
        lambda: Magnitude(quality=0.5, schedule="agp"),
        lambda: Magnitude(n_steps=0),
        lambda: Magnitude(overrides={"fc": {"sparsity": 2}}),
    )
    model_names = ("lenet5", "resnet20")

    def prepare_reference(self, original, prepared):
        return masked_reference(original, self.config)


def test_masked_weights_stay_zero_and_get_zero_grad():
    torch.manual_seed(0)
    model = ts.create_model("lenet300_100")
    orig = model[1].weight
    ts.compress_(model, Magnitude(sparsity=0.8))
    assert model[1].weight_orig is orig  # parameter identity survives
    for opt in (
        torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-3),
        torch.optim.Adam(model.parameters(), 1e-2, weight_decay=1e-3),
    ):
        cb = MaskCallback(model, Magnitude(sparsity=0.8))
        for step in range(3):
            loss = model(torch.randn(16, 1, 28, 28)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            pruned = model[1].weight_mask == 0
            assert (model[1].weight_orig.grad[pruned] == 0).all()
            opt.step()
            cb.after_step(model, step)
            assert (model[1].weight_orig[pruned] == 0).all() and (model[1].weight[pruned] == 0).all()
    assert abs(sparsity(model) - 0.8) < 1e-3


def test_identity_mask_changes_nothing():
    model = ts.create_model("lenet5").eval()
    x = torch.randn(2, 1, 28, 28)
    ref = model(x)
    ts.compress_(model, Magnitude(sparsity=0.0, kernel="dense"))
    assert torch.equal(model(x), ref)


def test_global_scope_hits_overall_target():
    model = ts.create_model("lenet5")
    ts.compress_(model, Magnitude(sparsity=0.9, scope="global"))
    assert abs(sparsity(model) - 0.9) < 1e-4
    per_layer = [float((m.weight == 0).float().mean()) for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold, different layer sparsities


def test_quality_times_std_threshold():
    model = ts.create_model("lenet300_100")
    w = model[1].weight.detach().clone()
    ts.compress_(model, Magnitude(quality=1.0, layers=("1",)))
    assert torch.equal(model[1].weight_mask.bool(), w.abs() >= w.std())


@pytest.mark.parametrize("schedule", ["agp", "steps"])
def test_schedule_reaches_target_on_time(schedule):
    model = ts.create_model("lenet300_100")
    cfg = Magnitude(sparsity=0.9, schedule=schedule, n_steps=4, frequency=5)
    ts.compress_(model, cfg)
    assert sparsity(model) == 0.0
    cb = MaskCallback(model, cfg)
    seen = []
    for step in range(30):
        cb.after_step(model, step)
        seen.append(sparsity(model))
    expect = [0.9 * progress_at(schedule, 5 * k - 1, 4, 5) for k in range(1, 5)]
    got = [seen[5 * k - 1] for k in range(1, 5)]
    assert all(abs(g - e) < 2e-3 for g, e in zip(got, expect)), (got, expect)
    assert seen[5 * 1 - 2] == 0.0  # nothing happens between events
    assert abs(seen[-1] - 0.9) < 1e-3 and seen == sorted(seen)
    if schedule == "agp":  # cubic: the first increment is the largest
        assert expect[0] > 0.9 - expect[2]


def test_unfinished_schedule_is_completed_at_convert():
    model = ts.create_model("lenet300_100")
    ts.compress_(model, Magnitude(sparsity=0.9, schedule="agp", n_steps=4, frequency=5, kernel="dense"))
    with pytest.warns(UserWarning, match="did not finish"):
        ts.convert_(model)
    assert abs(sparsity(model) - 0.9) < 1e-3


def test_file_shrinks_with_sparsity(tmp_path):
    model = ts.create_model("lenet300_100")
    dense = ts.save(model, tmp_path / "d.slim")
    ts.compress_(model, Magnitude(sparsity=0.92, kernel="dense"))
    ts.convert_(model)
    assert ts.save(model, tmp_path / "s.slim") * 6 < dense
    assert all(isinstance(m, (SparseLinear,)) for m in model if hasattr(m, "nnz") or isinstance(m, nn.Linear))


def test_chaining_prunes_further():
    model = ts.create_model("lenet300_100")
    for s in (0.5, 0.8):
        ts.compress_(model, Magnitude(sparsity=s, kernel="dense"))
        ts.convert_(model)
        assert abs(sparsity(model) - s) < 1e-3


def _close(got: torch.Tensor, want: torch.Tensor, magnitude: torch.Tensor, terms: int) -> None:
    """Two float32 sums of the same ``terms`` products in different orders differ by at most
    ``2 * terms * u * sum |product|`` per output (u = 2^-24, the standard recursive-summation bound);
    ``magnitude`` is that sum of absolute products, the layer applied to |x| and |W|."""
    assert got.shape == want.shape
    bound = 2 * terms * 2.0**-24 * magnitude
    assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() - bound).max())


@pytest.mark.parametrize(
    "conv",
    [
        dict(stride=1, padding=1),
        dict(stride=2, padding=0),
        dict(dilation=2, padding=2),
        dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
        dict(kernel_size=(5, 3), stride=(1, 2), padding=(2, 0), bias=False),
        dict(kernel_size=1),
    ],
)
@pytest.mark.parametrize("batch", [1, 3, 70])
def test_sparse_conv_kernel_matches_dense(conv, batch):
    """The direct sparse kernel (numba, or im2col with torch.sparse without it) against the dense conv.
    Catches: height and width strides / paddings swapped (non-square cases), batch 1's wide rows used
    with a vertical stride, the 4-weight blocks' remainder skipped or run twice (filters whose nonzero
    counts are not multiples of 4, one filter with none), a dropped bias, batch entries mixed up."""
    torch.manual_seed(0)
    conv = {"kernel_size": 3, **conv}
    m = nn.Conv2d(6, 10, **conv)
    with torch.no_grad():
        m.weight.mul_(torch.rand_like(m.weight) > 0.7)
        m.weight[3] = 0
    x = torch.randn(batch, 6, 13, 11)
    terms = 6 * m.weight[0].numel() + 1
    with torch.no_grad():
        b = m.bias.abs() if m.bias is not None else None
        magnitude = F.conv2d(x.abs(), m.weight.abs(), b, m.stride, m.padding, m.dilation)
    for kernel in ("sparse", "dense"):
        with torch.no_grad():
            y = SparseConv2d.from_dense(m, kernel).eval()(x)
            _close(y, m(x), magnitude, terms)
        assert y.is_contiguous()  # a plain call returns NCHW (batch-last only in the eager engine)
    back = SparseConv2d.from_dense(m).to_float()
    assert torch.equal(back.weight, m.weight)


@pytest.mark.parametrize("padding", [0, 1])
def test_sparse_conv_wide_rows_across_tiles(padding):
    """Batch 1 on a map tall enough for several row tiles of "wide" rows (a tile computed at input-row
    width, then its rows copied out). Catches: a tile's rows copied to the first tile's place, the
    input-row pitch used for the output rows."""
    torch.manual_seed(0)
    m = nn.Conv2d(2, 3, 3, padding=padding)
    with torch.no_grad():
        m.weight.mul_(torch.rand_like(m.weight) > 0.5)
    x = torch.randn(1, 2, 150, 40)  # 40-wide rows: ~100 output rows per tile, so 2 tiles
    with torch.no_grad():
        magnitude = F.conv2d(x.abs(), m.weight.abs(), m.bias.abs(), padding=padding)
        _close(SparseConv2d.from_dense(m, "sparse").eval()(x), m(x), magnitude, 2 * 9 + 1)


def test_sparse_kernels_without_numba(monkeypatch):
    """The fallback path (im2col + torch.sparse) when numba is missing: same function."""
    from torchslim.runtime import sparse as sparse_mod

    monkeypatch.setattr(sparse_mod, "_NUMBA", False)
    test_sparse_conv_kernel_matches_dense(dict(stride=(2, 1), padding=(1, 0), kernel_size=(3, 5)), 2)
    test_sparse_linear_kernel_matches_dense(3)


@pytest.mark.parametrize("batch", [1, 5, 67])
def test_sparse_linear_kernel_matches_dense(batch):
    """Catches: the batch-1 gather path or the 4-weight blocks (and their remainder) wrong, rows mixed."""
    torch.manual_seed(0)
    m = nn.Linear(40, 30)
    with torch.no_grad():
        m.weight.mul_(torch.rand_like(m.weight) > 0.9)
        m.weight[7] = 0
    x = torch.randn(batch, 40)
    magnitude = F.linear(x.abs(), m.weight.abs(), m.bias.abs()).detach()
    for kernel in ("sparse", "dense"):
        with torch.no_grad():
            y = SparseLinear.from_dense(m, kernel).eval()(x)
        _close(y, m(x), magnitude, 41)
        assert y.is_contiguous()


def test_sparse_layers_keep_input_gradients():
    """With frozen weights but an input that needs a gradient (saliency maps), the layers take the
    differentiable path. Catches: the numba kernels (no autograd) used there."""
    m = SparseConv2d.from_dense(nn.Conv2d(2, 3, 3), "sparse").requires_grad_(False)
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_choose_kernel_records_timings():
    m = nn.Linear(256, 256)
    with torch.no_grad():
        m.weight.mul_(torch.rand_like(m.weight) > 0.95)
    packed = SparseLinear.from_dense(m)
    choose_kernel(packed, torch.randn(1, 256), batches=(1, 8), min_run_time=0.02)  # rule: tests/test_runtime.py
    assert set(packed.timing) == {"b1", "b8"}
    assert all(set(t) == {"sparse", "dense"} and min(t.values()) > 0 for t in packed.timing.values())


def test_measured_kernel_choice_is_saved(tmp_path):
    model = ts.create_model("lenet300_100")
    ts.compress_(model, Magnitude(sparsity=0.9, kernel="measure"))
    ts.convert_(model)
    ts.save(model, tmp_path / "m.slim")
    loaded = ts.load(tmp_path / "m.slim")
    for a, b in zip(model, loaded):
        if isinstance(a, SparseLinear):
            assert a.kernel == b.kernel and a.timing == b.timing and "b256" in a.timing


@pytest.mark.parametrize(
    "layer, density, example, want",
    [
        (nn.Linear(250, 100), 0.12, None, "sparse"),  # at the density bound: 3,000 of 25,000 weights
        (nn.Linear(250, 100), 0.1204, None, "dense"),  # one step above it: 3,010 of 25,000
        (nn.Linear(128, 32), 0.05, None, "sparse"),  # at the size bound: 4,096 weights
        (nn.Linear(100, 40), 0.05, None, "dense"),  # 4,000 < 4,096 weights: call overhead dominates
        (nn.Conv2d(16, 32, 3), 0.1, (16, 60, 60), "sparse"),  # 4,608 weights x 58 x 58 = 15.5 M MACs
        (nn.Conv2d(16, 32, 3), 0.1, (16, 62, 62), "dense"),  # x 60 x 60 = 16.6 M MACs: oneDNN's size
        (nn.Conv2d(16, 32, 3), 0.1, None, "dense"),  # no input seen: the size is unknown
        (nn.Conv2d(16, 32, 3, groups=2), 0.1, (16, 8, 8), "dense"),  # the direct sparse kernel: groups=1
    ],
)
def test_default_kernel_is_a_rule_of_density_and_size(layer, density, example, want):
    """Catches: the default kernel chosen by timing (file bytes then differ run to run, a busy
    machine picks the slower kernel), or the rule's bounds off by one step (density, weights, and
    for convs the dense MACs per sample: all-sparse resnet50 at 224 x 224 ran 0.37x of float)."""
    from torchslim.runtime.sparse import SparseConv2d, rule_kernel

    w = layer.weight.data
    keep = round(density * w.numel())
    flat = torch.zeros(w.numel())
    flat[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))[:keep]] = 1
    w.mul_(flat.view_as(w)).add_(flat.view_as(w) * 1e-3)  # exactly `keep` nonzeros
    packed = (SparseConv2d if isinstance(layer, nn.Conv2d) else SparseLinear).from_dense(layer)
    assert packed.nnz == keep
    x = None if example is None else torch.zeros(1, *example)
    assert rule_kernel(packed, x) == want == packed.kernel and set(packed.timing) == {"rule"}


def _own_model_example(tmp: Path) -> bytes:
    """The README's "Your own model" example, as printed there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Your own model\n\n```python\n(.*?)```", readme, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        exec(compile(code.replace("print(", "str("), "README", "exec"), {})
    finally:
        os.chdir(cwd)
    return (tmp / "small.slim").read_bytes()


def test_readme_example_gives_the_same_bytes_twice_and_the_printed_size(tmp_path):
    """Catches: a kernel choice by timing stored in the header (16 bytes differed between runs), or
    the README printing a size its own example does not give."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = _own_model_example(tmp_path / "a"), _own_model_example(tmp_path / "b")
    assert first == second
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    before, after, ratio = re.search(r"# ([\d,]+) -> ([\d,]+) bytes \(([\d.]+)x\)", readme).groups()
    assert len(first) == int(after.replace(",", ""))
    assert (tmp_path / "a" / "float.slim").stat().st_size == int(before.replace(",", ""))
    assert f"{int(before.replace(',', '')) / len(first):.1f}" == ratio


def test_effective_macs_count_nonzeros():
    from torchslim.measure import layer_table

    model = ts.create_model("lenet300_100")
    ts.compress_(model, Magnitude(sparsity=0.75, kernel="dense"))
    ts.convert_(model)
    rows = [r for r in layer_table(model, (1, 28, 28)) if r["type"] == "SparseLinear"]
    assert sum(r["macs"] for r in rows) == 266_200
    assert abs(sum(r["effective_macs"] for r in rows) - 0.25 * 266_200) < 10


def test_packed_layers_fine_tune_with_fixed_pattern():
    """Gradients reach only the stored nonzeros; zeros stay zero after optimizer steps."""
    torch.manual_seed(0)
    m = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        m.weight.mul_(torch.rand_like(m.weight) > 0.8)
    packed = SparseConv2d.from_dense(m, "sparse")
    zeros = packed.dense_weight() == 0
    opt = torch.optim.SGD(packed.parameters(), 0.1)
    for _ in range(3):
        loss = packed(torch.randn(2, 4, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = packed.dense_weight()
    assert (w[zeros] == 0).all() and not torch.equal(w, m.weight.detach().reshape(6, -1))
    with torch.no_grad():  # inference path agrees with the training path after the update
        x = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(
            packed(x), torch.nn.functional.conv2d(x, w.view(6, 4, 3, 3), packed.bias, padding=1), atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam"])
def test_pruned_weights_stay_zero_with_optimizer_state_built_before_the_mask_changed(opt):
    """Catches: the after-step re-zeroing removed. The optimizer's momentum / Adam moments are
    built up for weights that a later AGP event prunes; their zero gradient does not stop the
    state from moving them, so only the re-zeroing keeps them at exactly 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    config = Magnitude(sparsity=0.8, schedule="agp", n_steps=3, frequency=4)
    ts.compress_(model, config)
    (cb,) = method_callbacks(model)
    params = list(model.parameters())
    optim = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9) if opt == "sgd_momentum" else torch.optim.Adam(params, lr=0.01)
    )
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    zeros_seen = 0
    for step in range(16):
        optim.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optim.step()
        cb.after_step(model, step)
        for m in (model[0], model[2]):
            pruned = m.weight_mask == 0
            zeros_seen += int(pruned.sum())
            assert torch.equal(m.weight_orig[pruned], torch.zeros_like(m.weight_orig[pruned])), step
    assert zeros_seen > 0 and sparsity(model) == pytest.approx(0.8, abs=0.01)


def test_tune_rewrites_only_the_kernel_choices(tmp_path, monkeypatch, capsys):
    """``torchslim tune`` re-times each kernel choice here and rewrites the file's architecture
    record: the tensors stay byte for byte, the file loads with the new kernels and computes the same
    function, for registry and user models. Catches: tensors re-encoded or dropped (the entropy-coded
    streams), the old choices written back, a user model's file losing its overrides."""
    from torchslim.cli import main
    from torchslim.export.slim import read_slim, retune
    from torchslim.runtime import timing as timing_mod
    from usermodels import SmallNet

    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    fake = {"b1": {"sparse": 1.0, "dense": 2.0}, "b256": {"sparse": 1.0, "dense": 2.0}}
    for name, model, kw in [("reg", ts.create_model("lenet5"), {}), ("own", SmallNet(), {"model": SmallNet()})]:
        ts.convert_(ts.compress_(model, Magnitude(sparsity=0.8, kernel="dense"), example_inputs=x[:1]))
        src, out = tmp_path / f"{name}.slim", tmp_path / f"{name}_tuned.slim"
        ts.save(model, src, entropy="huffman")
        monkeypatch.setattr(timing_mod, "time_candidates", lambda *a, **k: fake)
        choices = retune(src, out, **kw)
        monkeypatch.undo()
        assert choices and set(choices.values()) == {"sparse"}
        (t0, h0), (t1, h1) = read_slim(src), read_slim(out)
        assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
        assert h0["log"] == h1["log"] and h0["extra"] == h1["extra"] and h0["entropy"] == h1["entropy"]
        fresh = (lambda: {"model": SmallNet()}) if kw else dict
        a, b = ts.load(src, **fresh()), ts.load(out, **fresh())
        layers = [m for m in b.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
        assert layers and all(m.kernel == "sparse" and m.timing == fake for m in layers)
        with torch.no_grad():
            torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
    assert main(["tune", str(tmp_path / "reg.slim")]) == 0  # in place, timed for real
    assert set(json.loads(capsys.readouterr().out)) == {"0", "2", "5", "7"}


@pytest.mark.parametrize("artifact", ["lenet5_magnitude.slim", "lenet5_deep_compression.slim"])
def test_torch_export_and_compile_take_sparse_layers_as_custom_ops(artifact, tmp_path):
    """``torch.export`` (dynamic batch) and ``torch.compile`` of a CSR model: every sparse layer is one
    ``torchslim::runtime_layer`` node running the CSR kernels, equal to the model bit for bit at
    another batch size, and dynamo sees no graph break. Catches: the numba kernels reached with fake
    tensors (torch.compile failed: a guard on ``torch.from_numpy``), the op's spec left at the kernel
    the layer was built with, a fake kernel with the wrong output shape."""
    import torch._dynamo

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "artifacts"
    model = ts.load(root / artifact).eval()
    sparse = [m for m in model.modules() if isinstance(m, (SparseConv2d, SparseLinear))]
    assert {m.kernel for m in sparse} == {"sparse", "dense"}  # both kernels go through the op
    assert all(json.loads(m.op_spec)["kernel"] == m.kernel for m in sparse)
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(4, 1, 28, 28),), dynamic_shapes=({0: batch},))
    ops = [n for n in ep.graph.nodes if n.target is torch.ops.torchslim.runtime_layer.default]
    assert len(ops) == len(sparse)
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ep.module()(x), ref)
        torch._dynamo.reset()
        assert torch._dynamo.explain(model)(x).graph_break_count == 0
        torch._dynamo.reset()
        assert torch.equal(torch.compile(model)(x), ref)
    layer = sparse[0]
    layer.kernel = "dense" if layer.kernel == "sparse" else "sparse"
    assert json.loads(layer.op_spec)["kernel"] == layer.kernel
