"""Measurement: counts, MACs per layer, latency, report formats."""

import json

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
