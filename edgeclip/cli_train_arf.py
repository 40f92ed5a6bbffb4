"""`edgeclip train arf`: anchor-regularised robust fine-tuning (ARF), on the device or on a workstation.

Wire it with ``add_parser(train_subparsers)`` (the ``train`` verb's subparsers).

* ``--mode device`` (default): both encoders frozen; the prompt context and a residual image adapter train on a
  cached feature pool of ``--data`` with the FLYP-style loss plus the two anchor losses — ``--captions`` (a JSONL
  of ``{"image", "caption"}`` lines: the fine-tune images with rich captions) and ``--pairs`` (a JSONL pool of
  image-text pairs, from which the pairs closest to each class are retrieved). The head is saved atomically.
* ``--mode workstation``: the image encoder itself is fine-tuned in PyTorch with the same losses
  (`edgeclip.export.finetune`), and a new bundle is exported with its parity check (``--out-bundle``).

The baselines of the paper's comparison are settings: plain fine-tuning is ``--set lambda_tc=0 --set
lambda_it=0`` (no anchor files needed) and WiSE-FT ``--wise-alpha 0.5``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import nonnegative_int, parse_setting, positive_int
from edgeclip.errors import EdgeClipError

__all__ = ["add_parser", "cmd_train_arf"]


def add_parser(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``arf`` to the ``train`` verb's subparsers; returns its parser."""
    p = train_subparsers.add_parser(
        "arf", help="ARF: fine-tune without losing robustness and zero-shot (anchor losses; device or workstation)",
        description="Fine-tune on labelled images with a contrastive image / 'a photo of a {class}' loss plus two "
                    "anchor losses that keep the image space aligned with CLIP's text space: the fine-tune images "
                    "with rich captions (--captions) and image-text pairs retrieved for the task's classes from a "
                    "pool (--pairs).")
    p.add_argument("--data", required=True, help="the fine-tune images: a folder with one sub-folder per class, or "
                   "a procedural spec 'shapes:N[:SHIFT]'")
    p.add_argument("--captions", default=None, help="JSONL of {\"image\": path, \"caption\": text}: the "
                   "text-compensated anchors (needed unless --set lambda_tc=0)")
    p.add_argument("--pairs", default=None, help="JSONL pool of {\"image\", \"caption\"} pairs to retrieve the "
                   "image-text-pair anchors from (needed unless --set lambda_it=0)")
    p.add_argument("--extra-classes", default=None, help='classes the head should also predict without training '
                   'images (zero-shot through the learnt context and adapter), "name,name" or @file')
    p.add_argument("--val", default=None, help="labelled validation images for epoch selection (default: "
                   "--val-split of --data)")
    p.add_argument("--val-split", type=float, default=0.2, help="share of --data held out for selection when there "
                   "is no --val (default 0.2; 0: the last epoch)")
    p.add_argument("--wise-alpha", type=float, default=None, help="WiSE-FT: interpolate the fine-tuned weights with "
                   "the zero-shot ones by this α in [0, 1] (the standard peer: 0.5)")
    p.add_argument("--mode", choices=["device", "workstation"], default="device",
                   help="device: tune the head on cached features (default); workstation: fine-tune the image "
                   "encoder and export a new bundle")
    p.add_argument("--out", help="device mode: the head file (default: <bundle>/heads/arf.head.safetensors; for the "
                   "embedded bundle ./arf.head.safetensors)")
    p.add_argument("--out-bundle", default=None, help="workstation mode: the new bundle's folder")
    p.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--extra-views", type=nonnegative_int, default=0, help="augmented views per training image "
                   "(device mode; default 0)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting (repeatable), e.g. --set epochs=20 --set lambda_it=0.5")
    p.add_argument("--seed", type=int, default=20_000, help="seed of a procedural --data spec, the split and views")
    p.add_argument("--cache", default=None, help="feature pool cache folder (default ~/.cache/edgeclip/pools)")
    p.add_argument("--no-cache", action="store_true", help="do not cache (or resume) the feature pools")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--threads", type=positive_int, help="CPU threads (onnxruntime and PyTorch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file or bundle")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train_arf)
    return p


def _check(args: argparse.Namespace) -> dict[str, Any]:
    settings = dict(args.settings)
    if not 0.0 <= args.val_split < 1.0:
        raise EdgeClipError(f"--val-split must lie in [0, 1), got {args.val_split}")
    if args.wise_alpha is not None:
        if not 0.0 <= args.wise_alpha <= 1.0:
            raise EdgeClipError(f"--wise-alpha must lie in [0, 1], got {args.wise_alpha}")
        settings["wise_alpha"] = args.wise_alpha
    for flag, key in (("--captions", "lambda_tc"), ("--pairs", "lambda_it")):
        given = getattr(args, flag[2:])
        if given is None and float(settings.get(key, 1.0)) > 0:
            raise EdgeClipError(f"{flag} is needed for the anchor loss (or switch it off: --set {key}=0)")
        if given is not None and not Path(given).expanduser().is_file():
            raise EdgeClipError(f"{flag} {given}: no such file")
    if args.mode == "workstation":
        if args.out_bundle is None:
            raise EdgeClipError("--mode workstation writes a new bundle: give --out-bundle DIR")
        if args.out is not None:
            raise EdgeClipError("--out is the device mode's head; the workstation mode writes --out-bundle")
    elif args.out_bundle is not None:
        raise EdgeClipError("--out-bundle goes with --mode workstation")
    return settings


def cmd_train_arf(args: argparse.Namespace) -> int:
    """Fine-tune, save the head (or the new bundle), print the report. Returns 0."""
    settings = _check(args)
    if args.mode == "workstation":
        return _workstation(args, settings)
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.cli_train import head_out, labelled_pools
    from edgeclip.runtime.classnames import parse_class_spec

    out = head_out(args, "arf")
    t0 = time.perf_counter()
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    progress = not args.json
    pool, val = labelled_pools(args, model, seed=args.seed)
    extra = parse_class_spec(args.extra_classes) if args.extra_classes else []
    method = edgeclip.create_method("arf", model, [*pool.class_names, *extra], **settings)
    report = method.fit(pool, val=val, progress=progress, captions=args.captions, pairs=args.pairs)
    path = method.save_head(out)
    payload = {"head": str(path), "method": "arf", "mode": "device", "classes": method.class_names,
               "report": report.to_dict(), "seconds": round(time.perf_counter() - t0, 3), "backend": model.backend}
    best = report.val_accuracy[report.best_epoch] if report.val_accuracy and report.best_epoch is not None else None
    lines = [f"wrote {path}",
             f"arf (device): {len(pool.class_names)} fine-tune classes (+{len(extra)} zero-shot), {report.n_train} "
             f"training and {report.n_val} validation images, {report.epochs} epochs ({report.steps} steps) in "
             f"{report.seconds:.1f} s" + (f"; validation accuracy {100 * best:.1f} %" if best is not None else "")]
    if report.skipped_steps:
        lines.append(f"skipped {report.skipped_steps} steps with a non-finite loss")
    lines.append(f"use it: edgeclip classify --method arf --head {path} IMAGES")
    emit(args, payload, "\n".join(lines))
    return 0


#: the ``--set`` keys the workstation mode takes (`edgeclip.export.finetune.finetune_image_encoder` arguments)
WORKSTATION_SETTINGS = ("epochs", "lr", "batch_size", "lambda_tc", "lambda_it", "weight_decay", "retrieval_k",
                        "min_similarity", "retrieve_by", "anchor_batch_size", "augment", "template")


def _workstation(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """Fine-tune the image tower of ``--bundle``, optionally WiSE-FT it, export the new bundle. Returns 0."""
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.export.finetune import export_finetuned, finetune_image_encoder, load_model, wise_ft
    from edgeclip.runtime.pool_sources import open_source

    if args.val is not None:
        raise EdgeClipError("--val selects an epoch in the device mode; the workstation mode keeps the last epoch")
    alpha = settings.pop("wise_alpha", None)
    unknown = sorted(set(settings) - set(WORKSTATION_SETTINGS))
    if unknown:
        raise EdgeClipError(f"--mode workstation takes --set {', '.join(WORKSTATION_SETTINGS)}; not {unknown}")
    out = Path(args.out_bundle).expanduser()
    if out.exists() and not args.overwrite:
        raise EdgeClipError(f"{out} already exists; pass --overwrite to replace it or choose another --out-bundle")
    t0 = time.perf_counter()
    source = Path(args.bundle).expanduser() if args.bundle else edgeclip.default_bundle()
    data = open_source(args.data, seed=args.seed)
    if data.class_names is None or (data.labels < 0).any():
        raise EdgeClipError(f"{args.data} has no class sub-folders: fine-tuning needs labelled images "
                            f"({args.data}/<class name>/<images>)")
    images = data.load(0, len(data))
    result = finetune_image_encoder(source, images, data.labels.tolist(), data.class_names, captions=args.captions,
                                    pairs=args.pairs, seed=args.seed, progress=not args.json, **settings)
    model: Any = result
    if alpha is not None:
        model = wise_ft(load_model(source).model, result.model, alpha)
    exported = export_finetuned(model, out, model_name=result.model_name, overwrite=args.overwrite,
                                description=f"ARF workstation fine-tune of {source.name}" +
                                (f", WiSE-FT α = {alpha:g}" if alpha is not None else ""),
                                extra={"finetune": {**result.settings, "wise_alpha": alpha}},
                                progress=not args.json)
    payload = {"bundle": str(out), "method": "arf", "mode": "workstation", "classes": data.class_names,
               "steps": result.steps, "skipped_steps": result.skipped_steps, "train_seconds": result.seconds,
               "history": result.history, "wise_alpha": alpha, "parity": exported.parity.to_dict(),
               "seconds": round(time.perf_counter() - t0, 3)}
    lines = [f"wrote {out}",
             f"arf (workstation): the image tower fine-tuned on {len(images)} images of {len(data.class_names)} "
             f"classes, {result.steps} steps in {result.seconds:.1f} s"
             + (f"; WiSE-FT α = {alpha:g}" if alpha is not None else "")
             + f"; exported with parity (image min cos {exported.parity.image_min_cos:.6f})",
             f"use it: edgeclip classify --bundle {out} --classes NAMES IMAGES"]
    emit(args, payload, "\n".join(lines))
    return 0
