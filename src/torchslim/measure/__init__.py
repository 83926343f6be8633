"""Measurement: params, nonzeros, bytes, MACs, latency, reports."""

from torchslim.measure.accuracy import evaluate
from torchslim.measure.counts import count_macs, count_nonzeros, count_params, layer_table, register_macs
from torchslim.measure.latency import latency_ms, layer_latency
from torchslim.measure.report import ROW_KEYS, file_bytes, measure, plot_tradeoff, to_markdown, to_table, write_report

__all__ = [
    "ROW_KEYS",
    "count_macs",
    "evaluate",
    "count_nonzeros",
    "count_params",
    "file_bytes",
    "latency_ms",
    "layer_latency",
    "layer_table",
    "measure",
    "plot_tradeoff",
    "register_macs",
    "to_markdown",
    "to_table",
    "write_report",
]
