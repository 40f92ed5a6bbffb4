"""`edgeclip engine build` and `edgeclip engine list`: TensorRT engines of a bundle.

Wire them with ``add_parser(subparsers)``. ``build`` makes (or reuses) one engine per encoder on this GPU with
the TensorRT Python API (`edgeclip.export.tensorrt`), each checked against the bundle's ONNX on the CPU
before it is kept; ``list`` shows the engines next to a bundle and whether each can run here
(`edgeclip.runtime.engine_cache`).
"""

from __future__ import annotations

import argparse
from typing import Any

from edgeclip.cli_args import emit, positive_int

__all__ = ["add_parser", "cmd_engine_build", "cmd_engine_list"]


def add_parser(subparsers: Any) -> None:
    """Add ``engine build`` and ``engine list`` to an ``argparse`` subparsers object."""
    e = subparsers.add_parser("engine", help="TensorRT engines of a bundle: build them on this GPU, list them")
    verbs = e.add_subparsers(dest="engine_verb", required=True)

    b = verbs.add_parser("build", help="build the encoders' TensorRT engines (strongly typed, one profile each), "
                         "gate them on parity with the bundle's ONNX, keep them in <bundle>/engines")
    b.add_argument("--bundle", help="bundle (default: the embedded micro CLIP); an INT8 bundle from `edgeclip "
                   "quantize` for --precision int8")
    b.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="fp32 (TF32 off, a parity build), fp16 (FP16 graph with FP32 LayerNorm/Softmax/projection), "
                        "int8 (the INT8 bundle's Q/DQ image graph; its text engine stays FP32); default fp16")
    b.add_argument("--max-batch", type=positive_int, default=64, help="largest image batch (default 64; the "
                   "profile's optimum is min(64, max))")
    b.add_argument("--max-text-batch", type=positive_int, default=None,
                   help="largest prompt batch of the text engine (default: --max-batch; longer class lists run "
                        "in chunks)")
    b.add_argument("--encoders", default="image,text", help="image,text (default both)")
    b.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace limit in GiB (default 2; "
                   "use 1 on an 8 GB Orin Nano)")
    b.add_argument("--force", action="store_true", help="rebuild even when a valid engine for the same key exists")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_engine_build)

    ls = verbs.add_parser("list", help="the engines next to a bundle and whether each is valid on this machine")
    ls.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_engine_list)


def _bundle(args: argparse.Namespace) -> Any:
    import edgeclip

    return args.bundle if args.bundle else edgeclip.default_bundle()


def cmd_engine_build(args: argparse.Namespace) -> int:
    """Build or reuse the engines; print each with its parity. Returns 0."""
    from edgeclip.errors import InputError
    from edgeclip.export.tensorrt import build_engines

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    if not encoders:
        raise InputError("--encoders needs image, text or both")
    res = build_engines(_bundle(args), args.precision, args.max_batch, max_text_batch=args.max_text_batch,
                        encoders=encoders, workspace_gb=args.workspace_gb, force=args.force,
                        device="cuda", progress=not args.json)
    lines = []
    for e in res.engines:
        p = e["parity"]
        lines.append(f"{e['encoder']:5s} {e['precision']:4s} {e['status']:6s} {e['file']}  max batch {e['max_batch']}, "
                     f"parity min cos {p['min_cos']:.6f} (need >= {p['required']}), build {e['build_seconds']:.1f} s")
    lines.append(f"use them: edgeclip run --bundle {res.bundle} --device cuda --backend tensorrt ...")
    emit(args, res.to_dict(), "\n".join(lines))
    return 0


def cmd_engine_list(args: argparse.Namespace) -> int:
    """List the engine records of a bundle. Returns 0."""
    from edgeclip.info import engine_lines
    from edgeclip.runtime.bundle import open_bundle
    from edgeclip.runtime.engine_cache import list_engines

    engines = [r.to_dict() for r in list_engines(open_bundle(_bundle(args)))]
    emit(args, engines, "\n".join(engine_lines(engines)))
    return 0
