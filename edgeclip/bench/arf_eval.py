"""ARF (anchor-regularised robust fine-tuning) against zero-shot, plain fine-tuning and WiSE-FT on the micro world.

The paper's claim to check (Han et al., CVPR 2024): ARF keeps the in-distribution accuracy of plain fine-tuning
and is better under domain shift and zero-shot on classes the fine-tune never saw.

**Split of the classes.** 12 fine-tune classes and 4 held-out classes, a Latin square over colour × shape
(`held_out_split`: colour i is held out with shape (i + `HOLDOUT_OFFSET`) mod 4), so every colour and every shape
is held out exactly once and every held-out class shares its colour and its shape with fine-tune classes. No
image of a held-out class is ever in the fine-tune pool (`check_disjoint`, checked on the labels of the images
actually drawn).

**Fine-tune domain.** One shift where zero-shot leaves room. ``--shift auto`` (the default) chooses among
`CANDIDATE_SHIFTS` on the validation stream only (`choose_shift`): per candidate, plain fine-tuning in device
mode on a training pool of its own seed (`TUNE_TRAIN_SEED`), and the shift where it gains most over zero-shot
on the validation frames of the fine-tune classes is taken (the room fine-tuning can use). The table of that
choice is in the report. ``invert`` is not a candidate nor a test shift (zero-shot at chance: there is no
robustness to keep).

**Data.** Training: `per_class` images per fine-tune class in the fine-tune domain from the procedural proxy
stream seed `TRAIN_SEED` (disjoint from the validation and held-out seeds), with their rich captions
(`ShapesBatch.captions`: size, position, background) as the text-compensated anchors. Image-text-pair pool: a
"pretraining-like" set, `n_pairs` clean-domain images of all 16 classes with their captions, seed `PAIR_SEED`
(the micro CLIP was pretrained on such clean captioned scenes); retrieval takes the pairs nearest to the
fine-tune classes' prompts through the frozen encoders (`retrieve_pairs`; the report counts how many retrieved
pairs show a held-out class). Validation: the fine-tune-class frames of `n_val` validation-stream images
(`edgeclip.data.streams.validation`) in the fine-tune domain, for epoch selection only. Test: `n_test`
held-out-stream images per shift (`edgeclip.data.streams.held_out`), never used to train or select.

**Columns.** (a) ID: the fine-tune domain, fine-tune-class frames scored among the 12 fine-tune classes;
(b) every other test shift (`TEST_SHIFTS`), the same frames and classes, and their mean; (c) held-out: the
held-out-class frames scored among the 4 held-out classes (zero-shot transfer of the fine-tuned model), in the
fine-tune domain and in clean, and their mean. A further table scores the held-out frames among all 16 classes
(harder: a fine-tune that pulls held-out images onto the fine-tune classes loses there); it is not part of the
verdict.

**Methods, per mode.** zero-shot; plain fine-tuning (the same loss, λ_tc = λ_it = 0); WiSE-FT, α = 0.5, of the
plain fine-tune; ARF (λ_tc = λ_it = 1).

* *device* (`edgeclip.runtime.methods.arf`): encoders frozen, a prompt context and a residual adapter trained
  on cached features (one extra augmented view per image, a crop of 80–100 % of the area, no flip since the
  captions name left and right); `epochs` epochs, the epoch with the best validation accuracy kept; WiSE-FT
  interpolates the head's tensors (`ARF.interpolated`).
* *workstation* (`edgeclip.export.finetune`): the image tower fine-tuned in PyTorch (text tower frozen; its own
  random resized crops of the same range, no flip), WiSE-FT on the tower's weights (`wise_ft`). Its API keeps
  the last epoch, so the number of epochs is chosen on the validation frames from `workstation_epochs` (default
  half of `epochs` and `epochs`), per method. Test images go through the fine-tuned PyTorch visual tower (no
  export); class prompts through the frozen exported text encoder (the tower does not change).

**Statistics.** ARF − plain fine-tuning and ARF − WiSE-FT in points, paired 95 % percentile bootstrap intervals
over test frames (`edgeclip.bench.paired`; the means over shifts and over the held-out domains resample every
stratum). Verdict on the claim per mode against plain fine-tuning: ID "same" when the interval contains 0 or
the difference is within `ID_MARGIN` points (or ARF is better); shift and held-out "better" only where the
interval of the mean lies above 0. The intervals cover the test frames of one training run; ``replicates``
training runs per mode (run k: training images seed ``TRAIN_SEED + k``, training seed ``seed + k``; the
workstation at the epochs chosen for run 0) show the spread over training runs as point differences. Run::

    edgeclip bench arf --out docs/results
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeclip.bench.common import model_label, resolve_bundle, torch_threads
from edgeclip.bench.paired import MEAN, PairedDifference, paired_difference, paired_differences
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, VALIDATION_SEED, held_out, validation
from edgeclip.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CANDIDATE_SHIFTS", "HOLDOUT_OFFSET", "ID_MARGIN", "MODES", "PAIR_SEED", "REPORT_NAME", "TEST_SHIFTS",
           "TRAIN_SEED", "TUNE_TRAIN_SEED", "WISE_ALPHA", "bench_arf", "check_disjoint", "choose_shift",
           "claim_verdict", "held_out_split"]

REPORT_NAME = "arf-micro"
#: the shifts ``--shift auto`` chooses the fine-tune domain from (clean is at 99.5 % zero-shot, invert at chance)
CANDIDATE_SHIFTS = ("gaussian_noise", "blur", "low_contrast", "sketch", "textured_background")
#: the shifts every method is tested under (the fine-tune domain is the ID column, the others the shift columns)
TEST_SHIFTS = ("clean", "gaussian_noise", "blur", "low_contrast", "sketch", "textured_background")
MODES = ("device", "workstation")
METHODS = ("zero-shot", "plain FT", "WiSE-FT", "ARF")
#: the WiSE-FT baseline's interpolation weight of the fine-tuned side
WISE_ALPHA = 0.5
#: the Latin square's diagonal: colour i is held out with shape (i + offset) mod 4
HOLDOUT_OFFSET = 0
#: ID counts as "the same" when ARF − plain FT is within this many points (or its interval contains 0)
ID_MARGIN = 1.0
#: seed of the fine-tune images (procedural proxy stream; disjoint from the validation and held-out seeds)
TRAIN_SEED = 24_000
#: seed of the image-text pair pool (clean, all 16 classes)
PAIR_SEED = 24_500
#: seed of the training pools of the shift choice (never the measurement's)
TUNE_TRAIN_SEED = 24_200
#: the views of a device-mode pool: the plain one and one crop of 80-100 % of the area, never flipped
EXTRA_VIEWS = 1
VIEW_SCALE = (0.8, 1.0)

Scorer = Callable[[str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""shift → logits of that shift's test frames over the fine-tune classes, the held-out classes and all 16"""


