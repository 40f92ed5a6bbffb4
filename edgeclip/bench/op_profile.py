"""Where an ONNX graph's time goes: onnxruntime's own profiler, summed per op type.

`op_times` runs a graph ``runs`` times on the CPU with profiling on and sums each kernel's duration by op type
(ms per run). `op_breakdown` puts an FP32 and an INT8 graph side by side and works out what INT8 could win at
most: the products (`GEMM_OPS`) are the only ops the quantiser turns into integer kernels, so with FP32's time
outside them unchanged, the speed-up is bounded by FP32 total / FP32 time outside them (Amdahl), however fast
the integer kernels are. FP32's MatMul also counts the attention's activation products, which stay FP32, so
the bound is generous. Both graphs run the same optimisation level and threads the runtime uses.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GEMM_OPS", "op_breakdown", "op_times"]

log = logging.getLogger(__name__)

#: Op types that compute a product with constant weights, in FP32 or after quantisation (with ORT's fusions).
GEMM_OPS = frozenset({"MatMul", "Gemm", "Conv", "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv",
                      "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm"})


def op_times(path: Path, feeds: Mapping[str, np.ndarray], *, runs: int = 10, threads: int | None = None,
             warmup: int = 2) -> dict[str, float]:
    """Milliseconds per run by op type (the kernels onnxruntime ran after its fusions), most expensive first."""
    import onnxruntime as ort

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    with tempfile.TemporaryDirectory(prefix="edgeclip-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        warm = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            warm.run(None, dict(feeds))
        del warm
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first profiled run allocates: it is left out below
            sess.run(None, dict(feeds))
        profile = Path(sess.end_profiling())
        events = json.loads(profile.read_text(encoding="utf-8"))
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    per_run = len(kernels) // (runs + 1)  # every run launches the same kernels
    total: Counter[str] = Counter()
    for e in kernels[per_run:]:
        total[str(e["args"]["op_name"])] += float(e["dur"])
    return {op: us / runs / 1e3 for op, us in total.most_common()}


def op_breakdown(fp32: Path, int8: Path, feeds: Mapping[str, np.ndarray], *, runs: int = 10,
                 threads: int | None = None, top: int = 8) -> dict[str, Any]:
    """FP32 and INT8 op times side by side: ``rows`` (op type, FP32 ms, INT8 ms, shares) for the `top` most
    expensive op types of either graph plus "other" and "total", ``gemm_share`` (FP32's share in `GEMM_OPS`)
    and ``int8_bound`` (FP32 total / FP32 non-GEMM time: the most INT8 GEMMs alone could win)."""
    a = op_times(fp32, feeds, runs=runs, threads=threads)
    b = op_times(int8, feeds, runs=runs, threads=threads)
    ta, tb = sum(a.values()), sum(b.values())
    gemm_a = sum(v for k, v in a.items() if k in GEMM_OPS)
    gemm_b = sum(v for k, v in b.items() if k in GEMM_OPS)
    ranked = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0.0), b.get(k, 0.0)))
    keep = ranked[:top]
    rows = [{"op": k, "gemm": k in GEMM_OPS, "fp32_ms": a.get(k, 0.0), "int8_ms": b.get(k, 0.0),
             "fp32_share": a.get(k, 0.0) / ta if ta else None, "int8_share": b.get(k, 0.0) / tb if tb else None}
            for k in keep]
    rest_a = ta - sum(r["fp32_ms"] for r in rows)
    rest_b = tb - sum(r["int8_ms"] for r in rows)
    rows.append({"op": "other", "gemm": None, "fp32_ms": rest_a, "int8_ms": rest_b,
                 "fp32_share": rest_a / ta if ta else None, "int8_share": rest_b / tb if tb else None})
    rows.append({"op": "total", "gemm": None, "fp32_ms": ta, "int8_ms": tb, "fp32_share": 1.0, "int8_share": 1.0})
    non_gemm = ta - gemm_a
    return {"rows": rows, "runs": runs, "threads": threads, "fp32_total_ms": ta, "int8_total_ms": tb,
            "fp32_gemm_ms": gemm_a, "int8_gemm_ms": gemm_b, "gemm_share": gemm_a / ta if ta else None,
            "gemm_speedup": gemm_a / gemm_b if gemm_b else None,
            "int8_bound": ta / non_gemm if non_gemm > 0 else None,
            "profiled_speedup": ta / tb if tb else None}
