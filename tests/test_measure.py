"""Measurement: counts, MACs per layer, latency, report formats."""

import json
import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.measure import (
    count_nonzeros,
    latency_ms,
    layer_table,
    measure,
    plot_tradeoff,
    register_macs,
    to_markdown,
    write_report,
)


def test_layer_table_conv_rule():
    """Conv MACs = H_out * W_out * C_out * (C_in / groups) * k * k."""
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    rows = {r["name"]: r for r in layer_table(net, (4, 10, 10))}
    assert rows["0"]["macs"] == 10 * 10 * 8 * 2 * 9
    assert rows["3"]["macs"] == 800 * 5
    assert rows["0"]["params"] == 8 * 2 * 9 + 8 and rows["0"]["out_shape"] == [8, 10, 10]


def test_nonzeros_count_zeros():
    net = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        net.weight[:, :5] = 0
    assert count_nonzeros(net) == 50


def test_register_macs_for_new_type():
    class Half(nn.Linear):
        pass

    @register_macs(Half)
    def _half(m, x, y):
        return y.numel() * m.in_features, y.numel() * m.in_features // 2

    rows = layer_table(nn.Sequential(Half(8, 4)), (8,))
    assert rows[0]["macs"] == 32 and rows[0]["effective_macs"] == 16


def test_latency_positive_and_batch_scales():
    m = ts.create_model("lenet300_100")
    b1 = latency_ms(m, (1, 28, 28), 1, min_run_time=0.1)
    b256 = latency_ms(m, (1, 28, 28), 256, min_run_time=0.1)
    assert 0 < b1 < b256


def test_measure_and_reports(tmp_path):
    m = ts.create_model("lenet5")
    res = measure(m, (1, 28, 28), min_run_time=0.05)
    assert res["params"] == 431_080 and res["macs"] == 2_293_000 and res["threads"] >= 1
    assert 431_080 * 4 < res["bytes"] < 431_080 * 4 + 20_000  # float32 tensors + a small header
    rows = [{"model": "lenet5", "method": "float", **res}]
    jp, mp = write_report(rows, tmp_path / "r")
    assert json.loads(jp.read_text())[0]["macs"] == 2_293_000
    assert "| model |" in mp.read_text() and "2,293,000" in to_markdown(rows)
    png = plot_tradeoff(rows, tmp_path / "p.png", x="macs", y="bytes")
    assert png.stat().st_size > 1000


def test_latency_rows_record_the_cpu_and_its_isa():
    """A latency without the CPU it ran on cannot be compared (AVX2-only vs AVX-512 VNNI machines)."""
    from torchslim.measure.latency import ISA_FLAGS, cpu_info

    row = measure(ts.create_model("lenet300_100"), (1, 28, 28), min_run_time=0.01)
    assert row["cpu"] == cpu_info() and row["cpu"].endswith(")")
    flags = open("/proc/cpuinfo").read().split() if __import__("os").path.exists("/proc/cpuinfo") else []
    listed = row["cpu"].rsplit("(", 1)[1].rstrip(")").split(", ")
    assert [f for f in listed if f] == [f for f in ISA_FLAGS if f in flags]


def _int8_model():
    from torchslim.quant import Uniform

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    data = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(3)]
    ts.convert_(ts.compress_(model, Uniform(calib_batches=3), data=data, example_inputs=data[0][0]))
    return model, data


