"""Benchmark harness: encoder latency across backends, per-frame kernels against TPT-style baselines, test-time
adaptation (accuracy, speed against the reference TPT, text path), timing helpers, JSON + Markdown reports."""

from edgeclip.bench.encoders import bench_encoders, bench_encoders_for_model
from edgeclip.bench.kernels import bench_kernels
from edgeclip.bench.report import machine_info, markdown_table, write_report
from edgeclip.bench.timing import TimingStats, measure, measure_interleaved, ratio_with_spread
from edgeclip.bench.tta import bench_tta, write_tta_reports

__all__ = [
    "TimingStats",
    "bench_encoders",
    "bench_encoders_for_model",
    "bench_kernels",
    "bench_tta",
    "machine_info",
    "markdown_table",
    "measure",
    "measure_interleaved",
    "ratio_with_spread",
    "write_report",
    "write_tta_reports",
]
