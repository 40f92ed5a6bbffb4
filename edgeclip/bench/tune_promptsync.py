"""Choosing PromptSync's λ_a, λ_d, τ and learning rates on the validation stream (never the held-out one).

The search is staged: (A) alignment weight × visual-prompt learning rate, (B) discrimination weight ×
temperature at the best A, (C) the context learning rate at the best A+B. Every configuration adapts on the
same frames with the same views: the views' image embeddings are computed once per frame and cached, so
configurations differ only in the adaptation. TPT on the same cached views is the baseline. The recorded run
and the choice made from it are in `docs/promptsync-tuning.md`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from edgeclip.data import shapes
from edgeclip.data.streams import VALIDATION_SEED, validation
from edgeclip.runtime.methods import TPT, PromptSyncConfig, create_method
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.prototypes import ClassPrototypes, build_prototypes

__all__ = ["cache_views", "search", "write_search"]

logger = logging.getLogger(__name__)

STAGE_A = {"lambda_align": (0.0, 0.3, 1.0, 3.0, 10.0), "lr_delta": (0.0, 1e-3, 5e-3, 2e-2)}
STAGE_B = {"lambda_disc": (0.0, 0.03, 0.1, 0.3, 1.0), "tau": (0.03, 0.07, 0.2)}
STAGE_C = {"lr_ctx": (2.5e-3, 5e-3, 1e-2)}
#: the searched settings, by the names of the tuning record (``lr_ctx`` is `PromptSyncConfig.lr`)
SEARCHED = {"lambda_align": "lambda_align", "lambda_disc": "lambda_disc", "tau": "tau", "lr_ctx": "lr",
            "lr_delta": "lr_delta", "proto_weight": "proto_weight", "online_proto_weight": "online_proto_weight"}


def defaults() -> dict[str, float]:
    """`PromptSyncConfig`'s defaults of the searched settings, by the record's names."""
    cfg = PromptSyncConfig()
    return {record: getattr(cfg, field) for record, field in SEARCHED.items()}


def promptsync(model: EdgeClip, names: list[str], prototypes: ClassPrototypes, seed: int, **settings: Any) -> Any:
    """PromptSync through the registry; `settings` by the record's names or any other config setting."""
    overrides = {SEARCHED.get(k, k): v for k, v in settings.items()}
    return create_method("promptsync", model, names, prototypes=prototypes, seed=seed, **overrides)