# -- classes ------------------------------------------------------------------------------------------------
def held_out_split(offset: int = HOLDOUT_OFFSET) -> tuple[list[str], list[str]]:
    """``(fine_tune, held_out)``: 12 and 4 class names; colour i is held out with shape (i + offset) mod 4, so
    each colour and each shape is held out exactly once (a Latin square's diagonal)."""
    held = [f"{c} {shapes.SHAPES[(i + offset) % len(shapes.SHAPES)]}" for i, c in enumerate(shapes.COLOURS)]
    return [n for n in shapes.class_names() if n not in held], held


def check_disjoint(classes: Sequence[str], held: Sequence[str], what: str = "the fine-tune pool") -> None:
    """`InputError` when any of `classes` (e.g. the classes of the images a pool holds) is a held-out class."""
    leak = sorted(set(classes) & set(held))
    if leak:
        raise InputError(f"{what} holds images of held-out class(es) {leak}: the zero-shot columns would not be "
                         "zero-shot")


def _train_labels(fine_tune: Sequence[str], per_class: int) -> np.ndarray:
    """Global labels (into `shapes.class_names`) of the fine-tune images: `per_class` of each class, cycling."""
    names = shapes.class_names()
    return np.tile(np.array([names.index(c) for c in fine_tune], dtype=np.int64), per_class)


def _train_batch(shift: str, fine_tune: Sequence[str], held: Sequence[str], per_class: int, seed: int) -> Any:
    batch = shapes.make_batch(len(fine_tune) * per_class, seed=seed, shift=shift,
                              labels=_train_labels(fine_tune, per_class))
    names = shapes.class_names()
    check_disjoint(sorted({names[int(y)] for y in batch.labels}), held)
    return batch


