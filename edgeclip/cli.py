"""The `edgeclip` command. Thin: every verb calls a library function and prints its result.

Exit status: 0 success; 1 ``classify`` could not classify some files (each is reported), or the output pipe
was closed early (``edgeclip info --json | head -1``); 2 a bad argument or any other error edgeclip names
(one line on stderr); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM during an export, after cleaning up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from edgeclip.cli_args import (
    add_model_args,
    bit_depth,
    load_model,
    max_pixels,
    nonnegative_int,
    parse_setting,
    positive_int,
    template,
)
from edgeclip.cli_args import emit as _emit
from edgeclip.errors import EdgeClipError, ImageTooLargeError

log = logging.getLogger("edgeclip.cli")

__all__ = ["build_parser", "main"]


# -- verbs ----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from edgeclip.demo import demo_table, run_demo, run_tta_demo, tta_table

    result = run_demo(args.bundle, n_per_shift=args.n, backends=args.backend, threads=args.threads,
                      progress=not args.json)
    text = (f"edgeclip demo: zero-shot on {len(result['classes'])} classes, {args.n} images per shift, "
            f"batch 1\nbundle: {result['bundle']}\n\n" + demo_table(result))
    if args.tta_n > 0:
        backend = args.backend[0] if args.backend else "auto"
        tta = run_tta_demo(args.bundle, n_per_shift=args.tta_n, threads=args.threads, backend=backend,
                           progress=not args.json)
        result["tta"] = tta
        text += (f"\n\ntest-time adaptation, {args.tta_n} frames per shift, one at a time, 64 views each "
                 f"({tta['backend']}; PromptSync prototypes from {tta['prototypes']}):\n\n" + tta_table(tta))
    _emit(args, result, text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgeclip.export import export_bundle

    if args.pretrained and args.checkpoint:
        raise EdgeClipError("give either --pretrained or --checkpoint, not both")
    res = export_bundle(args.out, args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        storage=args.storage, include_image_tower=not args.no_image_tower,
                        overwrite=args.overwrite, progress=not args.json)
    p = res.parity
    text = (f"wrote {res.path}\nparity vs PyTorch (min cosine): image {p.image_min_cos:.7f}, "
            f"text {p.text_min_cos:.7f}; truncated text tower max abs diff {p.truncation_max_abs:.2e}")
    _emit(args, {"path": str(res.path), "parity": p.to_dict()}, text)
    return 0


def _without_prefix(text: str, image: str) -> str:
    return text[len(image) + 2:] if text.startswith(f"{image}: ") else text


def _file_error(image: str, exc: Exception) -> str:
    """A file's error in the command line's terms (the pixel limit is ``--max-pixels`` here)."""
    if isinstance(exc, ImageTooLargeError):
        need = str(exc.pixels) if exc.pixels else "N"
        return _without_prefix(f"{exc.problem}; pass --max-pixels {need} (or --max-pixels none) to allow it", image)
    return _without_prefix(str(exc), image)


def stream_results(args: argparse.Namespace, results: Iterable[Any]) -> int:
    """Print `edgeclip.classify.FileResult`s as they come (text lines or JSON Lines); the exit status."""
    total = failed = 0
    last = None
    for res in results:
        total += 1
        last = res
        if res.ok:
            rec = res.to_dict()
            line = json.dumps(rec) if args.json else (
                f"{res.image}: {rec['label']} ({100 * rec['confidence']:.1f}%)  "
                + ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in rec["top"][1:])).rstrip()
        else:
            failed += 1
            error = _file_error(res.image, res.exception)
            line = json.dumps({"image": res.image, "error": error}) if args.json else f"{res.image}: error: {error}"
        print(line, flush=True)
    if not failed:
        return 0
    stopped = f"; stopped at {last.image} (--strict)" if args.strict and last is not None and not last.ok else ""
    print(f"edgeclip: {failed} of {total} images could not be classified{stopped}", file=sys.stderr)
    return 1


def make_method(args: argparse.Namespace, model: Any, names: list[str] | None) -> Any:
    """The method `args` name (``--method``, ``--head``, ``--set``, ``--template``, ``--prototypes``), through
    the registry."""
    from edgeclip.runtime.methods import create_method

    name, head, settings = method_spec(args)
    return create_method(name, model, names, head=head, **settings)


def method_spec(args: argparse.Namespace) -> tuple[str, Any, dict[str, Any]]:
    """``(method name, head, settings)`` from ``--method``, ``--head``, ``--set``, ``--template``, ``--prototypes``
    (checked against the method), for `create_method` or a `Session`."""
    from edgeclip.runtime.head import read_head
    from edgeclip.runtime.methods import method_class

    head = getattr(args, "head", None)
    name = args.method or (read_head(head).method if head is not None else "zeroshot")
    cls = method_class(name)
    settings = dict(getattr(args, "settings", None) or [])
    if getattr(args, "template", None) is not None:
        if "template" not in cls.config_class.__dataclass_fields__:
            raise EdgeClipError(f"method {cls.name!r} takes no --template (it learns or tunes its prompt)")
        settings["template"] = args.template
    if getattr(args, "prototypes", None) is not None:
        if "prototypes" not in cls.resources:
            raise EdgeClipError(f"method {cls.name!r} takes no --prototypes")
        settings["prototypes"] = args.prototypes
    return cls.name, head, settings


def cmd_classify(args: argparse.Namespace) -> int:
    from edgeclip.classify import classify_files
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.runtime.images import iter_image_paths

    if args.classes is None and args.head is None:
        raise EdgeClipError("give --classes (or a --head, which brings its classes)")
    paths = iter_image_paths(args.images)
    if not paths:
        raise EdgeClipError(f"no images found in {', '.join(args.images)}")
    names = parse_class_spec(args.classes) if args.classes is not None else None
    model = load_model(args)
    method = make_method(args, model, names)
    log.info("classifying %d images with %s on %s", len(paths), method.name, model.backend)
    results = classify_files(paths, method.predict, batch_size=args.batch_size, top_k=args.top_k,
                             max_pixels=args.max_pixels, bit_depth=args.bit_depth, strict=args.strict)
    return stream_results(args, results)


def cmd_info(args: argparse.Namespace) -> int:
    from edgeclip.info import bundle_info, info_text

    info = bundle_info(args.bundle, verify=not args.no_verify, calibrate=args.calibrate, device=args.device,
                       threads=args.threads)
    _emit(args, info, info_text(info))
    return 0


def cmd_train_micro(args: argparse.Namespace) -> int:
    from edgeclip.micro.build import build_micro_bundle

    result = build_micro_bundle(out=args.out, work=args.work, steps=args.steps, seed=args.seed,
                                progress=not args.json)
    text = "\n".join(f"{k}: {v}" for k, v in result.items() if k != "shift_accuracy")
    if "shift_accuracy" in result:
        text += "\nzero-shot accuracy by shift (held-out seed):\n" + "\n".join(
            f"  {k:20s} {100 * v:.1f}%" for k, v in result["shift_accuracy"].items())
    _emit(args, result, text)
    return 0


# -- parser ---------------------------------------------------------------------------------------
CLASSIFY_EPILOG = """\
output: one line per image as soon as its batch is done, "FILE: LABEL (P%)  next best ...", or
"FILE: error: MESSAGE" for a file that could not be classified (the others still are). With --json:
JSON Lines, one object per image, {"image": FILE, "label": ..., "confidence": ..., "top": [{"label": ...,
"prob": ...}, ...]} or {"image": FILE, "error": MESSAGE}.