def cache_views(model: EdgeClip, n: int, shifts: Sequence[str], n_views: int = 64, seed: int = 0
                ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Per shift: the view embeddings ``[F, N, D]`` of `n` validation frames, and their labels."""
    out = []
    probe = create_method("tpt", model, shapes.class_names(), n_views=n_views, seed=seed, steps=0)
    for shift in shifts:
        batch = validation(shift, n)
        embeds = torch.stack([probe.embed_views(torch.from_numpy(img))[0] for img in batch.images])
        out.append((shift, embeds, torch.as_tensor(batch.labels)))
    return out


def _accuracy(method: TPT, cached: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    accs = {}
    for shift, embeds, labels in cached:
        correct = 0
        for f in range(embeds.shape[0]):
            result = method.adapt(embeds[f])
            method.reset()
            correct += int(result.label == int(labels[f]))
        accs[shift] = 100.0 * correct / embeds.shape[0]
    accs["mean"] = sum(accs.values()) / len(cached)
    return accs


def search(model: EdgeClip, prototypes: ClassPrototypes, *, n: int = 128, shifts: Sequence[str] | None = None,
           seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Run the staged search; returns every configuration's validation accuracy and the chosen one."""
    shifts = list(shifts or shapes.SHIFTS)
    names = shapes.class_names()
    t0 = time.perf_counter()
    cached = cache_views(model, n, shifts, seed=seed)
    rows: list[dict[str, Any]] = []
    tpt_acc = _accuracy(create_method("tpt", model, names, seed=seed), cached)
    rows.append({"stage": "baseline", "method": "tpt", **tpt_acc})
    best = defaults()

    def run_stage(stage: str, grid: dict[str, Sequence[float]]) -> None:
        nonlocal best
        combos = list(itertools.product(*grid.values()))
        scored = []
        for values in tqdm(combos, desc=f"stage {stage}", disable=not progress):
            cfg = {**best, **dict(zip(grid, values, strict=True))}
            method = promptsync(model, names, prototypes, seed, **cfg)
            acc = _accuracy(method, cached)
            rows.append({"stage": stage, "method": "promptsync", **cfg, **acc})
            scored.append((acc["mean"], cfg))
        best = max(scored, key=lambda x: x[0])[1]
        logger.info("stage %s best %s", stage, best)

    run_stage("A", STAGE_A)
    run_stage("B", STAGE_B)
    run_stage("C", STAGE_C)
    chosen = next(r for r in rows if r["method"] == "promptsync" and all(r[k] == v for k, v in best.items()))
    return {"validation_seed": VALIDATION_SEED, "n_per_shift": n, "shifts": shifts, "n_views": 64,
            "prototypes": prototypes.summary(), "rows": rows, "chosen": best, "chosen_accuracy": chosen["mean"],
            "tpt_accuracy": tpt_acc["mean"], "seconds": time.perf_counter() - t0}


def write_search(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """The search as JSON and a Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "promptsync-tuning.json"
    js.write_text(json.dumps(result, indent=1, default=str) + "\n")
    keys = ["stage", "method", "lambda_align", "lr_delta", "lambda_disc", "tau", "lr_ctx", *result["shifts"], "mean"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in result["rows"]:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    md = out_dir / "promptsync-tuning.md"
    md.write_text(
        "# PromptSync hyper-parameter search (validation stream)\n\n"
        f"Validation seed {result['validation_seed']}, {result['n_per_shift']} frames per shift, 64 views, "
        f"prototypes from `{result['prototypes'].get('source', '?')}`. Chosen: `{result['chosen']}` "
        f"(validation mean {result['chosen_accuracy']:.2f} %, TPT {result['tpt_accuracy']:.2f} %). "
        f"{result['seconds']:.0f} s.\n\n" + "\n".join(lines) + "\n"
    )
    return js, md


def _online_accuracy(make: Any, cached: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Online: per shift a fresh method sees the frames in order, its state carried, the collapse guard on."""
    accs = {}
    for shift, embeds, labels in cached:
        method = make()
        correct = 0
        for f in range(embeds.shape[0]):
            result = method.adapt(embeds[f])
            if method.guard.observe(result.label):
                method.reset()
            correct += int(result.label == int(labels[f]))
        accs[shift] = 100.0 * correct / embeds.shape[0]
    accs["mean"] = sum(accs.values()) / len(cached)
    return accs


STAGE_D = {"proto_weight": (0.0, 1.0, 2.0, 3.0, 5.0), "online_proto_weight": (0.0, 1.0, 2.0, 3.0, 5.0),
           "steps": (1, 2, 3)}


def readout_search(model: EdgeClip, prototypes: ClassPrototypes,
                   cached: list[tuple[str, torch.Tensor, torch.Tensor]], *, seed: int = 0,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Stage D, at the A–C choice: the prototype readout weight γ, episodic (``proto_weight``) and online with
    a `PrototypeBank` (``online_proto_weight``), and the number of steps for TPT and PromptSync."""
    names = shapes.class_names()
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[dict[str, Any], Any, bool]] = []
    for g in STAGE_D["proto_weight"]:
        jobs.append(({"mode": "episodic", "proto_weight": g},
                     lambda g=g: promptsync(model, names, prototypes, seed, proto_weight=g), False))
    for g in STAGE_D["online_proto_weight"]:
        jobs.append(({"mode": "online", "online_proto_weight": g},
                     lambda g=g: promptsync(model, names, prototypes, seed, online_proto_weight=g, mode="online"),
                     True))
    for steps in STAGE_D["steps"]:
        jobs.append(({"method": "tpt", "mode": "episodic", "steps": steps},
                     lambda steps=steps: create_method("tpt", model, names, seed=seed, steps=steps), False))
        jobs.append(({"mode": "episodic", "steps": steps},
                     lambda steps=steps: promptsync(model, names, prototypes, seed, steps=steps), False))
    for what, make, online in tqdm(jobs, desc="stage D", disable=not progress):
        acc = _online_accuracy(make, cached) if online else _accuracy(make(), cached)
        rows.append({"stage": "D", "method": "promptsync", **what, **acc})
        logger.info("stage D %s: %.2f", what, acc["mean"])
    return rows


def _main(argv: Sequence[str]) -> None:
    import argparse

    import edgeclip

    p = argparse.ArgumentParser(prog="python -m edgeclip.bench.tune_promptsync")
    p.add_argument("out", type=Path)
    p.add_argument("n", type=int, nargs="?", default=128, help="validation frames per shift")
    p.add_argument("--stage", choices=["ABC", "D"], default="ABC", help="ABC: losses and learning rates; "
                   "D: the prototype readout and the steps, at the defaults")
    p.add_argument("--views-cache", type=Path, default=None,
                   help="torch file of cached validation view embeddings (written if missing)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    micro = edgeclip.load(edgeclip.default_bundle(), threads=1)
    protos = build_prototypes(micro, "shapes:512", progress=False)
    if args.stage == "ABC":
        res = search(micro, protos, n=args.n, progress=True)
        for path in write_search(res, args.out):
            logger.info("wrote %s", path)
        return
    t0 = time.perf_counter()
    if args.views_cache is not None and args.views_cache.is_file():
        cached = torch.load(args.views_cache, weights_only=False)["cached"]
    else:
        cached = cache_views(micro, args.n, shapes.SHIFTS)
        if args.views_cache is not None:
            torch.save({"cached": cached}, args.views_cache)
    rows = readout_search(micro, protos, cached, progress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "promptsync-tuning-readout.json"
    out.write_text(json.dumps({"validation_seed": VALIDATION_SEED, "n_per_shift": int(cached[0][1].shape[0]),
                               "defaults": defaults(), "rows": rows,
                               "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    logger.info("wrote %s", out)


if __name__ == "__main__":  # python -m edgeclip.bench.tune_promptsync OUT_DIR [N] [--stage D]
    import sys

    _main(sys.argv[1:])