def _local(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Global labels → indices into `classes`."""
    names = shapes.class_names()
    index = {names.index(c): i for i, c in enumerate(classes)}
    return np.array([index[int(y)] for y in labels], dtype=np.int64)


def _subset(batch: Any, classes: Sequence[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """The images of `batch` whose class is in `classes`, and their labels as indices into `classes`."""
    names = shapes.class_names()
    wanted = {names.index(c) for c in classes}
    keep = [i for i, y in enumerate(batch.labels.tolist()) if y in wanted]
    return [batch.images[i] for i in keep], _local(batch.labels[keep], classes)


# -- device mode --------------------------------------------------------------------------------------------
def _pool(model: Any, images: Sequence[np.ndarray], labels: np.ndarray, classes: Sequence[str],
          views: bool = False) -> Any:
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool

    policy = ViewPolicy(extra_views=EXTRA_VIEWS, view_scale=VIEW_SCALE, flip_p=0.0) if views else None
    return build_feature_pool(model, list(images), class_names=list(classes), labels=labels.tolist(), views=policy,
                              cache=False)


def _pair_anchors(model: Any, batch: Any) -> Any:
    from edgeclip.runtime.methods.arf_anchors import AnchorSet

    with torch.no_grad():
        img = torch.cat([model.encode_images(list(batch.images[s : s + 256]), normalize=True).float().cpu()
                         for s in range(0, len(batch), 256)])
        txt = torch.cat([model.encode_text(batch.captions[s : s + 256]).float().cpu()
                         for s in range(0, len(batch), 256)])
    return AnchorSet.from_tensors(img, txt, batch.captions, [f"pair:{i}" for i in range(len(batch))])


def _device_fit(model: Any, fine_tune: Sequence[str], train: Any, pool: Any, val: Any, pairs: Any, *,
                anchors: bool, epochs: int, seed: int) -> tuple[Any, Any, float]:
    from edgeclip.runtime.methods import create_method

    weights = {"lambda_tc": 1.0, "lambda_it": 1.0} if anchors else {"lambda_tc": 0.0, "lambda_it": 0.0}
    method = create_method("arf", model, list(fine_tune), epochs=epochs, seed=seed, **weights)
    t0 = time.perf_counter()
    report = method.fit(pool, val=val, captions=list(train.captions) if anchors else None,
                        pairs=pairs if anchors else None)
    return method, report, time.perf_counter() - t0


def _text(model: Any, classes: Sequence[str]) -> torch.Tensor:
    from edgeclip.runtime.model import DEFAULT_TEMPLATE

    with torch.no_grad():
        return model.encode_text([DEFAULT_TEMPLATE.format(c) for c in classes]).float().cpu()


def _correct(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    return logits.argmax(dim=1).cpu().numpy() == labels


# -- the shift choice ---------------------------------------------------------------------------------------
def choose_shift(model: Any, fine_tune: Sequence[str], held: Sequence[str], *,
                 candidates: Sequence[str] = CANDIDATE_SHIFTS, per_class: int = 32, n_val: int = 512,
                 epochs: int = 10, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """The fine-tune domain: the candidate where plain fine-tuning (device mode, on a training pool of seed
    `TUNE_TRAIN_SEED`) gains most over zero-shot on the validation stream's fine-tune-class frames. Returns
    ``(shift, rows)`` with each candidate's zero-shot and fine-tuned validation accuracy (%)."""
    from edgeclip.runtime.methods.zeroshot import image_logits

    rows = []
    text = _text(model, fine_tune)
    for shift in candidates:
        train = _train_batch(shift, fine_tune, held, per_class, TUNE_TRAIN_SEED)
        pool = _pool(model, list(train.images), _local(train.labels, fine_tune), fine_tune, views=True)
        vx, vy = _subset(validation(shift, n_val), fine_tune)
        val = _pool(model, vx, vy, fine_tune)
        zs = 100.0 * float(_correct(image_logits(model, val.plain, text), vy).mean())
        method, report, _ = _device_fit(model, fine_tune, train, pool, val, None, anchors=False, epochs=epochs,
                                        seed=seed)
        ft = 100.0 * float(_correct(method.logits(val.plain), vy).mean())
        rows.append({"shift": shift, "zero-shot": zs, "plain FT": ft, "gain": ft - zs,
                     "best epoch": report.best_epoch + 1})
        log.info("shift choice %s: zero-shot %.1f %%, plain FT %.1f %%", shift, zs, ft)
    best = max(rows, key=lambda r: r["gain"])
    return str(best["shift"]), rows


# -- workstation mode ---------------------------------------------------------------------------------------
def _ws_encode(visual: Any, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([visual(pixels[s : s + 256]).float() for s in range(0, len(pixels), 256)])


def _ws_train(model: Any, fine_tune: Sequence[str], train: Any, pairs_batch: Any, *, anchors: bool, epochs: int,
              seed: int) -> Any:
    """One workstation fine-tune of the image tower (`finetune_image_encoder`): ARF, or plain FT without anchors."""
    from edgeclip.export.finetune import finetune_image_encoder

    kw: dict[str, Any] = ({"captions": list(train.captions), "pairs": (pairs_batch.images, pairs_batch.captions),
                           "lambda_tc": 1.0, "lambda_it": 1.0} if anchors else {"lambda_tc": 0.0, "lambda_it": 0.0})
    return finetune_image_encoder(model, train.images, _local(train.labels, fine_tune), list(fine_tune),
                                  epochs=epochs, seed=seed, **kw)


def _ws_fit(model: Any, fine_tune: Sequence[str], train: Any, pairs_batch: Any, val_px: torch.Tensor,
            val_y: np.ndarray, text: torch.Tensor, *, anchors: bool, grid: Sequence[int],
            seed: int) -> tuple[Any, list[dict[str, Any]], float]:
    """The workstation fine-tune with the number of epochs (from `grid`) best on the validation frames (ties:
    fewer epochs); returns it, the grid's rows and the seconds of all its fits."""
    from edgeclip.runtime.methods.zeroshot import image_logits

    best: tuple[float, Any] | None = None
    rows = []
    seconds = 0.0
    for e in grid:
        t0 = time.perf_counter()
        result = _ws_train(model, fine_tune, train, pairs_batch, anchors=anchors, epochs=e, seed=seed)
        seconds += time.perf_counter() - t0
        acc = 100.0 * float(_correct(image_logits(model, _ws_encode(result.model.visual, val_px), text),
                                     val_y).mean())
        rows.append({"epochs": e, "val": acc, "fit_s": result.seconds, "steps": result.steps,
                     "skipped_steps": result.skipped_steps})
        log.info("workstation %s, %d epochs: validation %.1f %%", "ARF" if anchors else "plain FT", e, acc)
        if best is None or acc > best[0]:
            best = (acc, result)
    if best is None:
        raise InputError("workstation_epochs is empty")
    return best[1], rows, seconds


# -- statistics ---------------------------------------------------------------------------------------------
def _id_status(d: PairedDifference) -> str:
    if d.lo <= 0.0 <= d.hi:
        return "same (CI contains 0)"
    if abs(d.diff) <= ID_MARGIN:
        return f"same (|Δ| ≤ {ID_MARGIN:g} pt)"
    return "higher" if d.lo > 0 else "lower"


def claim_verdict(id_diff: PairedDifference, shift_mean: PairedDifference,
                  held_mean: PairedDifference) -> dict[str, Any]:
    """The paper's claim against plain fine-tuning, part by part: ID the same (interval contains 0, or within
    `ID_MARGIN` points, or higher), better under shift and on held-out classes (interval of the mean above 0)."""
    status = _id_status(id_diff)
    parts = {"ID same": status != "lower", "shift better": shift_mean.lo > 0.0,
             "held-out better": held_mean.lo > 0.0}
    return {"ID": status, "shift": shift_mean.verdict, "held-out": held_mean.verdict, **parts,
            "claim holds": all(parts.values())}


# -- the bench ----------------------------------------------------------------------------------------------
def bench_arf(bundle: str | Path = "micro", *, shift: str = "auto", per_class: int = 32, n_pairs: int = 512,
              n_val: int = 512, n_test: int = 2048, epochs: int = 10,
              workstation_epochs: Sequence[int] | None = None, modes: Sequence[str] = MODES,
              test_shifts: Sequence[str] = TEST_SHIFTS, replicates: int = 3, workstation_replicates: int = 2,
              threads: int | None = 1, seed: int = 0) -> dict[str, Any]:
    """Accuracy (%) of zero-shot, plain fine-tuning, WiSE-FT and ARF per mode: ID, under each other shift, and
    zero-shot on the held-out classes; paired differences ARF − plain FT and ARF − WiSE-FT with 95 % bootstrap
    intervals and the claim's verdict per mode; a `write_report` dict (see the module docstring).

    Args:
        shift: the fine-tune domain, or "auto" (`choose_shift`, on the validation stream).
        per_class: training images per fine-tune class; n_pairs: the clean image-text pair pool's size.
        n_val: validation-stream images (their fine-tune-class frames select the epoch); n_test: test images
            per shift.
        epochs: device-mode epochs (best validation epoch kept); workstation_epochs: the grid the workstation's
            number of epochs is chosen from on validation (default: half of `epochs` and `epochs`).
        modes: "device" and/or "workstation"; test_shifts: the shifts tested (must include the fine-tune one).
        replicates, workstation_replicates: training runs in all per mode (1 = the main one only): run k trains
            on other images (seed ``TRAIN_SEED + k``) with training seed ``seed + k`` (the workstation at the
            epochs chosen for the main run); a table gives each run's point differences.
        seed: the training seed of every fit.
    """
    import edgeclip
    from edgeclip.runtime.methods.zeroshot import image_logits

    modes = list(dict.fromkeys(modes))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InputError(f"modes must be among {MODES}, got {list(modes)}")
    if workstation_epochs is None:
        workstation_epochs = sorted({max(1, epochs // 2), epochs})
    for name, v in (("per_class", per_class), ("n_pairs", n_pairs), ("n_val", n_val), ("n_test", n_test),
                    ("epochs", epochs), ("replicates", replicates), ("workstation_replicates", workstation_replicates),
                    *(("workstation_epochs", e) for e in workstation_epochs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")
    if max(replicates, workstation_replicates) > TUNE_TRAIN_SEED - TRAIN_SEED:
        raise InputError(f"replicates must be at most {TUNE_TRAIN_SEED - TRAIN_SEED} (training seeds stay disjoint)")
    unknown = [s for s in [*test_shifts, shift] if s != "auto" and s not in shapes.SHIFTS]
    if unknown:
        raise InputError(f"unknown shift(s) {unknown}; valid: {', '.join(shapes.SHIFTS)}")
    b = resolve_bundle(bundle)
    fine_tune, held = held_out_split()
    t_all = time.perf_counter()
    detail: dict[str, Any] = {}
    with torch_threads(threads):
        model = edgeclip.load(b.path, backend="onnxruntime", threads=threads)
        choice_rows = None
        if shift == "auto":
            shift, choice_rows = choose_shift(model, fine_tune, held, per_class=per_class, n_val=n_val,
                                              epochs=epochs, seed=seed)
            log.info("fine-tune domain chosen on the validation stream: %s", shift)
        if shift not in test_shifts:
            test_shifts = [shift, *test_shifts]
        others = [s for s in test_shifts if s != shift]
        held_domains = list(dict.fromkeys([shift, "clean"]))
        # data
        train = _train_batch(shift, fine_tune, held, per_class, TRAIN_SEED)
        pool_classes = sorted({shapes.class_names()[int(y)] for y in train.labels})
        check_disjoint(pool_classes, held)
        pairs_batch = shapes.make_batch(n_pairs, seed=PAIR_SEED, shift="clean")
        vx, vy = _subset(validation(shift, n_val), fine_tune)
        tests = {s: held_out(s, n_test) for s in test_shifts}
        all_names = shapes.class_names()
        ft_text, held_text, all_text = _text(model, fine_tune), _text(model, held), _text(model, all_names)

        def columns(score: Scorer) -> dict[str, np.ndarray]:
            """Per-frame correctness of every column; `score(shift)` gives the logits of the shift's test frames
            (fine-tune-class frames first, then held-out-class frames: `_order_index`) over the fine-tune classes,
            the held-out classes and all 16 (``held-out of 16 (…)``: held-out frames among every class)."""
            out = {}
            for s in test_shifts:
                fy = _subset(tests[s], fine_tune)[1]
                hy = _subset(tests[s], held)[1]
                ay = np.array([all_names.index(held[int(i)]) for i in hy], dtype=np.int64)
                f_logits, h_logits, a_logits = score(s)
                out[s] = _correct(f_logits[: len(fy)], fy)
                if s in held_domains:
                    out[f"held-out ({s})"] = _correct(h_logits[len(fy) :], hy)
                    out[f"held-out of 16 ({s})"] = _correct(a_logits[len(fy) :], ay)
            return out

        correct: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        fits: dict[str, dict[str, Any]] = {}
        mode_seconds: dict[str, float] = {}
        runs_by_mode: dict[str, dict[int, dict[str, dict[str, np.ndarray]]]] = {}
        # -- device ---------------------------------------------------------------------------------------
        if "device" in modes:
            t_mode = time.perf_counter()
            pool = _pool(model, list(train.images), _local(train.labels, fine_tune), fine_tune, views=True)
            check_disjoint([pool.class_names[int(y)] for y in pool.labels.unique()], held)
            val = _pool(model, vx, vy, fine_tune)
            pairs = _pair_anchors(model, pairs_batch)
            plain, plain_rep, plain_s = _device_fit(model, fine_tune, train, pool, val, None, anchors=False,
                                                    epochs=epochs, seed=seed)
            arf, arf_rep, arf_s = _device_fit(model, fine_tune, train, pool, val, pairs, anchors=True,
                                              epochs=epochs, seed=seed)
            wise = plain.interpolated(WISE_ALPHA)
            embeds = {s: _pool(model, *_all(tests[s]), shapes.class_names()).plain for s in test_shifts}

            def device_scorer(head: Any) -> Scorer:
                def score(s: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                    x = _order(embeds[s], tests[s], fine_tune, held)
                    if head is None:
                        return (image_logits(model, x, ft_text), image_logits(model, x, held_text),
                                image_logits(model, x, all_text))
                    return head.logits_for(x, fine_tune), head.logits_for(x, held), head.logits_for(x, all_names)
                return score

            correct["device"] = {"zero-shot": columns(device_scorer(None)), "plain FT": columns(device_scorer(plain)),
                                 "WiSE-FT": columns(device_scorer(wise)), "ARF": columns(device_scorer(arf))}
            retrieval = arf_rep.extra.get("retrieval") or {}
            rows_used = sorted({j for c in (retrieval.get("per_class") or {}).values() for j in c["rows"]})
            names = shapes.class_names()
            held_pairs = sum(names[int(pairs_batch.labels[j])] in held for j in rows_used)
            fits["device"] = {
                "plain FT": {"fit_s": plain_s, "epochs": f"best {plain_rep.best_epoch + 1} of {epochs}",
                             "val": [100.0 * v for v in plain_rep.val_accuracy]},
                "WiSE-FT": {"fit_s": plain_s, "epochs": f"best {plain_rep.best_epoch + 1} of {epochs}, α {WISE_ALPHA}"},
                "ARF": {"fit_s": arf_s, "epochs": f"best {arf_rep.best_epoch + 1} of {epochs}",
                        "val": [100.0 * v for v in arf_rep.val_accuracy]}}
            detail["device"] = {"plain_report": plain_rep.to_dict(), "arf_report": arf_rep.to_dict(),
                                "n_pool_samples": len(pool) * pool.n_views, "n_val": len(val),
                                "pair_anchors": len(rows_used), "pair_anchors_of_held_out_classes": held_pairs,
                                "caption_anchors": arf_rep.extra.get("n_caption_anchors")}
            # replicates: other training images (seed TRAIN_SEED + k) and training seed (seed + k)
            rep_runs = {seed: {m: correct["device"][m] for m in ("plain FT", "WiSE-FT", "ARF")}}
            for k in range(1, replicates):
                rep_train = _train_batch(shift, fine_tune, held, per_class, TRAIN_SEED + k)
                rep_pool = _pool(model, list(rep_train.images), _local(rep_train.labels, fine_tune), fine_tune,
                                 views=True)
                p_k = _device_fit(model, fine_tune, rep_train, rep_pool, val, None, anchors=False, epochs=epochs,
                                  seed=seed + k)[0]
                a_k = _device_fit(model, fine_tune, rep_train, rep_pool, val, pairs, anchors=True, epochs=epochs,
                                  seed=seed + k)[0]
                rep_runs[seed + k] = {"plain FT": columns(device_scorer(p_k)),
                                      "WiSE-FT": columns(device_scorer(p_k.interpolated(WISE_ALPHA))),
                                      "ARF": columns(device_scorer(a_k))}
                log.info("device replicate %d of %d done", k + 1, replicates)
            runs_by_mode["device"] = rep_runs
            mode_seconds["device"] = time.perf_counter() - t_mode
        # -- workstation ----------------------------------------------------------------------------------
        if "workstation" in modes:
            from edgeclip.export.finetune import load_model, wise_ft
            from edgeclip.runtime.preprocess import preprocess

            t_mode = time.perf_counter()
            zs_loaded = load_model(model)
            cfg = zs_loaded.preprocess
            val_px = preprocess(vx, cfg)
            plain_r, plain_grid, plain_s = _ws_fit(model, fine_tune, train, pairs_batch, val_px, vy, ft_text,
                                                   anchors=False, grid=workstation_epochs, seed=seed)
            arf_r, arf_grid, arf_s = _ws_fit(model, fine_tune, train, pairs_batch, val_px, vy, ft_text,
                                             anchors=True, grid=workstation_epochs, seed=seed)
            wise_m = wise_ft(zs_loaded.model, plain_r.model, WISE_ALPHA)
            visuals = {"zero-shot": zs_loaded.model.visual, "plain FT": plain_r.model.visual,
                       "WiSE-FT": wise_m.visual, "ARF": arf_r.model.visual}
            pixels = {s: preprocess(_order_images(tests[s], fine_tune, held), cfg) for s in test_shifts}

            def ws_scorer(visual: Any) -> Scorer:
                def score(s: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                    x = _ws_encode(visual, pixels[s])
                    return (image_logits(model, x, ft_text), image_logits(model, x, held_text),
                            image_logits(model, x, all_text))
                return score

            correct["workstation"] = {m: columns(ws_scorer(v)) for m, v in visuals.items()}
            grid = list(workstation_epochs)
            fits["workstation"] = {
                "plain FT": {"fit_s": plain_s, "epochs": f"{plain_r.settings['epochs']} (of {grid})"},
                "WiSE-FT": {"fit_s": plain_s, "epochs": f"{plain_r.settings['epochs']} (of {grid}), α {WISE_ALPHA}"},
                "ARF": {"fit_s": arf_s, "epochs": f"{arf_r.settings['epochs']} (of {grid})"}}
            detail["workstation"] = {"plain_grid": plain_grid, "arf_grid": arf_grid,
                                     "plain_settings": plain_r.settings, "arf_settings": arf_r.settings,
                                     "plain_history": plain_r.history, "arf_history": arf_r.history}
            # replicates at the chosen epochs: other training images (TRAIN_SEED + k), training seed seed + k
            ws_runs = {seed: {m: correct["workstation"][m] for m in ("plain FT", "WiSE-FT", "ARF")}}
            for k in range(1, workstation_replicates):
                rep_train = _train_batch(shift, fine_tune, held, per_class, TRAIN_SEED + k)
                p_k = _ws_train(model, fine_tune, rep_train, pairs_batch, anchors=False,
                                epochs=int(plain_r.settings["epochs"]), seed=seed + k)
                a_k = _ws_train(model, fine_tune, rep_train, pairs_batch, anchors=True,
                                epochs=int(arf_r.settings["epochs"]), seed=seed + k)
                ws_runs[seed + k] = {
                    "plain FT": columns(ws_scorer(p_k.model.visual)),
                    "WiSE-FT": columns(ws_scorer(wise_ft(zs_loaded.model, p_k.model, WISE_ALPHA).visual)),
                    "ARF": columns(ws_scorer(a_k.model.visual))}
                log.info("workstation replicate %d of %d done", k + 1, workstation_replicates)
            runs_by_mode["workstation"] = ws_runs
            mode_seconds["workstation"] = time.perf_counter() - t_mode
    seconds = time.perf_counter() - t_all

    # -- tables ---------------------------------------------------------------------------------------------
    held_cols = [f"held-out ({d})" for d in held_domains]
    acc_cols = ["ID", *others, "shift mean", *held_cols, "held-out mean"]
    rows = []
    for mode in modes:
        for m in METHODS:
            c = correct[mode][m]
            row: dict[str, Any] = {"mode": mode, "method": m, "ID": 100.0 * float(c[shift].mean())}
            for s in others:
                row[s] = 100.0 * float(c[s].mean())
            row["shift mean"] = float(np.mean([row[s] for s in others])) if others else float("nan")
            for h in held_cols:
                row[h] = 100.0 * float(c[h].mean())
            row["held-out mean"] = float(np.mean([row[h] for h in held_cols]))
            fit = fits[mode].get(m, {})
            row["fit_s"] = fit.get("fit_s", 0.0)
            row["epochs"] = fit.get("epochs", "—")
            rows.append(row)
    diff_rows = []
    verdict_rows = []
    diff_detail: dict[str, Any] = {}
    for mode in modes:
        c = correct[mode]
        for base in ("plain FT", "WiSE-FT"):
            d_id = paired_difference(c["ARF"][shift], c[base][shift], seed=seed)
            d_sh = paired_differences({s: c["ARF"][s] for s in others}, {s: c[base][s] for s in others},
                                      seed=seed) if others else {}
            d_ho = paired_differences({h: c["ARF"][h] for h in held_cols}, {h: c[base][h] for h in held_cols},
                                      seed=seed)
            row = {"mode": mode, "comparison": f"ARF − {base}", "ID": d_id.format(),
                   **{s: d_sh[s].format() for s in others},
                   "shift mean": d_sh[MEAN].format() if others else "—",
                   **{h: d_ho[h].format() for h in held_cols}, "held-out mean": d_ho[MEAN].format()}
            diff_rows.append(row)
            diff_detail[f"{mode}: ARF − {base}"] = {"ID": d_id.to_dict(),
                                                    **{k: v.to_dict() for k, v in d_sh.items() if k != MEAN},
                                                    "shift mean": d_sh[MEAN].to_dict() if others else None,
                                                    **{k: v.to_dict() for k, v in d_ho.items() if k != MEAN},
                                                    "held-out mean": d_ho[MEAN].to_dict()}
            if others:
                v = claim_verdict(d_id, d_sh[MEAN], d_ho[MEAN])
                verdict_rows.append({"mode": mode, "against": base, "ID": v["ID"], "shift (mean)": v["shift"],
                                     "held-out (mean)": v["held-out"],
                                     "claim holds": "yes" if v["claim holds"] else "no", "detail": v})
    # the harder zero-shot view (not part of the verdict): held-out frames scored among all 16 classes
    open_cols = [f"held-out of 16 ({d})" for d in held_domains]
    open_rows: list[dict[str, Any]] = []
    for mode in modes:
        c = correct[mode]
        for m in METHODS:
            accs = {h: 100.0 * float(c[m][h].mean()) for h in open_cols}
            open_rows.append({"mode": mode, "row": m, **accs, "mean": float(np.mean(list(accs.values())))})
        for base in ("plain FT", "WiSE-FT"):
            d_open = paired_differences({h: c["ARF"][h] for h in open_cols}, {h: c[base][h] for h in open_cols},
                                        seed=seed)
            open_rows.append({"mode": mode, "row": f"ARF − {base}", **{h: d_open[h].format() for h in open_cols},
                              "mean": d_open[MEAN].format()})
            diff_detail[f"{mode}: ARF − {base}"].update({k if k != MEAN else "held-out of 16 mean": v.to_dict()
                                                        for k, v in d_open.items()})
    rep_rows: list[dict[str, Any]] = []
    rep_detail: dict[str, Any] = {}
    for mode, mode_runs in runs_by_mode.items():
        for base in ("plain FT", "WiSE-FT"):
            per_run = []
            for k, cs in mode_runs.items():
                per_run.append({"ID": _point_diff(cs, base, [shift]),
                                "shift mean": _point_diff(cs, base, others) if others else float("nan"),
                                "held-out mean": _point_diff(cs, base, held_cols),
                                "held-out of 16 mean": _point_diff(cs, base, open_cols)})
                rep_rows.append({"mode": mode, "comparison": f"ARF − {base}", "run": f"seed {k}",
                                 **{c: f"{v:+.1f}" for c, v in per_run[-1].items()}})
            if len(per_run) > 1:
                rep_rows.append({"mode": mode, "comparison": f"ARF − {base}", "run": "mean ± std",
                                 **{c: f"{np.mean([r[c] for r in per_run]):+.1f} ± "
                                       f"{np.std([r[c] for r in per_run], ddof=1):.1f}" for c in per_run[0]}})
            rep_detail[f"{mode}: ARF − {base}"] = per_run
    config = {"bundle": str(b.path), "model": model_label(b), "shift": shift,
              "shift_chosen": "auto (validation stream)" if choice_rows is not None else "given",
              "test_shifts": list(test_shifts), "other_shifts": others, "held_out_domains": held_domains,
              "fine_tune_classes": fine_tune, "held_out_classes": held, "fine_tune_pool_classes": pool_classes,
              "holdout_offset": HOLDOUT_OFFSET, "per_class": per_class, "n_train": len(train), "n_pairs": n_pairs,
              "n_val": n_val, "n_val_frames": len(vy), "n_test": n_test, "epochs": epochs,
              "workstation_epochs": list(workstation_epochs), "modes": modes, "wise_alpha": WISE_ALPHA,
              "id_margin": ID_MARGIN, "train_seed": TRAIN_SEED, "pair_seed": PAIR_SEED,
              "tune_train_seed": TUNE_TRAIN_SEED, "validation_seed": VALIDATION_SEED, "eval_seed": EVAL_SEED,
              "replicates": replicates, "workstation_replicates": workstation_replicates,
              "extra_views": EXTRA_VIEWS, "view_scale": list(VIEW_SCALE),
              "seed": seed, "threads": threads,
              "mode_seconds": mode_seconds}
    n_frames = {k: len(v) for k, v in correct[modes[0]]["zero-shot"].items()}
    notes = [
        f"{model_label(b)}. Fine-tune domain {shift} "
        + (f"(chosen on the validation stream: largest gain of plain device fine-tuning over zero-shot among "
           f"{list(CANDIDATE_SHIFTS)}, training pools seed {TUNE_TRAIN_SEED})" if choice_rows is not None
           else "(given on the command line)")
        + f"; fine-tune classes: the 12 of {', '.join(fine_tune)}; held out (a Latin square, each colour and "
        f"each shape once): {', '.join(held)}. The fine-tune pool's images are of {len(pool_classes)} classes, "
        "none held out.",
        f"Training: {per_class} images per fine-tune class in {shift} (proxy stream seed {TRAIN_SEED}) with their "
        f"rich captions (text-compensated anchors); pair pool: {n_pairs} clean images of all 16 classes with "
        f"captions (seed {PAIR_SEED}), retrieved by similarity to the fine-tune class prompts. Epochs chosen on the "
        f"{len(vy)} fine-tune-class frames of {n_val} validation images (seed {VALIDATION_SEED}); test "
        f"{n_test} held-out images per shift (seed {EVAL_SEED}), frames per column: {n_frames}.",
        "ID = fine-tune domain, fine-tune-class frames among the 12 fine-tune classes; shift columns the same "
        "frames and classes under the other shifts; held-out = held-out-class frames among the 4 held-out "
        "classes (zero-shot transfer); 'held-out of 16' (its own table, outside the verdict) scores the same "
        "frames among all 16 classes. Accuracy in %.",
        f"plain FT = the same loss without anchors (λ_tc = λ_it = 0); WiSE-FT = plain FT interpolated with "
        f"zero-shot, α = {WISE_ALPHA} (device: the head's tensors; workstation: the image tower's weights); "
        "ARF: λ_tc = λ_it = 1. Device: prompt context + residual adapter on frozen encoders, best validation "
        f"epoch of {epochs}; workstation: the image tower fine-tuned in PyTorch (text frozen), epochs chosen "
        f"from {list(workstation_epochs)} on validation, test images through the PyTorch visual tower.",
        "Differences in points with paired 95 % percentile bootstrap intervals over test frames (the means "
        "resample every stratum). Claim verdict against plain FT: ID 'same' when the interval contains 0 or "
        f"|Δ| ≤ {ID_MARGIN:g} pt (or higher); shift / held-out 'better' only when the interval of the mean lies "
        "above 0.",
    ]
    if "device" in detail:
        notes.append(f"Device ARF used {detail['device']['caption_anchors']} caption anchors and "
                     f"{detail['device']['pair_anchors']} retrieved pairs, of which "
                     f"{detail['device']['pair_anchors_of_held_out_classes']} show a held-out class (the "
                     "pretraining-like pool holds all classes, as in the paper; workstation mode retrieves with the "
                     "same rule through the same zero-shot encoders).")
    for v in verdict_rows:
        if v["against"] != "plain FT":
            continue
        key = f"{v['mode']}: ARF − plain FT"
        dd = diff_detail[key]
        notes.append(f"The claim in {v['mode']} mode (ARF vs plain FT): "
                     f"{'holds' if v['detail']['claim holds'] else 'does not hold'} — ID {v['ID']} "
                     f"({_fmt(dd['ID'])}), shift mean {v['shift (mean)']} ({_fmt(dd['shift mean'])}), held-out "
                     f"mean {v['held-out (mean)']} ({_fmt(dd['held-out mean'])}).")
    notes.append(f"{seconds:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in mode_seconds.items())}).")
    tables = [{"title": "ARF − baseline (points, paired 95 % bootstrap interval)",
               "columns": ["mode", "comparison", *[c for c in acc_cols]], "rows": diff_rows},
              {"title": "The paper's claim per mode (ARF vs plain fine-tuning; vs WiSE-FT for reference)",
               "columns": ["mode", "against", "ID", "shift (mean)", "held-out (mean)", "claim holds"],
               "rows": [{k: v for k, v in r.items() if k != "detail"} for r in verdict_rows]}]
    tables.append({"title": "Held-out classes among all 16 classes (%; ARF − baseline in points, 95 % CI): "
                            "does fine-tuning pull held-out images onto the fine-tune classes?",
                   "columns": ["mode", "row", *open_cols, "mean"], "rows": open_rows})
    if rep_rows:
        tables.append({"title": "Over training runs (other training images and seeds): ARF − baseline, points",
                       "columns": ["mode", "comparison", "run", "ID", "shift mean", "held-out mean",
                                   "held-out of 16 mean"], "rows": rep_rows})
    if choice_rows is not None:
        tables.append({"title": "Fine-tune domain choice on the validation stream (fine-tune classes, %)",
                       "columns": ["shift", "zero-shot", "plain FT", "gain", "best epoch"], "rows": choice_rows})
    if "workstation" in detail:
        tables.append({"title": "Workstation epochs chosen on validation (fine-tune classes, fine-tune domain, %)",
                       "columns": ["method", "epochs", "val", "fit_s", "steps", "skipped_steps"],
                       "rows": [{"method": "plain FT", **r} for r in detail["workstation"]["plain_grid"]]
                       + [{"method": "ARF", **r} for r in detail["workstation"]["arf_grid"]]})
    return {"title": f"ARF vs plain fine-tuning and WiSE-FT on the micro world ({model_label(b)})", "bench": "arf",
            "config": config, "columns": ["mode", "method", *acc_cols, "fit_s", "epochs"], "rows": rows,
            "tables": tables, "differences": diff_detail, "replicates": rep_detail, "verdicts": verdict_rows,
            "detail": detail, "seconds": seconds, "notes": notes, "machine": machine_info(threads)}


def _fmt(d: dict[str, Any]) -> str:
    return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def _point_diff(runs: dict[str, dict[str, np.ndarray]], base: str, cols: Sequence[str]) -> float:
    """ARF − `base` in points, the mean over `cols` of the per-column accuracy differences."""
    return float(np.mean([100.0 * (runs["ARF"][c].mean() - runs[base][c].mean()) for c in cols]))


def _all(batch: Any) -> tuple[list[np.ndarray], np.ndarray]:
    return list(batch.images), np.asarray(batch.labels, dtype=np.int64)


def _order_index(batch: Any, fine_tune: Sequence[str], held: Sequence[str]) -> list[int]:
    """Frame indices of `batch`: the fine-tune-class frames, then the held-out-class frames (as `_subset`)."""
    names = shapes.class_names()
    labels = batch.labels.tolist()
    ft = {names.index(c) for c in fine_tune}
    ho = {names.index(c) for c in held}
    return [i for i, y in enumerate(labels) if y in ft] + [i for i, y in enumerate(labels) if y in ho]


def _order(embeds: torch.Tensor, batch: Any, fine_tune: Sequence[str], held: Sequence[str]) -> torch.Tensor:
    return embeds[torch.tensor(_order_index(batch, fine_tune, held), dtype=torch.int64)]


def _order_images(batch: Any, fine_tune: Sequence[str], held: Sequence[str]) -> list[np.ndarray]:
    return [batch.images[i] for i in _order_index(batch, fine_tune, held)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench arf`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--shift", default="auto", help=f"the fine-tune domain, or auto (default): the one of "
                   f"{list(CANDIDATE_SHIFTS)} where plain fine-tuning gains most on the validation stream")
    p.add_argument("--per-class", type=int, default=32, help="training images per fine-tune class (default 32)")
    p.add_argument("--n-test", type=int, default=2048, help="held-out test images per shift (default 2048)")
    p.add_argument("--epochs", type=int, default=10,
                   help="device-mode epochs (best validation epoch kept); the workstation chooses from half and "
                        "all of them on validation (default 10)")
    p.add_argument("--replicates", type=int, default=3,
                   help="device-mode training runs (other images and seeds) for the spread (default 3)")
    p.add_argument("--workstation-replicates", type=int, default=2,
                   help="workstation training runs at the chosen epochs, for the spread (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: device, workstation (default both)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every fit (default 0)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON and Markdown")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench arf` with parsed `args`: write the reports, return the results."""
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = bench_arf(args.bundle, shift=args.shift, per_class=args.per_class, n_test=args.n_test,
                        epochs=args.epochs, modes=modes, replicates=args.replicates,
                        workstation_replicates=args.workstation_replicates, threads=args.threads,
                        seed=args.seed)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    return results
