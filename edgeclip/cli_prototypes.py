"""`edgeclip prototypes build`: class prototypes from an image folder or a procedural spec.

Wire it into the main parser with ``add_parser(subparsers)``; the build verb sets ``func`` to
:func:`cmd_prototypes_build`, which returns an exit code and raises :class:`~edgeclip.errors.EdgeClipError`
for bad input (the main entry point turns that into exit status 2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import add_model_args, load_model, positive_int
from edgeclip.errors import EdgeClipError

__all__ = ["EMBEDDED_DEFAULT_OUT", "add_parser", "cmd_prototypes_build", "default_out"]

#: Where `prototypes build` writes for the embedded bundle when no --out is given: the embedded bundle sits
#: inside the installed package (often read-only, and replaced on upgrade), so its default is the current folder.
EMBEDDED_DEFAULT_OUT = "micro.prototypes.safetensors"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prototypes`` (with the ``build`` verb) to an ``argparse`` subparsers object; returns its parser."""
    from edgeclip.runtime.prototypes import DEFAULT_PROCEDURAL_N, PROTOTYPE_SEED

    p = subparsers.add_parser("prototypes", help="class prototypes (mean image embedding per class)")
    psub = p.add_subparsers(dest="prototypes_verb", required=True)
    b = psub.add_parser(
        "build",
        help="build class prototypes with a bundle's image encoder",
        description="Embed a proxy image set with the bundle's exported image encoder and save the normalised "
                    "mean embedding of every class (safetensors, written atomically).",
    )
    b.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    b.add_argument("--data", required=True,
                   help="an image folder with one sub-folder per class (folder name = class name, '_' read as "
                        "a space; root/classnames.txt, if present, gives the order), or a procedural spec "
                        f"'shapes[:N[:SHIFT]]': N images in total spread over the 16 shapes classes (default "
                        f"{DEFAULT_PROCEDURAL_N}), shift default 'clean', from a seed stream disjoint from the "
                        "evaluation and training images")
    b.add_argument("--out",
                   help="prototypes file to write (default: beside the bundle, <bundle>.prototypes.safetensors "
                        "with a trailing '.bundle' dropped; for the embedded bundle, which lives inside the "
                        f"installed package, ./{EMBEDDED_DEFAULT_OUT})")
    b.add_argument("--classes", help='classes to build, in this order: "cat,dog", or @FILE: a UTF-8 text file with one '
                                     "name per line (commas allowed inside a name; default: every class found)")
    b.add_argument("--batch-size", type=positive_int, default=64, help="images per encoder call (default 64)")
    b.add_argument("--seed", type=int, default=PROTOTYPE_SEED,
                   help=f"base seed of a procedural proxy set (default {PROTOTYPE_SEED})")
    add_model_args(b)
    b.add_argument("--threads", type=positive_int, help="CPU threads for onnxruntime and PyTorch (default: their own)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing prototypes file")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b.set_defaults(func=cmd_prototypes_build)
    return p


def default_out(bundle: str | None) -> Path:
    """The default --out for `bundle` (None: the embedded bundle → ./micro.prototypes.safetensors)."""
    from edgeclip.cli_args import is_embedded_bundle
    from edgeclip.runtime.prototypes import default_prototypes_path

    if is_embedded_bundle(bundle):
        return Path(EMBEDDED_DEFAULT_OUT)
    return default_prototypes_path(bundle)


def cmd_prototypes_build(args: argparse.Namespace) -> int:
    """Build, save and summarise prototypes (text, or JSON with ``--json``). Returns 0."""
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.runtime.prototypes import build_prototypes

    out = Path(args.out).expanduser() if args.out else default_out(args.bundle)
    if out.exists() and not args.overwrite:
        raise EdgeClipError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    t0 = time.perf_counter()
    model = load_model(args)
    class_names = None if args.classes is None else parse_class_spec(args.classes)
    protos = build_prototypes(model, args.data, class_names=class_names,
                              batch_size=args.batch_size, progress=not args.json, seed=args.seed)
    path = protos.save(out)
    payload = {"path": str(path), **protos.summary(), "backend": model.backend,
               "seconds": round(time.perf_counter() - t0, 3)}
    from edgeclip.cli import _emit

    per_class = protos.counts.tolist()
    lo, hi = min(per_class), max(per_class)
    spread = f"{lo}" if lo == hi else f"{lo}–{hi}"
    src = payload["source"]
    where = src.get("path") if src.get("type") == "image_folder" else (
        f"shapes, {src['n']} images, shift {src['shift']}, seed {src['seed']}")
    _emit(args, payload, f"wrote {path}\n{protos.n_classes} classes, {spread} images per class ({payload['images']} "
          f"in all), embed dim {protos.dim}\nsource: {where}\nbundle: {payload['bundle']} ({model.backend})")
    return 0
