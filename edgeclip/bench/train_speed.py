"""`edgeclip bench train`: one epoch of a GRIP round, edgeclip's way against the official code's structure.

Both train the same 16-vector textual prompt (`pseudolabel`'s, N(0, 0.02)) with SGD on the same `samples`
pseudo-labelled images at batch `batch`, C classes, the text tower's forward and backward every step:

* **edgeclip**: the images were encoded once into a feature pool (cached embeddings; the one-off encoding time
  is reported apart), and the text tower runs truncated after the last end-of-text token (with the shared
  prefix where the tower allows it) — what `PseudoLabel.fit` does.
* **official structure**: every step re-runs the PyTorch image tower on the batch's pixels (no gradient) and
  the text tower at the full 77-token context — how the official training loop spends an epoch. (It also
  decodes and augments the images every epoch; that is left out here, which favours the peer.)

Epochs are timed round-robin (`paired_calls`: one epoch of each per round, the order alternating), with the peak
memory growth of each (``peak_mb``: the largest, which includes the first epoch's one-off allocations;
``peak_mb_median``: a typical epoch); the ratio is the median of the per-round ratios with their 10th–90th percentiles.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.bench.common import class_names, model_label, random_weight_bundle, torch_threads
from edgeclip.bench.memory import MEMORY_METHODS, PeakMemory
from edgeclip.bench.report import write_report
from edgeclip.bench.timing import paired_calls, ratio_with_spread
from edgeclip.data import shapes
from edgeclip.runtime.methods import create_method
from edgeclip.runtime.methods.zeroshot import image_logits
from edgeclip.runtime.model import EdgeClip, load

__all__ = ["bench_train", "write_train_report"]

log = logging.getLogger(__name__)

REPORT_NAME = "train-speed"


def _epoch(step: Any, n: int, batch: int, generator: torch.Generator) -> float:
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch):
        total += step(order[start : start + batch])
    return total


def bench_train(bundle: str | Path | None = None, *, model_name: str | None = None, classes: int | None = None,
                samples: int = 256, batch: int = 16, rounds: int = 5, max_time: float | None = 120.0,
                threads: int | None = None, cache_dir: str | Path = "bench-results/bundles",
                progress: bool = False) -> dict[str, Any]:
    """Time one training epoch both ways (see the module docstring) and return the results (JSON-ready)."""
    b = random_weight_bundle(model_name, cache_dir, progress=progress) if model_name else bundle
    with torch_threads(threads):
        ours_model = load(b, threads=threads)
        peer_model: EdgeClip = load(ours_model.bundle, backend="torch", threads=threads)
        names = shapes.class_names() if classes is None else class_names(classes)
        method = create_method("pseudolabel", ours_model, names, strategy="grip")
        ctx = method.prompt.ctx
        data = shapes.make_batch(samples, seed=20_000)
        pixels = peer_model.preprocess(list(data.images))
        labels = torch.randint(0, len(names), (samples,), generator=torch.Generator().manual_seed(0))
        memory = PeakMemory("cpu")
        memory.start()
        t0 = time.perf_counter()
        with torch.no_grad():
            cached = ours_model.image_encoder(ours_model.preprocess(list(data.images))).float()
        encode_s = time.perf_counter() - t0
        encode_mb = memory.stop()
        opt = torch.optim.SGD([ctx], lr=1e-3, momentum=0.9)
        gen = torch.Generator().manual_seed(1)

        def train_step(image_embeds: torch.Tensor, text: torch.Tensor, rows: torch.Tensor) -> float:
            loss = F.cross_entropy(image_logits(ours_model, image_embeds, text), labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        def ours_step(rows: torch.Tensor) -> float:
            return train_step(cached[rows], method._train_text(), rows)

        def peer_step(rows: torch.Tensor) -> float:
            with torch.no_grad():
                image_embeds = peer_model.image_encoder(pixels[rows]).float()
            tokens, eot = method.prompt.build(names)
            return train_step(image_embeds, method.tower(tokens, eot, truncate=False).float(), rows)

        fns = {"edgeclip": lambda i: _epoch(ours_step, samples, batch, gen),
               "official structure": lambda i: _epoch(peer_step, samples, batch, gen)}
        measured = paired_calls(fns, rounds, memory=memory, sync=None, max_time=max_time, min_rounds=2)
    ours, peer = measured.stats["edgeclip"], measured.stats["official structure"]
    ratio = ratio_with_spread(ours, peer, paired=True)
    rows = [{"implementation": k, "epoch_median_ms": s.median_ms, "epoch_p90_ms": s.p90_ms, "rounds": s.n,
             "peak_mb": max(measured.peaks_mb[k]),
             "peak_mb_median": float(statistics.median(measured.peaks_mb[k]))} for k, s in measured.stats.items()]
    tokens, eot = method.prompt.build(names)
    return {
        "title": f"One GRIP training epoch on {model_label(ours_model.bundle)}, C = {len(names)}: cached embeddings "
                 "and the truncated text tower against the official structure",
        "config": {"bundle": str(ours_model.bundle.path), "model": model_label(ours_model.bundle),
                   "classes": len(names), "samples": samples, "batch": batch, "rounds": rounds,
                   "max_time": max_time, "threads": threads, "backend": ours_model.backend,
                   "context_tokens": int(tokens.shape[1]), "truncated_tokens": int(eot.max()) + 1},
        "rows": rows, "speedup": ratio, "encode_once_s": encode_s, "encode_once_peak_mb": encode_mb,
        "memory_method": MEMORY_METHODS[memory.method],
        "notes": [f"edgeclip's epoch is {ratio['ratio']:.2f}× faster [{ratio['ratio_lo']:.2f}, {ratio['ratio_hi']:.2f}]"
                  f" (median of the per-round ratios, 10th–90th percentile); the one-off encoding of the "
                  f"{samples} images took {encode_s:.2f} s",
                  f"text tower tokens: {int(eot.max()) + 1} (truncated) vs {int(tokens.shape[1])} (full context)"],
    }


def write_train_report(results: dict[str, Any], out_dir: str | Path, suffix: str | None = None) -> dict[str, Path]:
    """Write ``out_dir/train-speed[-SUFFIX].json`` and ``.md``; returns their paths."""
    name = REPORT_NAME if not suffix else f"{REPORT_NAME}-{suffix}"
    return write_report(results, Path(out_dir), name)
