"""SHIP + CoOp against CoOp alone on a base-to-new split of the micro world's 16 classes.

**Split.** Class ``colour × shape`` is a base class when (colour index + shape index) is even — a checkerboard, so
every colour and every shape has two base and two new classes (8 base, 8 new; see `base_new_split`). The new
classes have no training images: SHIP synthesises their features; CoOp alone trains on the base classes and
predicts the new ones with its learnt context.

**Data.** Per domain (clean and one shift): training images of the base classes from the procedural proxy
stream (``shapes:N:SHIFT``, `edgeclip.runtime.pool_sources`, seed `TRAIN_SEED`) with augmented views; validation
images of the base classes only from the validation stream (`edgeclip.data.streams.validation`); test images
from the held-out stream (`edgeclip.data.streams.held_out`), never used to train or select. Both methods select
on the same base-class validation images (CoOp: its epoch; SHIP: its prompt run).

**Metrics.** Base accuracy (base-class frames among base classes only), new accuracy (new-class frames among new
classes only), harmonic mean H; SHIP − CoOp differences with paired 95 % percentile bootstrap intervals over the
test frames (`edgeclip.bench.paired`; for H the base and new frames are resampled within their side, the same
resample for both methods). Run it as a script::

    edgeclip bench ship --out docs/results
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.bench.common import model_label, resolve_bundle, torch_threads
from edgeclip.bench.paired import N_RESAMPLES, paired_difference
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "REPORT_NAME", "base_new_split", "bench_ship", "h_difference", "synthetic_fidelity"]

REPORT_NAME = "ship-micro"
COLUMNS = ["domain", "method", "base", "new", "H", "n_base", "n_new", "fit_s"]
#: base seed of the training images (the procedural proxy stream; disjoint from validation and held-out seeds)
TRAIN_SEED = 20_000


def base_new_split() -> tuple[list[str], list[str]]:
    """``(base, new)``: the checkerboard split of the 16 colour × shape classes (8 and 8)."""
    names = shapes.class_names()
    colours = list(dict.fromkeys(n.split()[0] for n in names))
    kinds = list(dict.fromkeys(n.split()[1] for n in names))
    base = [n for n in names if (colours.index(n.split()[0]) + kinds.index(n.split()[1])) % 2 == 0]
    return base, [n for n in names if n not in base]


def _harmonic(b: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.where(b + n > 0, 2 * b * n / np.maximum(b + n, 1e-12), 0.0)


def h_difference(a_base: np.ndarray, a_new: np.ndarray, b_base: np.ndarray, b_new: np.ndarray, *,
                 n_resamples: int = N_RESAMPLES, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """H of `a` minus H of `b` in points with its paired percentile bootstrap interval: base frames and new frames
    are resampled with replacement within their side, the same frames for both methods."""
    rng = np.random.default_rng(seed)
    ab, an, bb, bn = (np.asarray(x, dtype=np.float64) for x in (a_base, a_new, b_base, b_new))
    diffs = []
    for _ in range(0, n_resamples, 1000):
        k = min(1000, n_resamples - len(diffs))
        ib = rng.integers(0, len(ab), size=(k, len(ab)))
        inew = rng.integers(0, len(an), size=(k, len(an)))
        ha = _harmonic(ab[ib].mean(1), an[inew].mean(1))
        hb = _harmonic(bb[ib].mean(1), bn[inew].mean(1))
        diffs.extend((100.0 * (ha - hb)).tolist())
    q = 100.0 * np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    lo, hi = np.percentile(np.asarray(diffs), q)
    diff = 100.0 * float(_harmonic(np.array(ab.mean()), np.array(an.mean())) -
                         _harmonic(np.array(bb.mean()), np.array(bn.mean())))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "n": len(ab) + len(an), "level": level}


def _correct(text: torch.Tensor, embeds: torch.Tensor, labels: torch.Tensor, base: list[int],
             new: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame correctness of base frames (among base classes) and new frames (among new classes)."""
    logits = embeds @ text.T.to(embeds.device)
    out = []
    for cols in (base, new):
        idx = torch.tensor(cols)
        rows = torch.isin(labels, idx)
        pred = idx[logits[rows][:, idx].argmax(1).cpu()]
        out.append((pred == labels[rows]).numpy())
    return out[0], out[1]