def test_engines_give_the_same_predictions_and_name_themselves(monkeypatch):
    """The ONNX Runtime engine evaluates the int8 model as torchslim does (same top-1 on the
    data), and ``auto`` reports every candidate's timing and the one it used. Catches: an engine
    that runs a different model (e.g. the float weights), a latency row not naming its engine."""
    from torchslim import engines

    model, data = _int8_model()
    eager = measure(model, (1, 8, 8), loader=data, min_run_time=0.05)
    ort = measure(model, (1, 8, 8), loader=data, min_run_time=0.05, engine="onnxruntime")
    assert eager["engine"] == "eager" and ort["engine"] == "onnxruntime"
    assert ort["top1"] == eager["top1"] and ort["macs"] == eager["macs"] and ort["bytes"] == eager["bytes"]
    monkeypatch.setattr(engines, "available", lambda: ["eager", "onnxruntime"])  # compiling takes minutes
    auto = measure(model, (1, 8, 8), loader=data, min_run_time=0.05, engine="auto")
    times = auto["engine_timings_ms"]
    assert set(times) == {"eager", "onnxruntime"}
    assert auto["engine"] == min(times, key=lambda k: times[k]["b1"] + times[k]["b256"])
    # measure evaluates and times what the engine runs, not the model (a fake engine: always class 0)
    fake = engines.Runner("zeros", lambda x: torch.zeros(len(x), 10).index_fill_(1, torch.tensor([0]), 1.0))
    zeros_engine = type("Zeros", (engines.Engine,), {"name": "zeros", "build": lambda self, m, shape: fake})
    monkeypatch.setitem(engines.ENGINES, "zeros", zeros_engine())
    zeros = measure(model, (1, 8, 8), loader=data, min_run_time=0.05, engine="zeros")
    labels = torch.cat([y for _, y in data])
    assert zeros["top1"] == 100.0 * float((labels == 0).sum()) / len(labels) and zeros["engine"] == "zeros"
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        measure(model, (1, 8, 8), latency=True, engine="tensorrt")


def test_eager_engine_folds_batchnorm_without_changing_the_model():
    """The eager engine folds each (conv / linear, BatchNorm) pair, also next to a packed layer,
    and computes the same function up to float32 rounding; the user's model keeps its BatchNorms.
    Catches: a fold with the wrong scale or shift (outputs differ by far more than rounding), a
    fold written into the user's model, a BatchNorm folded into a layer whose output has other
    readers, a packed layer that makes the tracer give up (nothing folded)."""
    from torchslim import engines
    from torchslim.binary import BNN

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.b0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc, self.bf = nn.Linear(8 * 16, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            x = torch.relu(self.b0(self.c0(x)))
            y = self.c1(x)
            x = self.b1(y) + y  # c1's output has a second reader: not foldable
            x = self.b2(self.c2(x))
            return self.bf(self.fc(torch.flatten(nn.functional.max_pool2d(x, 2), 1)))

    model = Net()
    model.train()
    for _ in range(3):
        model(torch.randn(16, 1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, BNN(layers=("c2",)), example_inputs=torch.randn(1, 1, 8, 8)))
    model.eval()
    x = torch.randn(32, 1, 8, 8)
    run = engines.build("eager", model, (1, 8, 8))
    kinds = [type(m).__name__ for m in run.fn.modules()]
    assert kinds.count("BatchNorm2d") == 1 and "BatchNorm1d" not in kinds  # b1 stays: c1 has two readers
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == 3  # b2 folded by BNN
    with torch.no_grad():
        want, got = model(x), run(x)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_measure_leaves_the_model_in_eval_mode_and_unchanged():
    """Catches: evaluating through an engine whose train(was_training) reaches the wrapped modules
    (they are the user's): afterwards Dropout is on and BatchNorm updates its statistics, so the
    model's next outputs change (found as a 2 % prediction difference in the binary benchmark)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 10)
    ).eval()
    x = torch.randn(16, 1, 8, 8)
    data = [(x, torch.randint(0, 10, (16,)))]
    with torch.no_grad():
        before = model(x)
    for engine in ("eager", "pytorch"):
        measure(model, (1, 8, 8), loader=data, latency=False, engine=engine)
        assert not any(m.training for m in model.modules()), engine
        with torch.no_grad():
            assert torch.equal(model(x), before), engine


def test_eager_engine_runs_plain_conv_models_channels_last():
    """Models whose convolutions are plain nn.Conv2d run NHWC (weights with explicit NHWC strides,
    also for 1x1 and depthwise kernels, where .contiguous() keeps NCHW strides and oneDNN falls back
    to NCHW with conversions); a packed conv that reads NCHW keeps the model NCHW (the binary conv
    reads NHWC itself); outputs equal the model's up to float rounding and the model's own weights
    are untouched. Catches: ambiguous strides, the
    user's weights converted in place, a packed conv that reads NCHW fed NHWC tensors."""
    from torchslim import engines
    from torchslim.binary import BNN

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, groups=16), nn.Flatten()
    ).eval()
    x = torch.randn(4, 3, 6, 6)
    run = engines.build("eager", model, (3, 6, 6))
    assert run.layout == "channels_last"
    for m in run.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.stride() == torch.empty_like(m.weight, memory_format=torch.channels_last).stride()
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        want, got = model(x), run(x)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    from torchslim.prune import Magnitude

    xs = torch.randn(2, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        binary = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 2))
        ts.convert_(ts.compress_(binary, BNN(layers=("1",)), example_inputs=xs[:1]))
        sparse = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 2))
        ts.convert_(ts.compress_(sparse, Magnitude(sparsity=0.5, kernel="sparse"), example_inputs=xs[:1]))
    run = engines.build("eager", binary.eval(), (3, 6, 6))
    assert run.layout == "channels_last"  # the packed binary conv reads and writes NHWC itself
    with torch.no_grad():
        assert torch.allclose(run(xs), binary(xs), rtol=0, atol=1e-5 * float(binary(xs).abs().max()))
    assert engines.build("eager", sparse.eval(), (3, 6, 6)).layout != "channels_last"  # its kernel reads NCHW


