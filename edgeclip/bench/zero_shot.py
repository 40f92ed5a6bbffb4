"""Zero-shot accuracy of a bundle on every shift of the procedural benchmark, as a report with a result file.

The figures are `edgeclip.micro.build.evaluate_bundle`'s (the deployed pipeline: runtime preprocessing and the
exported encoders, on `n` held-out images per shift that training never saw); this module adds the report
(JSON with machine and command, Markdown). Run it as a script::

    python -m edgeclip.bench.zero_shot --out docs/results          # the embedded micro bundle, 2048 per shift
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeclip.bench.common import model_label, resolve_bundle, torch_threads
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes
from edgeclip.micro.train import EVAL_SEED

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "REPORT_NAME", "bench_zero_shot"]

REPORT_NAME = "zero-shot-micro"
COLUMNS = ["shift", "n", "accuracy", "chance"]


def bench_zero_shot(bundle: str | Path = "micro", *, n: int = 2048, shifts: Sequence[str] | None = None,
                    backend: str = "onnxruntime", batch_size: int = 256, threads: int | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Zero-shot accuracy (%) of `bundle` on `n` held-out images (seed `EVAL_SEED`) of every shift.

    Returns a `write_report` dict: one row per shift (shift, n, accuracy, chance), plus ``accuracy`` (shift ->
    %) and ``chance`` (100 / classes).
    """
    from edgeclip.micro.build import evaluate_bundle

    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    shift_list = list(shapes.SHIFTS) if shifts is None else list(shifts)
    b = resolve_bundle(bundle)
    chance = 100.0 / len(shapes.class_names())
    t0 = time.perf_counter()
    with torch_threads(threads):
        acc = evaluate_bundle(b.path, n=n, seed=EVAL_SEED, shifts=shift_list, backend=backend,
                              batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    accuracy = {s: 100.0 * float(a) for s, a in acc.items()}
    rows = [{"shift": s, "n": n, "accuracy": a, "chance": chance} for s, a in accuracy.items()]
    config = {"bundle": str(b.path), "model": model_label(b), "n": n, "eval_seed": EVAL_SEED, "shifts": shift_list,
              "backend": backend, "batch_size": batch_size, "threads": threads,
              "torch_threads": torch.get_num_threads(), "classes": shapes.class_names(),
              "template": shapes.ZERO_SHOT_TEMPLATE}
    notes = [f"zero-shot accuracy in % of {model_label(b)} on {n} held-out images per shift (seed {EVAL_SEED}, "
             "never trained on), through the deployed pipeline (`edgeclip.micro.build.evaluate_bundle`: runtime "
             f"preprocessing, the exported encoders on {backend}); chance = 100 / {len(shapes.class_names())} "
             f"classes. {seconds:.0f} s."]
    return {"title": f"Zero-shot accuracy of {model_label(b)} under domain shifts", "bench": "zero-shot",
            "config": config, "columns": list(COLUMNS), "rows": rows, "accuracy": accuracy, "chance": chance,
            "seconds": seconds, "notes": notes, "machine": machine_info(threads)}


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgeclip.bench.zero_shot", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--n", type=int, default=2048, help="held-out images per shift (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and Markdown")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = bench_zero_shot(args.bundle, n=args.n, threads=args.threads, progress=True)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