def synthetic_fidelity(feats: torch.Tensor, classes: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                       new: list[int]) -> dict[str, float]:
    """How well features of the new classes (`feats` ``[N, D]`` with `classes` indexing `new`) stand for the real
    new-class frames (`x`, `y` with labels in the full class list): nearest-class-mean accuracy (%) among the new
    classes, the mean cosine between feature and real class means, and the spreads (mean cosine to the own class
    mean) of the features and of the real frames."""
    import torch.nn.functional as F

    feats, x = F.normalize(feats.float(), dim=-1), F.normalize(x.float(), dim=-1)
    means = torch.stack([F.normalize(feats[classes == i].mean(0), dim=0) for i in range(len(new))])
    rows = torch.isin(y, torch.tensor(new))
    target = torch.tensor([new.index(int(v)) for v in y[rows]])
    real = torch.stack([F.normalize(x[rows][target == i].mean(0), dim=0) for i in range(len(new))])
    acc = 100.0 * float(((x[rows] @ means.T).argmax(1) == target).float().mean())
    return {"prototype acc": acc, "cos to real mean": float((means * real).sum(1).mean()),
            "spread": float((feats * means[classes]).sum(1).mean()),
            "real spread": float((x[rows] * real[target]).sum(1).mean())}


def _fmt(d: dict[str, float] | Any) -> str:
    if not isinstance(d, dict):
        d = d.to_dict()
    return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def bench_ship(bundle: str | Path = "micro", *, domains: Sequence[str] = ("clean", "blur"), shots: int = 16,
               extra_views: int = 3, n_val: int = 512, n_test: int = 2048, vae_epochs: int = 50,
               prompt_every: int = 10, prompt: dict[str, Any] | None = None, backend: str = "onnxruntime",
               same_scale: bool = True, long_vae: int | None = 300, threads: int | None = None, seed: int = 0,
               progress: bool = False) -> dict[str, Any]:
    """SHIP + CoOp vs CoOp alone (the same prompt settings, base classes only) per domain; a `write_report` dict.

    Args:
        domains: shifts of the procedural dataset, each trained, selected and tested on its own images.
        shots: training images per base class; extra_views: augmented views per training image.
        n_val: validation stream images (its base-class frames are the validation pool); n_test: held-out frames.
        vae_epochs, prompt_every: SHIP's VAE stage; prompt: `CoOpConfig` settings of both prompt learners.
        same_scale: also run SHIP with its prompt stage at the bundle's logit scale (CoOp's), besides 100.
        long_vae: also run SHIP with this many VAE epochs (the micro pools give the paper's 50 epochs only ~100
            steps), prompt runs at the same five points; None skips it.
        seed: the VAE's and CoOp's seed (and the views' seed).
    """
    import edgeclip
    from edgeclip.data import streams
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool
    from edgeclip.runtime.methods import create_method
    from edgeclip.runtime.methods.pseudolabel import harmonic_mean
    from edgeclip.runtime.methods.ship import SHIP, SHIPConfig

    prompt = dict(prompt or {"epochs": 20, "batch_size": 32, "lr": 2e-3, "momentum": 0.9, "weight_decay": 5e-4,
                             "warmup_epochs": 1})
    b = resolve_bundle(bundle)
    base, new = base_new_split()
    names = base + new
    all_names = shapes.class_names()
    base_i, new_i = list(range(len(base))), list(range(len(base), len(names)))
    rows: list[dict[str, Any]] = []
    diffs: list[dict[str, Any]] = []
    detail: dict[str, Any] = {}
    fidelity_rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    with torch_threads(threads):
        model = edgeclip.load(b.path, backend=backend, threads=threads)
        for dom in domains:
            train = build_feature_pool(model, f"shapes:{shots * len(base)}:{dom}", class_names=base,
                                       views=ViewPolicy(extra_views=extra_views, view_seed=seed), seed=TRAIN_SEED,
                                       cache=False, progress=progress)
            vb = streams.validation(dom, n_val)
            keep = [i for i, y in enumerate(vb.labels.tolist()) if all_names[y] in base]
            val = build_feature_pool(model, [vb.images[i] for i in keep], class_names=base,
                                     labels=[base.index(all_names[int(vb.labels[i])]) for i in keep], cache=False)
            tb = streams.held_out(dom, n_test)
            test = build_feature_pool(model, list(tb.images), class_names=names,
                                      labels=[names.index(all_names[int(y)]) for y in tb.labels], cache=False)
            x, y = test.plain, test.labels
            results: dict[str, tuple[np.ndarray, np.ndarray, float, Any]] = {}

            zs = SHIP(model, names, SHIPConfig(new_classes=tuple(new)))
            results["zero-shot (\"a photo of a\")"] = (*_correct(zs.text_embeds(), x, y, base_i, new_i), 0.0, None)

            t0 = time.perf_counter()
            coop = create_method("coop", model, base, seed=seed, **prompt)
            coop_report = coop.fit(train, val=val, progress=progress)
            coop_all = create_method("coop", model, names, seed=seed, **prompt)
            coop_all.load_state_dict(coop.state_dict())  # the same shared context, read over base + new classes
            results["CoOp alone (base classes)"] = (*_correct(coop_all.text_embeds(), x, y, base_i, new_i),
                                                    time.perf_counter() - t0, coop_report)

            paper = {"vae_epochs": vae_epochs, "prompt_every": prompt_every, "logit_scale": 100.0}
            variants = {"SHIP + CoOp": paper}
            if same_scale:
                variants[f"SHIP + CoOp, logit scale {model.logit_scale:.1f}"] = {
                    **paper, "logit_scale": float(model.logit_scale)}
            if long_vae:
                variants[f"SHIP + CoOp, {long_vae} VAE epochs"] = {
                    **paper, "vae_epochs": long_vae, "prompt_every": max(1, long_vae * prompt_every // vae_epochs)}
            fidelity_rows.append({"domain": dom, "source": "zero-shot text (\"a photo of a\")",
                                  **synthetic_fidelity(zs.text_embeds()[new_i], torch.arange(len(new)), x, y,
                                                       new_i)})
            for label, overrides in variants.items():
                t0 = time.perf_counter()
                ship = create_method("ship", model, names, new_classes=tuple(new), vae_seed=seed, seed=seed,
                                     **overrides, **prompt)
                ship_report = ship.fit(train, val=val, progress=progress)
                results[label] = (*_correct(ship.text_embeds(), x, y, base_i, new_i), time.perf_counter() - t0,
                                  ship_report)
                feats, cls = ship.synthetic_features(64, seed=seed)
                fidelity_rows.append({"domain": dom, "source": f"{label}: synthetic",
                                      **synthetic_fidelity(feats, cls - len(base), x, y, new_i)})
            for method, (cb, cn, secs, _) in results.items():
                bacc, nacc = 100 * float(cb.mean()), 100 * float(cn.mean())
                rows.append({"domain": dom, "method": method, "base": bacc, "new": nacc,
                             "H": harmonic_mean(bacc, nacc), "n_base": len(cb),
                             "n_new": len(cn), "fit_s": secs})
            cb, cn = results["CoOp alone (base classes)"][:2]
            detail[dom] = {"coop_report": coop_report.to_dict(), "n_train_images": len(train),
                           "n_val_images": len(val), "n_test": n_test, "ship": {}}
            for label in variants:
                sb, sn, _, rep = results[label]
                d_base = paired_difference(sb, cb, seed=seed)
                d_new = paired_difference(sn, cn, seed=seed)
                d_h = h_difference(sb, sn, cb, cn, seed=seed)
                diffs.append({"domain": dom, "SHIP variant": label, "base": d_base.format(), "new": d_new.format(),
                              "H": _fmt(d_h), "verdict (H)": "SHIP beats CoOp" if d_h["lo"] > 0 else
                              ("SHIP worse" if d_h["hi"] < 0 else "no significant difference")})
                detail[dom]["ship"][label] = {"base_diff": d_base.to_dict(), "new_diff": d_new.to_dict(),
                                              "H_diff": d_h, "report": rep.to_dict()}
            log.info("ship bench %s: %s", dom, diffs[-1])
    seconds = time.perf_counter() - t_all
    config = {"bundle": str(b.path), "model": model_label(b), "domains": list(domains), "base_classes": base,
              "new_classes": new, "shots": shots, "extra_views": extra_views, "n_val": n_val, "n_test": n_test,
              "train_seed": TRAIN_SEED, "validation_seed": streams.VALIDATION_SEED, "eval_seed": streams.EVAL_SEED,
              "vae_epochs": vae_epochs, "prompt_every": prompt_every, "long_vae": long_vae, "prompt": prompt,
              "seed": seed,
              "backend": backend, "threads": threads, "torch_threads": torch.get_num_threads()}
    notes = [
        f"{model_label(b)}; base/new split: checkerboard over colour × shape (base: {', '.join(base)}; new: "
        f"{', '.join(new)}). Per domain: {shots} training images per base class ({extra_views} augmented views "
        f"each, procedural proxy stream seed {TRAIN_SEED}), validation = the base-class frames of the validation "
        f"stream (seed {streams.VALIDATION_SEED}, {n_val} frames before filtering), test = {n_test} held-out frames "
        f"(seed {streams.EVAL_SEED}), never used to train or select.",
        "base = accuracy of base-class frames among the 8 base classes only; new = accuracy of new-class frames "
        "among the 8 new classes only; H = harmonic mean (points).",
        f"CoOp alone and SHIP's prompt stage share the prompt settings {prompt} and select on the same base-class "
        "validation frames (CoOp: its best epoch; SHIP: its best prompt run, one every "
        f"{prompt_every} of {vae_epochs} VAE epochs). Differences: CoOp's loss uses the bundle's logit scale, "
        "SHIP's prompt stage 100 (the paper's; the 'logit scale' variant uses the bundle's, as CoOp does); "
        "SHIP trains one prompt per run, so it spends "
        f"{max(1, vae_epochs // prompt_every)}× CoOp's prompt epochs plus the VAE.",
        "Differences SHIP − CoOp in points with paired 95 % percentile bootstrap intervals over the test frames "
        f"({N_RESAMPLES} resamples; for H base and new frames resampled within their side).",
        "The generator table: features for the new classes — the zero-shot text embeddings, or 64 synthetic "
        "features per new class from each fitted generator — against the real new-class test frames: "
        "'prototype acc' classifies those frames among the new classes by the nearest class mean of the "
        "features; 'cos to real mean' is the mean over new classes of the cosine between the features' class "
        "mean and the real frames' class mean; 'spread' is the mean cosine of a feature to its own class mean "
        "(real frames for comparison in the last column: lower is more varied).",
        f"{seconds:.0f} s in all.",
    ]
    return {"title": f"SHIP + CoOp vs CoOp alone, base-to-new on the micro world ({model_label(b)})",
            "bench": "ship", "config": config, "columns": list(COLUMNS), "rows": rows,
            "tables": [{"title": "SHIP − CoOp alone (points, paired 95 % bootstrap interval)",
                        "columns": ["domain", "SHIP variant", "base", "new", "H", "verdict (H)"], "rows": diffs},
                       {"title": "What the generator synthesises for the new classes",
                        "columns": ["domain", "source", "prototype acc", "cos to real mean", "spread",
                                    "real spread"], "rows": fidelity_rows}],
            "detail": detail, "seconds": seconds, "notes": notes, "machine": machine_info(threads)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench ship`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--domains", default="clean,blur", help="comma-separated shifts (default clean,blur)")
    p.add_argument("--shots", type=int, default=16, help="training images per base class (default 16)")
    p.add_argument("--n-test", type=int, default=2048, help="held-out frames per domain (default 2048)")
    p.add_argument("--vae-epochs", type=int, default=50, help="SHIP VAE epochs (default 50)")
    p.add_argument("--long-vae", type=int, default=300,
                   help="also run SHIP with this many VAE epochs (0: skip; default 300)")
    p.add_argument("--prompt-epochs", type=int, default=20, help="epochs of every prompt learner (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and Markdown")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench ship` with parsed `args`: write the reports, return the results."""
    prompt = {"epochs": args.prompt_epochs, "batch_size": 32, "lr": 2e-3, "momentum": 0.9, "weight_decay": 5e-4,
              "warmup_epochs": 1}
    results = bench_ship(args.bundle, domains=[d.strip() for d in args.domains.split(",") if d.strip()],
                         shots=args.shots, n_test=args.n_test, vae_epochs=args.vae_epochs, prompt=prompt,
                         long_vae=args.long_vae or None,
                         threads=args.threads, seed=args.seed, progress=True)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    return results