class _SparseNet(nn.Module):
    """A user's model for the batch-last tests; ``flat_view`` merges the batch dim of a conv output
    with ``.view``, which a batch-last tensor cannot give (``.view(N, -1)`` works on it)."""

    def __init__(self, flat_view: bool = False) -> None:
        super().__init__()
        self.flat_view = flat_view
        self.c1, self.c2 = nn.Conv2d(2, 8, 3, padding=1), nn.Conv2d(8, 8, 3)
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8 * 3 * 3, 4)

    def forward(self, x):
        y = self.pool(self.c2(self.pool(self.c1(x))))
        if self.flat_view:  # (N * C, H, W): merges the batch dim, which a batch-last tensor cannot view
            y = y.view(-1, 3, 3)
        return self.fc(y.reshape(len(x), -1))


@pytest.mark.parametrize("flat_view", [False, True])
def test_eager_engine_keeps_sparse_convs_batch_last(flat_view):
    """Direct sparse convolutions pass batch-last tensors on in the eager engine (no transposes
    between them and the pooling), and the outputs equal the model's; a model whose code cannot
    take that layout is found at build time and runs with NCHW outputs. Catches: the batch-last
    layout lost at the pooling (a copy per layer), the flag set on the user's own layers, a model
    that breaks in the engine instead of falling back."""
    from torchslim import engines
    from torchslim.prune import Magnitude
    from torchslim.runtime import SparseConv2d

    torch.manual_seed(0)
    model = _SparseNet(flat_view)
    x = torch.randn(5, 2, 16, 16)
    ts.convert_(ts.compress_(model, Magnitude(sparsity=0.7, kernel="sparse"), example_inputs=x[:1])).eval()
    run = engines.build("eager", model, (2, 16, 16))
    assert run.layout == ("contiguous" if flat_view else "batch_last")
    assert not any(m.batch_last for m in model.modules() if isinstance(m, SparseConv2d))
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].stride())) for m in run.modules()]
    with torch.no_grad():
        want, got = model(x), run(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))
    if not flat_view:
        assert seen.count((1, 5 * 8 * 8, 5 * 8, 5)) >= 1  # c2 reads the pooled batch-last map as it is


