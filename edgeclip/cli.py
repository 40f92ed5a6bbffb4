"""The `edgeclip` command. Thin: every verb calls a library function and prints its result."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edgeclip.errors import EdgeClipError

log = logging.getLogger("edgeclip.cli")


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _parse_ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


# -- verbs ----------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from edgeclip.demo import demo_table, run_demo, run_tta_demo, tta_table

    result = run_demo(args.bundle, n_per_shift=args.n, backends=args.backend, threads=args.threads,
                      progress=not args.json)
    text = (f"edgeclip demo: zero-shot on {len(result['classes'])} classes, {args.n} images per shift, "
            f"batch 1\nbundle: {result['bundle']}\n\n" + demo_table(result))
    if args.tta_n > 0:
        tta = run_tta_demo(args.bundle, n_per_shift=args.tta_n, threads=args.threads, progress=not args.json)
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


def _read_classes(spec: str) -> list[str]:
    from edgeclip.runtime.classnames import parse_class_list

    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise EdgeClipError(f"class file {path} does not exist")
        spec = path.read_text()
    return parse_class_list(spec)


def cmd_classify(args: argparse.Namespace) -> int:
    import edgeclip
    from edgeclip.runtime.images import iter_image_paths

    paths = iter_image_paths(args.images)
    if not paths:
        raise EdgeClipError(f"no images found in {', '.join(args.images)}")
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    clf = model.classifier(_read_classes(args.classes), template=args.template)
    records = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        pred = clf.predict(chunk)
        for path, rec in zip(chunk, pred.to_records(args.top_k), strict=True):
            records.append({"image": str(path), **rec})
    lines = [f"{r['image']}: {r['label']} ({100 * r['confidence']:.1f}%)  " +
             ", ".join(f"{t['label']} {100 * t['prob']:.1f}%" for t in r["top"][1:]) for r in records]
    _emit(args, {"backend": model.backend, "results": records}, "\n".join(lines))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from edgeclip.info import bundle_info, info_text

    info = bundle_info(args.bundle, verify=not args.no_verify)
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


def cmd_bench_encoders(args: argparse.Namespace) -> int:
    from edgeclip.bench import bench_encoders, bench_encoders_for_model, write_report

    common: dict[str, Any] = {"batches": tuple(args.batch), "threads": args.threads, "progress": not args.json}
    if args.repeats is not None:
        common["repeats"] = args.repeats
    if args.model:
        results = bench_encoders_for_model(args.model, Path(args.cache), **common)
        name = f"encoders-{args.model}"
    else:
        results = bench_encoders(args.bundle or "micro", **common)
        name = "encoders-" + (Path(args.bundle).name if args.bundle else "micro")
    paths = write_report(results, Path(args.out), name)
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def _parse_frames(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        h, sep, w = part.lower().partition("x")
        if not part or not sep or not h.strip().isdigit() or not w.strip().isdigit() or min(int(h), int(w)) < 1:
            raise argparse.ArgumentTypeError(f"expected comma-separated HxW frame sizes, e.g. 1080x1920, got {text!r}")
        out.append((int(h), int(w)))
    return out


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    from edgeclip.bench import bench_kernels, write_report

    kwargs: dict[str, Any] = {"device": args.device, "threads": args.threads, "frames": tuple(args.frames),
                              "n_views": args.views, "size": args.size, "classes": tuple(args.classes),
                              "dims": tuple(args.dims), "progress": not args.json}
    if args.quick:
        kwargs.update(warmup=1, repeats=3, time_budget_s=2.0)
    if args.repeats is not None:
        kwargs["repeats"] = args.repeats
    results = bench_kernels(**kwargs)
    name = "kernels" if args.device == "cpu" else "kernels-cuda"
    paths = write_report(results, Path(args.out), name)
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def cmd_bench_view_accuracy(args: argparse.Namespace) -> int:
    from edgeclip.bench import write_report
    from edgeclip.bench.view_accuracy import tpt_view_accuracy

    results = tpt_view_accuracy(args.bundle, n=args.n, threads=args.threads, show_progress=not args.json)
    results["title"] = "TPT accuracy with edgeclip's views vs torchvision's views (same boxes)"
    results["columns"] = ["shift", "n", "tpt_kernel", "tpt_torchvision", "diff_points", "same_prediction"]
    paths = write_report(results, Path(args.out), "view-accuracy")
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def cmd_bench_online_memory(args: argparse.Namespace) -> int:
    from edgeclip.bench.online_memory import bench_online_memory, rejudge

    if args.rejudge:
        results = rejudge(args.rejudge, None if args.out_given is None else Path(args.out_given))
    else:
        results = bench_online_memory(
            args.bundle, method=args.method, frames=args.frames, segment=args.segment, every=args.every,
            warmup=args.warmup, threads=args.threads, n_views=args.views, prototypes=args.prototypes,
            seed=args.seed, out_dir=Path(args.out_given or "bench-results"), progress=not args.json)
    paths = results["files"]
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def _parse_names(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return vals


# `edgeclip bench tta`: full-size defaults, and the --quick ones (smoke runs); an explicit flag wins over both
TTA_DEFAULTS: dict[str, Any] = {"n": 512, "n_reference": 64, "views": 64, "model": "ViT-B-32",
                                "classes": [10, 100, 1000], "speed_images": 3, "repeats": 5, "text_budget": 60.0,
                                "prototypes": None}
TTA_QUICK: dict[str, Any] = {"n": 16, "n_reference": 4, "views": 16, "model": None, "classes": [10],
                             "speed_images": 1, "repeats": 2, "text_budget": 5.0, "prototypes": "shapes:128"}


def cmd_bench_tta(args: argparse.Namespace) -> int:
    from edgeclip.bench.tta import PARTS, bench_tta

    base = TTA_QUICK if args.quick else TTA_DEFAULTS

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return base[name] if value is None else value

    model = pick("model")
    if isinstance(model, str) and model.lower() == "none":
        model = None
    imbalanced = args.imbalanced_shift if args.imbalanced_shift is not None else ["clean"]
    imbalanced = [s for s in imbalanced if s.lower() != "none"]
    classes = pick("classes")
    results = bench_tta(
        args.part or PARTS, bundle=args.bundle or "micro", backend=args.backend, device=args.device,
        threads=args.threads, n=pick("n"), n_reference=pick("n_reference"), shifts=args.shifts,
        imbalanced_shifts=imbalanced, prototypes=pick("prototypes"), n_views=pick("views"), model=model,
        cache_dir=Path(args.cache), classes=classes, speed_images=pick("speed_images"),
        text_bundles=args.text_bundle or ["micro"], text_classes=args.text_classes or classes,
        text_repeats=pick("repeats"), text_time_budget_s=pick("text_budget"), out_dir=Path(args.out),
        report_suffix="" if args.device == "cpu" else "-cuda", progress=not args.json, seed=args.seed)
    texts = [paths["md"].read_text() for paths in results["files"].values()]
    written = [str(p) for paths in results["files"].values() for p in paths.values()]
    _emit(args, results, "\n".join(texts) + "\nwrote " + ", ".join(written))
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeclip", description="Edge adaptation runtime for CLIP.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = p.add_subparsers(dest="verb", required=True)

    d = sub.add_parser("demo", help="zero-shot and test-time adaptation of the embedded bundle under domain shifts")
    d.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    d.add_argument("--n", type=int, default=200, help="images per shift (default 200)")
    d.add_argument("--backend", action="append", choices=["torch", "onnxruntime"],
                   help="backend to run (repeatable; default: every one present)")
    d.add_argument("--threads", type=int, help="CPU threads for onnxruntime")
    d.add_argument("--tta-n", type=int, default=16,
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

    c = sub.add_parser("classify", help="zero-shot classify images or folders")
    c.add_argument("images", nargs="+", help="image files or folders")
    c.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    c.add_argument("--classes", required=True, help='"cat,dog,robot arm" or @file with one name per line')
    c.add_argument("--template", default="a photo of a {}.", help="prompt template with {} for the class")
    c.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    c.add_argument("--threads", type=int)
    c.add_argument("--top-k", type=int, default=3)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_classify)

    i = sub.add_parser("info", help="what a bundle holds, its parity, and the backends this machine can run")
    i.add_argument("bundle", nargs="?", help="bundle directory (default: the embedded micro CLIP)")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check of every file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train-micro", help="train the embedded micro CLIP on the shapes dataset and export it")
    t.add_argument("--out", default=None, help="bundle to write (default: the package's embedded bundle)")
    t.add_argument("--work", default="micro-work", help="folder for the checkpoint and logs")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_micro)

    from edgeclip.cli_prototypes import add_parser as add_prototypes_parser

    add_prototypes_parser(sub)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("encoders", help="PyTorch eager vs each ONNX Runtime provider, image and text")
    src = be.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    src.add_argument("--model", help="open_clip name: export a random-weight bundle once and bench it")
    be.add_argument("--cache", default="bench-results/bundles", help="where --model bundles are kept")
    be.add_argument("--batch", type=_parse_ints, default=[1, 8, 64], help="batch sizes, e.g. 1,8,64")
    be.add_argument("--repeats", type=int, default=None, help="timed runs per case")
    be.add_argument("--threads", type=int, default=None, help="CPU threads (torch and onnxruntime)")
    be.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_bench_encoders)
    bk = bsub.add_parser("kernels", help="per-frame kernels (augment_views, cosine_logits + select_confident) "
                         "vs TPT-style PIL / torchvision / PyTorch code")
    bk.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the kernels run (default cpu)")
    bk.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    bk.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    bk.add_argument("--quick", action="store_true", help="few repeats and a short time budget (smoke runs)")
    bk.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 20; --quick 3)")
    bk.add_argument("--frames", type=_parse_frames, default=[(1080, 1920), (480, 640)],
                    help="frame sizes HxW for augment_views, e.g. 1080x1920,480x640")
    bk.add_argument("--views", type=int, default=64, help="views per frame, and N for cosine+select (default 64)")
    bk.add_argument("--size", type=int, default=224, help="view side in pixels (default 224)")
    bk.add_argument("--classes", type=_parse_ints, default=[10, 100, 1000], help="class counts C, e.g. 10,100,1000")
    bk.add_argument("--dims", type=_parse_ints, default=[512, 768], help="embedding widths D, e.g. 512,768")
    bk.add_argument("--json", action="store_true")
    bk.set_defaults(func=cmd_bench_kernels)

    bv = bsub.add_parser("view-accuracy", help="TPT on the held-out micro benchmark with edgeclip's views and "
                         "with torchvision's views on the same boxes")
    bv.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    bv.add_argument("--n", type=int, default=256, help="held-out frames per shift (default 256)")
    bv.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    bv.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    bv.add_argument("--json", action="store_true")
    bv.set_defaults(func=cmd_bench_view_accuracy)
    bo = bsub.add_parser("online-memory", help="memory of a long online run (RSS, method state, gc objects) "
                         "one frame at a time on a stream that changes shift every --segment frames")
    bo.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    bo.add_argument("--method", choices=["promptsync", "online_prototypes", "tpt"], default="promptsync",
                    help="promptsync: online PromptSync with a prototype bank (default); online_prototypes; "
                    "tpt: episodic TPT (a control)")
    bo.add_argument("--frames", type=int, default=20000, help="frames in the stream (default 20000)")
    bo.add_argument("--segment", type=int, default=500, help="frames per shift before the next one (default 500)")
    bo.add_argument("--every", type=int, default=250, help="a memory sample every this many frames (default 250)")
    bo.add_argument("--warmup", type=int, default=500,
                    help="first frames excluded from the memory verdict (default 500)")
    bo.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    bo.add_argument("--views", type=int, default=64, help="views per frame (default 64)")
    bo.add_argument("--prototypes", default=None, help="class prototypes for promptsync and online_prototypes: a "
                    "prototypes file, or a spec/folder to build them from (default shapes:512)")
    bo.add_argument("--seed", type=int, default=0, help="seed of the methods' views")
    bo.add_argument("--out", dest="out_given", default=None,
                    help="folder for the JSON, Markdown and PNG reports (default bench-results; with --rejudge: "
                    "beside the JSON)")
    bo.add_argument("--rejudge", metavar="JSON", default=None, help="recompute the verdict of a saved "
                    "online-memory.json from its samples under the current rule and rewrite its reports "
                    "(runs no frame)")
    bo.add_argument("--json", action="store_true")
    bo.set_defaults(func=cmd_bench_online_memory)
    bt = bsub.add_parser("tta", help="test-time adaptation: accuracy and latency of every method, edgeclip's TPT "
                         "vs the reference TPT per image, text path against the number of classes")
    bt.add_argument("--part", action="append", choices=["accuracy", "speed", "text-stress"],
                    help="part to run (repeatable; default: all three)")
    bt.add_argument("--bundle", help="bundle of the accuracy part and of speed's first bundle (default: the "
                    "embedded micro CLIP)")
    bt.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                    help="edgeclip's encoder backend (the reference always runs fp32 PyTorch)")
    bt.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bt.add_argument("--threads", type=int, default=None, help="PyTorch and onnxruntime CPU threads")
    bt.add_argument("--n", type=int, default=None, help="held-out frames per shift (default 512; --quick 16)")
    bt.add_argument("--n-reference", type=int, default=None,
                    help="frames per shift for the (slow) reference TPT in the accuracy part (default 64; --quick 4)")
    bt.add_argument("--shifts", type=_parse_names, default=None, help="held-out shifts, e.g. clean,blur (default: all)")
    bt.add_argument("--imbalanced-shift", action="append", default=None,
                    help="shift of the class-imbalanced stream (repeatable; default clean; 'none': skip it)")
    bt.add_argument("--prototypes", default=None, help="class prototypes for PromptSync and online prototypes: a "
                    "prototypes file, or a spec/folder to build them from (default shapes:512; --quick shapes:128)")
    bt.add_argument("--views", type=int, default=None, help="views per frame (default 64; --quick 16)")
    bt.add_argument("--model", default=None, help="open_clip name of the speed part's random-weight bundle, exported "
                    "once into --cache (default ViT-B-32; --quick: none; 'none': micro only)")
    bt.add_argument("--cache", default="bench-results/bundles", help="where random-weight bundles are kept")
    bt.add_argument("--classes", type=_parse_ints, default=None,
                    help="class counts C for speed and text-stress (default 10,100,1000; --quick 10)")
    bt.add_argument("--text-classes", type=_parse_ints, default=None, help="class counts for text-stress only "
                    "(default: --classes)")
    bt.add_argument("--text-bundle", action="append", default=None,
                    help="text-stress bundle: micro (default), model (the --model bundle) or a bundle dir; repeatable")
    bt.add_argument("--speed-images", type=int, default=None,
                    help="timed images per speed case, after 1 warm-up (default 3; --quick 1)")
    bt.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per text-stress case (default 5; --quick 2)")
    bt.add_argument("--text-budget", type=float, default=None, help="seconds of timed calls after which a "
                    "text-stress case stops (default 60; --quick 5)")
    bt.add_argument("--seed", type=int, default=0, help="seed of views, class names and random embeddings")
    bt.add_argument("--out", default="bench-results", help="folder for the JSON, Markdown and PNG reports")
    bt.add_argument("--quick", action="store_true", help="tiny sizes everywhere (smoke runs); explicit flags win")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_bench_tta)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except EdgeClipError as exc:
        print(f"edgeclip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
