"""`edgeclip train ship`: SHIP — a prompt over base + new classes, the new ones from synthetic features.

Wire it with ``add_parser(train_subparsers)`` (the ``train`` verb's subparsers). The labelled images of the base
classes are encoded once into a cached feature pool with a few augmented views each; the VAE and the prompt runs
train on the cached embeddings; the prompt run that is best on the validation images (a split of --labeled by
default) is kept and saved as a head over the base classes followed by the new ones.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import nonnegative_int, parse_setting, positive_int
from edgeclip.errors import ClassNameError, EdgeClipError

__all__ = ["add_parser", "cmd_train_ship", "read_new_classes"]


def add_parser(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ship`` to the ``train`` verb's subparsers; returns its parser."""
    p = train_subparsers.add_parser(
        "ship", help="SHIP: a prompt for base + new classes, the new ones learnt from synthetic features",
        description="Train a VAE whose generator turns noise into a prompt bias (reconstructing the base classes' "
                    "image features through the frozen text tower), then CoOp prompts over base + new classes on "
                    "the real base features plus one synthetic feature per real one for a random new class; keep "
                    "the prompt that is best on validation images and save it as a head.")
    p.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--labeled", required=True, help="labelled images of the base classes: a folder with one "
                   "sub-folder per class, or a procedural spec 'shapes:N[:SHIFT]'")
    p.add_argument("--new-classes", required=True, help="the new classes (no images): a file with one name per "
                   'line (or @file), or "name,name"')
    p.add_argument("--base-classes", default=None, help='the base classes, "name,name" or @file (default: the '
                   "classes of a --labeled folder; for a shapes spec every shapes class not listed as new)")
    p.add_argument("--val", default=None, help="labelled validation images (same forms as --labeled; they may hold "
                   "new classes too, then selection is on the harmonic mean); default: --val-split of --labeled")
    p.add_argument("--val-split", type=float, default=0.2, help="share of each base class held out for validation "
                   "when there is no --val (default 0.2; 0: no validation, the last prompt run is kept)")
    p.add_argument("--extra-views", type=nonnegative_int, default=3, help="augmented views per training image in "
                   "the pool (random resized crops 50–100 %% with flips, as SHIP augments; default 3)")
    p.add_argument("--out", help="head file to write (default: <bundle>/heads/ship.head.safetensors; for the "
                   "embedded bundle ./ship.head.safetensors)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting (repeatable), e.g. --set vae_epochs=20 --set epochs=10 --set lr=0.01")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and of the pool's views")
    p.add_argument("--cache", default=None, help="feature pool cache folder (default ~/.cache/edgeclip/pools)")
    p.add_argument("--no-cache", action="store_true", help="do not cache (or resume) the feature pools")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--threads", type=positive_int, help="CPU threads (onnxruntime and PyTorch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train_ship)
    return p


def read_new_classes(spec: str) -> list[str]:
    """``--new-classes``: a file (one name per line; ``@file`` too) or comma-separated names."""
    from edgeclip.runtime.classnames import parse_class_list, read_class_file, validate_class_names

    if spec.startswith("@"):
        return validate_class_names(read_class_file(spec[1:]))
    if Path(spec).expanduser().is_file():
        return validate_class_names(read_class_file(spec))
    return validate_class_names(parse_class_list(spec))


def _base_for_spec(data: str, base: list[str] | None, new: list[str]) -> list[str] | None:
    """For a shapes spec without --base-classes: every shapes class not listed as new."""
    from edgeclip.runtime.pool_sources import norm_name, parse_procedural_spec

    if base is not None or Path(data).expanduser().is_dir() or parse_procedural_spec(data) is None:
        return base
    from edgeclip.data import shapes

    new_keys = {norm_name(c) for c in new}
    return [c for c in shapes.class_names() if norm_name(c) not in new_keys]