def test_eager_engine_runs_dense_kernel_layers_as_plain_layers():
    """Codebook layers (their kernel is the dense op on the expanded weight) run in the eager engine as
    plain convs, so the BatchNorm after them folds and the model goes channels-last; the user's model
    keeps its packed layers and the outputs agree. Catches: a codebook model left NCHW with its BN
    unfolded (0.4x the float model's speed before), the user's layers replaced in place."""
    from torchslim import engines
    from torchslim.quant import KMeans
    from torchslim.runtime import CodebookConv2d

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(32, 2)
    )
    x = torch.randn(4, 3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.convert_(ts.compress_(model, KMeans(bits=4), example_inputs=x[:1])).eval()
    assert isinstance(model[0], CodebookConv2d)
    run = engines.build("eager", model, (3, 4, 4))
    assert run.layout == "channels_last"
    assert not any(isinstance(m, (CodebookConv2d, nn.BatchNorm2d)) for m in run.modules())
    assert isinstance(model[0], CodebookConv2d) and isinstance(model[1], nn.BatchNorm2d)
    with torch.no_grad():
        want, got = model(x), run(x)
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_layer_latency_times_each_layer_as_the_engine_runs_it(tmp_path, capsys):
    """Every leaf layer of a user's model gets a positive time under the model's own names, in both
    engines; a folded BatchNorm is timed as what the eager engine runs in its place; ``inspect
    --latency`` prints the column. Catches: names of the engine's wrapper leaking out, a pre-hook
    that changes the layer's arguments, layers missing."""
    from torchslim.cli import main
    from torchslim.measure import layer_latency
    from usermodels import SmallNet

    model = SmallNet().eval()
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    for engine in ("eager", "pytorch"):
        ms = layer_latency(model, (1, 28, 28), 4, engine=engine, min_run_time=0.01, rounds=1)
        assert set(ms) == leaves and all(v > 0 for v in ms.values()), engine
    with pytest.raises(ValueError, match="engine"):
        layer_latency(model, (1, 28, 28), engine="onnxruntime")
    ts.save(ts.create_model("lenet5"), tmp_path / "l.slim")
    assert main(["inspect", str(tmp_path / "l.slim"), "--latency", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "ms_b2" in out and len([line for line in out.splitlines() if "Conv2d" in line]) == 2


_FAULTS = """
import resource, sys, torch
from torchslim.measure.latency import allocator, keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
conv = torch.nn.Conv2d(1, 64, 3, padding=1)
x = torch.randn(32, 1, 64, 64)  # output 33.5 MB: above glibc's largest dynamic mmap threshold
with torch.no_grad():
    for _ in range(3):
        conv(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    conv(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, allocator())
"""


def test_kept_freed_memory_means_no_page_faults_per_forward():
    """With keep_freed_memory set at process start (as the command line and the benchmarks do), a
    forward pass after warm-up reuses the pages of the previous one: no minor page faults, where
    glibc's default maps a fresh block for each large activation (one fault per 4 kB page, ~8,200
    here). Catches: the allocator settings not applied (the mallopt calls skipped)."""
    import subprocess
    import sys

    def faults(mode: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        n, state = out.stdout.strip().split(" ", 1)
        return int(n), state

    kept, state = faults("keep")
    if state == "default":
        pytest.skip("not glibc: the allocator cannot be set")
    assert state == "glibc, freed memory kept"
    default, _ = faults("default")
    pages = (32 * 64 * 64 * 64 * 4) // 4096
    assert default > pages // 2, default  # the default really faults: the check below can fail
    assert kept < pages // 100, f"{kept} page faults for a {pages}-page output"


class _BinaryPoolNet(nn.Module):
    """A user's model with max pooling after bit-packed binary convs: one behind an ``nn.Identity``
    (a folded BatchNorm), one non-square window over an output of 70 channels (not a multiple of
    the 16-output tile), odd map sizes (floor mode); ``reuse`` also reads the first conv's output
    elsewhere, which forbids its fusion."""

    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        from torchslim.runtime.binary import PackedBinaryConv2d

        self.reuse = reuse
        self.c0 = nn.Conv2d(3, 64, 3, padding=1)
        self.b1 = PackedBinaryConv2d(64, 64, [3, 3], [1, 1], [1, 1], input_scaling=True, shortcut=True)
        self.b2 = PackedBinaryConv2d(64, 70, [3, 3], [1, 1], [0, 0], threshold=True)
        self.b1.set_weight(torch.randn(64, 64, 3, 3), torch.rand(64), torch.randn(64))
        self.b2.set_weight(torch.randn(70, 64, 3, 3), torch.rand(70), torch.randn(70))
        self.b2.threshold.normal_()
        self.id, self.p1, self.p2 = nn.Identity(), nn.MaxPool2d(2), nn.MaxPool2d((2, 3))

    def forward(self, x):
        y = self.id(self.b1(self.c0(x)))
        z = self.p2(self.b2(self.p1(y))).flatten(1)
        return torch.cat([z, y.mean((1, 2, 3))[:, None]], 1) if self.reuse else z


@pytest.mark.parametrize("reuse", [False, True])
def test_binary_convs_pool_in_their_epilogue_exactly(reuse):
    """``fused_epilogues`` moves a max pooling that only reads a packed binary conv's output into that
    conv's kernel: the outputs are the unfused model's bit for bit (the same maximum of the same
    values; a NaN in a window propagates). Catches: a pooled row built from one conv row only, a
    window's first column not copied, a conv whose output is also read elsewhere fused (its
    other reader would get the pooled map)."""
    from torchslim import engines

    torch.manual_seed(0)
    model = _BinaryPoolNet(reuse).eval()
    fused = engines.views.fused_epilogues(model)
    assert type(fused.p2) is nn.Identity and fused.b2.pool == (2, 3) and model.b2.pool == (1, 1)
    assert (type(fused.p1) is nn.MaxPool2d) == reuse and fused.b1.pool == ((1, 1) if reuse else (2, 2))
    x = torch.randn(3, 3, 13, 17).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))
        assert torch.equal(fused(x.contiguous()), model(x.contiguous()))  # NCHW: pooled after the conv
        model.b2.scale[5] = float("inf")  # channel 5: NaN where the popcount dot is 0, else +-inf
        assert torch.equal(fused(x).isnan(), model(x).isnan()) and fused(x).isnan().any()
        assert torch.equal(fused(x).nan_to_num(7.0), model(x).nan_to_num(7.0))
        run = engines.build("eager", model, (3, 13, 17))
        assert torch.equal(run(x).isnan(), model(x).isnan())


class _BinaryChainNet(nn.Module):
    """A user's BNN without real-valued shortcuts: binary convs that only read each other's signs.
    b1 -> Identity -> MaxPool (2, 3) -> b2 (padding 1) -> b3 (padding (0, 1), stride (2, 1)); b2
    reads 70 channels (two 64-bit words, a partial one), b3 24 (one 32-bit word, partial); learned
    thresholds on every binary input. ``k_last``
    gives b3 XNOR-Net's K, which needs b2's float output, so b2 must not emit bits."""

    def __init__(self, k_last: bool = False) -> None:
        super().__init__()
        from torchslim.runtime.binary import PackedBinaryConv2d

        self.c0 = nn.Conv2d(3, 64, 3, padding=1)
        self.b1 = PackedBinaryConv2d(64, 70, [3, 3], [1, 1], [0, 0], threshold=True)
        self.b2 = PackedBinaryConv2d(70, 24, [3, 3], [1, 1], [1, 1], threshold=True)
        self.b3 = PackedBinaryConv2d(24, 40, [3, 3], [2, 1], [0, 1], threshold=True, input_scaling=k_last)
        for b in (self.b1, self.b2, self.b3):
            b.set_weight(
                torch.randn(b.out_channels, b.in_channels, 3, 3),
                torch.rand(b.out_channels),
                torch.randn(b.out_channels),
            )
            b.threshold.normal_()
        self.id, self.pool = nn.Identity(), nn.MaxPool2d((2, 3))

    def forward(self, x):
        return self.b3(self.b2(self.pool(self.id(self.b1(self.c0(x)))))).flatten(1)


@pytest.mark.parametrize("k_last", [False, True])
def test_binary_convs_pass_packed_signs_to_the_next_binary_conv_exactly(k_last, tmp_path):
    """``fused_epilogues`` makes a binary conv whose output only another binary conv reads emit that
    conv's packed input words (its sign bits after its threshold, pooling as an AND of words): the
    outputs equal the unfused model's bit for bit, NCHW or NHWC input, any batch, and a NaN output
    gives the bit a NaN gives when packed (0). Catches: the next conv's threshold not applied, its
    padding not left around the words (or not zero), a pooling window's rows or columns OR-ed or
    restarted, a conv that needs float inputs (K) fed bits."""
    from torchslim import engines

    torch.manual_seed(0)
    model = _BinaryChainNet(k_last).eval()
    fused = engines.views.fused_epilogues(model)
    assert type(fused.pool) is nn.Identity and fused.b1.pool == (2, 3)
    assert fused.b1.emit is not None and fused.b1.emit[1] == (1, 1) and fused.b3.emit is None
    assert (fused.b2.emit is None) == k_last and model.b1.emit is None and model.b1.pool == (1, 1)
    run = engines.build("eager", model, (3, 16, 23))
    with torch.no_grad():
        for x in (torch.randn(3, 3, 16, 23), torch.randn(1, 3, 17, 22)):
            ref = model(x)
            assert torch.equal(fused(x.contiguous(memory_format=torch.channels_last)), ref)
            assert torch.equal(fused(x), ref) and torch.equal(run(x), ref)
        model.b1.scale[5] = float("inf")  # channel 5: NaN where b1's popcount dot is 0, else +-inf
        assert model.b1(model.c0(x)).isnan().any()
        assert torch.equal(fused(x), model(x))
    words = fused.b1(fused.c0(x))  # the words themselves: b2's padding around them, packed as +1
    assert words.dtype == torch.int64 and words.shape == (1, 15 // 2 + 2, 20 // 3 + 2, 2)
    assert not words[:, 0].any() and not words[:, :, -1].any()
    assert fused.b2(words).dtype == (torch.float32 if k_last else torch.int32)  # b3's 24 channels: 32-bit words
    with pytest.raises(RuntimeError, match="numba kernels on the CPU"):
        _BinaryChainNet(True).b3(words)  # a conv with K cannot read words
    model.b1.scale[5] = 1.0  # a file with an infinite scale is refused at load (test_export.py)
    ts.save(model, tmp_path / "chain.slim")  # a user's model saved and reloaded runs the same bit chain
    reloaded = ts.load(tmp_path / "chain.slim", model=_BinaryChainNet(k_last)).eval()
    with torch.no_grad():
        assert torch.equal(engines.build("eager", reloaded, (3, 16, 23))(x), model(x))


class _SharedPoolNet(nn.Module):
    """One MaxPool2d module called after two binary convs (fusing it into the first would pool the
    second's input twice, or not at all), and a ceil-mode pool on odd maps (floor mode drops the
    last row and column)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 64, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.b3 = nn.Conv2d(64, 64, 3, padding=1)
        self.ceil = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(64 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(self.b2(self.pool(self.b1(self.c0(x)))))
        return self.fc(self.ceil(self.b3(x)).flatten(1))


def test_eager_engine_leaves_shared_and_ceil_mode_pools_alone():
    """Catches: the eager engine fusing a MaxPool module that is also called elsewhere (the output
    shape changes), and ceil-mode pools run as floor mode (a 7 x 7 map pooled to 3 x 3, not 4 x 4)."""
    from torchslim import engines
    from torchslim.binary import XNOR

    torch.manual_seed(0)
    model = _SharedPoolNet().eval()
    x = torch.randn(2, 3, 14, 14)  # 14 -> 7 -> 3 (floor, shared pool) -> ceil 2
    ts.convert_(ts.compress_(model, XNOR(layers=["b1", "b2", "b3"]), example_inputs=x))
    fused = engines.views.fused_epilogues(model)
    assert type(fused.pool) is nn.MaxPool2d and type(fused.ceil) is nn.MaxPool2d
    run = engines.build("eager", model, (3, 14, 14))
    with torch.no_grad():
        assert torch.equal(run(x), model(x)) and torch.equal(fused(x), model(x))


def test_a_module_called_twice_counts_its_macs_twice():
    """Catches: MACs of a module called at two places counted once (``=`` instead of ``+=`` in the
    hook): a shared 3x3 conv, 8 -> 8 channels, twice on 6 x 6 maps: 2 * 8 * 8 * 9 * 36 MACs."""
    from torchslim.measure.counts import count_macs

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x)))

    assert count_macs(Twice(), (8, 6, 6)) == 2 * 8 * 8 * 9 * 36
