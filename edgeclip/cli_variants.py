"""`edgeclip convert` and `edgeclip quantize`: reduced-precision variants of a bundle.

Wire them with ``add_parser(subparsers)``. Both write a new bundle next to the source (atomically, verified on
re-open) whose manifest records the precision and the parity against the source's FP32 graphs:

* ``convert --precision fp16``: both encoder graphs in FP16 with LayerNorm, Softmax and the final projection kept
  in FP32 (`edgeclip.export.fp16`), for GPU runtimes; checked through onnxruntime on the CPU.
* ``quantize --calib DIR|shapes:N``: the image encoder statically quantised to INT8 (QDQ, per-channel weights,
  the calibration method chosen by measurement; `edgeclip.export.quantize`), the text encoder kept in FP32.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgeclip.cli_args import emit

__all__ = ["add_parser", "cmd_convert", "cmd_quantize"]


def add_parser(subparsers: Any) -> None:
    """Add ``convert`` and ``quantize`` to an ``argparse`` subparsers object."""
    c = subparsers.add_parser("convert", help="write an FP16 variant of a bundle (FP32 islands for LayerNorm, "
                              "Softmax and the projection), checked against FP32")
    c.add_argument("--bundle", help="source bundle (default: the embedded micro CLIP)")
    c.add_argument("--precision", choices=["fp16"], required=True, help="the variant's precision")
    c.add_argument("--out", required=True, help="the new bundle's folder")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_convert)

    q = subparsers.add_parser("quantize", help="write an INT8 variant of a bundle: the image encoder statically "
                              "quantised (QDQ) on calibration images, checked against FP32")
    q.add_argument("--bundle", help="source bundle (default: the embedded micro CLIP)")
    q.add_argument("--calib", default="shapes:256", help="calibration images: a folder, or a procedural spec "
                   "'shapes:N' (default shapes:256; a quarter is held out to choose the method)")
    q.add_argument("--method", choices=["auto", "minmax", "entropy", "percentile"], default="auto",
                   help="calibration method (default auto: each is tried, the best held-out cosine is kept)")
    q.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales instead of per-channel")
    q.add_argument("--out", required=True, help="the new bundle's folder")
    q.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quantize)


def _source(args: argparse.Namespace) -> Any:
    import edgeclip

    return args.bundle if args.bundle else edgeclip.default_bundle()


def _summary(res: Any) -> str:
    figures = ", ".join(f"{k} {v:.7f}" for k, v in sorted(res.parity.items())
                        if "cos" in k and not k.startswith("min_required"))
    lines = [f"wrote {res.path} ({res.kind})", f"parity vs the FP32 source: {figures}"]
    chosen = res.choices.get("method")
    if chosen:
        lines.append(f"calibration method: {chosen} (chosen {res.choices.get('chosen_by', 'by held-out cosine')})")
    lines.append(f"use it: edgeclip classify --bundle {res.path} --classes NAMES IMAGES")
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    """Write the FP16 variant, print its parity. Returns 0."""
    from edgeclip.export.fp16 import convert_bundle_fp16

    res = convert_bundle_fp16(_source(args), args.out, overwrite=args.overwrite, progress=not args.json)
    emit(args, res.to_dict(), _summary(res))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Write the INT8 variant, print its parity and the calibration choice. Returns 0."""
    from edgeclip.export.quantize import quantize_bundle

    res = quantize_bundle(_source(args), args.out, calib=args.calib, method=args.method,
                          per_channel=not args.per_tensor, overwrite=args.overwrite, progress=not args.json)
    emit(args, res.to_dict(), _summary(res))
    return 0