def _summary(report: Any, path: Path, base: list[str], new: list[str]) -> list[str]:
    ex = report.extra
    lines = [f"wrote {path}",
             f"ship: {len(base)} base + {len(new)} new classes, {report.n_train} training and {report.n_val} "
             f"validation images, {report.epochs} VAE epochs, {len(ex['prompt_runs'])} prompt runs, "
             f"{report.steps} steps in {report.seconds:.1f} s"]
    for i, r in enumerate(ex["prompt_runs"]):
        parts = [f"{k} {100 * r[f'val_{k}']:.1f} %" for k in ("base", "new", "H") if r.get(f"val_{k}") is not None]
        kept = " (kept)" if i == ex["kept_run"] else ""
        lines.append(f"  prompt after VAE epoch {r['vae_epoch'] + 1}: final loss {r['prompt_loss'][-1]:.3f}"
                     + (f", validation {', '.join(parts)}" if parts else "") + kept)
    lines.append(f"kept: {ex['selected_on']}")
    if report.skipped_steps:
        lines.append(f"skipped {report.skipped_steps} steps with a non-finite loss")
    lines.append(f"use it: edgeclip classify --head {path} IMAGES")
    return lines


def cmd_train_ship(args: argparse.Namespace) -> int:
    """Train SHIP, save the head, print the report. Returns 0."""
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.cli_train import head_out
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool

    out = head_out(args, "ship")
    if not 0.0 <= args.val_split < 1.0:
        raise EdgeClipError(f"--val-split must lie in [0, 1), got {args.val_split}")
    t0 = time.perf_counter()
    new = read_new_classes(args.new_classes)
    base = parse_class_spec(args.base_classes) if args.base_classes else None
    base = _base_for_spec(args.labeled, base, new)
    if base is not None:
        _check_disjoint(base, new, "--base-classes")
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    cache: Any = False if args.no_cache else (args.cache or True)
    progress = not args.json
    views = ViewPolicy(extra_views=args.extra_views, view_seed=args.seed)
    pool = build_feature_pool(model, args.labeled, class_names=base, views=views, cache=cache, progress=progress)
    if not pool.is_labelled or pool.class_names is None:
        raise EdgeClipError(f"{args.labeled} has no class sub-folders: SHIP needs labelled images of the base "
                            f"classes ({args.labeled}/<class name>/<images>)")
    base = list(pool.class_names)
    _check_disjoint(base, new, f"--labeled {args.labeled}")
    classes = base + new
    if args.val is not None:
        val_names = classes if not Path(args.val).expanduser().is_dir() else None
        val = build_feature_pool(model, args.val, class_names=val_names, cache=cache, progress=progress)
        if not val.is_labelled:
            raise EdgeClipError(f"--val {args.val} has no class sub-folders ({args.val}/<class name>/<images>)")
    elif args.val_split > 0:
        pool, val = pool.split(args.val_split, seed=args.seed)
    else:
        val = None
    settings = dict(args.settings)
    if "new_classes" in settings:
        raise EdgeClipError("give the new classes with --new-classes, not --set new_classes=")
    method = edgeclip.create_method("ship", model, classes, new_classes=tuple(new), **settings)
    report = method.fit(pool, val=val, progress=progress)
    path = method.save_head(out)
    payload = {"head": str(path), "method": "ship", "classes": method.class_names, "base_classes": base,
               "new_classes": new, "report": report.to_dict(), "seconds": round(time.perf_counter() - t0, 3),
               "backend": model.backend}
    emit(args, payload, "\n".join(_summary(report, path, base, new)))
    return 0


def _check_disjoint(base: list[str], new: list[str], where: str) -> None:
    from edgeclip.runtime.pool_sources import norm_name

    keys = {norm_name(c) for c in base}
    both = [c for c in new if norm_name(c) in keys]
    if both:
        raise ClassNameError(f"--new-classes repeats base classes of {where}: {both[:8]}; a new class has no "
                             "images, so it cannot also be a base class")