exit status: 0 every image was classified; 1 some could not be (each one reported; with --strict the run
stops at the first); 2 bad arguments, classes, template or bundle (nothing classified).
"""


def build_parser() -> argparse.ArgumentParser:
    from edgeclip import __version__
    from edgeclip.runtime.decode import MAX_PIXELS

    p = argparse.ArgumentParser(prog="edgeclip", description="Edge adaptation runtime for CLIP.")
    p.add_argument("--version", action="version", version=f"edgeclip {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = p.add_subparsers(dest="verb", required=True)
    threads_help = "CPU threads for onnxruntime and PyTorch (default: their own)"

    d = sub.add_parser("demo", help="zero-shot and test-time adaptation of the embedded bundle under domain shifts")
    d.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    d.add_argument("--n", type=positive_int, default=200, help="images per shift (default 200)")
    d.add_argument("--backend", action="append", choices=["torch", "onnxruntime"],
                   help="backend of the zero-shot part (repeatable; default: every one present); the adaptation "
                        "part runs on the first one given (default: auto)")
    d.add_argument("--threads", type=positive_int, help=threads_help)
    d.add_argument("--tta-n", type=nonnegative_int, default=16,
                   help="frames per shift for zero-shot vs TPT vs PromptSync vs ZERO (default 16; 0 skips it)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("export", help="export an open_clip model to a bundle")
    e.add_argument("--model", required=True, help="open_clip architecture name, e.g. ViT-B-16")
    e.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (downloads the weights)")
    e.add_argument("--checkpoint", help="local checkpoint file (state dict) for --model")
    e.add_argument("--out", required=True, help="bundle directory to write")
    e.add_argument("--storage", choices=["float32", "float16"], default="float32",
                   help="weight storage precision (compute stays float32)")
    e.add_argument("--no-image-tower", action="store_true",
                   help="skip image_tower.safetensors (smaller bundle; no torch image backend)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export)

    from edgeclip.runtime.methods import list_methods

    c = sub.add_parser("classify", help="classify images or folders (zero-shot, or any method)", epilog=CLASSIFY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("images", nargs="+", help="image files or folders")
    c.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    c.add_argument("--classes", default=None,
                   help='"cat,dog,robot arm", or @FILE: a UTF-8 text file with one name per line (commas allowed '
                        "inside a name); optional with --head (the head's classes)")
    c.add_argument("--method", default=None, choices=list_methods(),
                   help="method (default: zeroshot, or the --head's); test-time methods adapt on every image, in "
                        "the order given")
    c.add_argument("--head", default=None, help="a head file trained by `edgeclip train` (its method and classes)")
    c.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting of the method (repeatable), e.g. --set n_views=32")
    c.add_argument("--prototypes", default=None, help="class prototypes for promptsync / online_prototypes: a "
                   "prototypes file, or a folder or spec to build them from")
    c.add_argument("--template", type=template, default=None,
                   help="prompt template with exactly one {} where the class name goes (methods with a fixed prompt; "
                        "default 'a photo of a {}.')")
    add_model_args(c)
    c.add_argument("--threads", type=positive_int, help=threads_help)
    c.add_argument("--top-k", type=positive_int, default=3, help="classes listed per image (default 3)")
    c.add_argument("--batch-size", type=positive_int, default=32, help="images per encoder call (default 32)")
    c.add_argument("--max-pixels", type=max_pixels, default=MAX_PIXELS, metavar="N",
                   help="largest image (width x height) decoded; larger ones are refused as possible decompression "
                        f"bombs (default {MAX_PIXELS}; 'none': no limit)")
    c.add_argument("--bit-depth", type=bit_depth, default=None, metavar="BITS",
                   help="significant bits of 16-bit image data, e.g. 12 for Mono12 sensor frames (default: by data "
                        "type: 16 for 16-bit files)")
    c.add_argument("--strict", action="store_true", help="stop at the first file that cannot be classified")
    c.add_argument("--json", action="store_true", help="JSON Lines output, one object per image")
    c.set_defaults(func=cmd_classify)

    i = sub.add_parser("info", help="what a bundle holds, its parity, the backends this machine can run and the one "
                       "backend auto picks")
    i.add_argument("bundle", nargs="?", help="bundle directory (default: the embedded micro CLIP)")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the manifest and every file")
    i.add_argument("--calibrate", action="store_true",
                   help="time the backends for backend auto now (a short calibration; the result is cached) instead "
                        "of showing the cached choice")
    i.add_argument("--device", default="cpu", help="device the auto choice is for (default cpu)")
    i.add_argument("--threads", type=positive_int, help=threads_help + "; the auto choice is per thread count")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train-micro", help="train the embedded micro CLIP on the shapes dataset and export it")
    t.add_argument("--out", default=None, help="bundle to write (default: the package's embedded bundle)")
    t.add_argument("--work", default="micro-work", help="folder for the checkpoint and logs")
    t.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the shipped recipe)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_micro)

    from edgeclip.cli_bench import add_parser as add_bench_parser
    from edgeclip.cli_engine import add_parser as add_engine_parser
    from edgeclip.cli_prototypes import add_parser as add_prototypes_parser
    from edgeclip.cli_run import add_parser as add_run_parser
    from edgeclip.cli_train import add_parser as add_train_parser
    from edgeclip.cli_variants import add_parser as add_variant_parsers

    add_variant_parsers(sub)
    add_engine_parser(sub)
    add_run_parser(sub)
    add_prototypes_parser(sub)
    add_train_parser(sub)
    add_bench_parser(sub)
    return p


def _stdout_to_devnull() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush fails quietly too."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured, closed)
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`edgeclip info --json | head -1`): stop quietly
        _stdout_to_devnull()
        return 1
    except ImageTooLargeError as exc:  # a verb without --max-pixels (classify reports it per file)
        print(f"edgeclip: error: {exc.problem}; shrink or remove that image", file=sys.stderr)
        return 2
    except EdgeClipError as exc:
        print(f"edgeclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
