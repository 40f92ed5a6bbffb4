"""`edgeclip bench ...`: the benchmark verbs (encoders, kernels, tta, online-memory, view-accuracy).

Wire it into the main parser with ``add_parser(subparsers)``; every verb calls a function of `edgeclip.bench`
and prints its report through the main command's output helper.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from edgeclip.cli_args import emit as _emit
from edgeclip.cli_args import parse_frames as _parse_frames
from edgeclip.cli_args import parse_ints as _parse_ints
from edgeclip.cli_args import parse_names as _parse_names
from edgeclip.cli_args import positive_int

__all__ = ["add_parser"]


def cmd_bench_encoders(args: argparse.Namespace) -> int:
    from edgeclip.bench import bench_encoders, bench_encoders_for_model, write_report

    common: dict[str, Any] = {"batches": tuple(args.batch), "threads": args.threads, "progress": not args.json,
                              "precision": args.precision}
    if args.repeats is not None:
        common["repeats"] = args.repeats
    suffix = "" if args.precision == ["fp32"] else "-" + "-".join(args.precision)
    if args.model:
        results = bench_encoders_for_model(args.model, Path(args.cache), **common)
        name = f"encoders-{args.model}{suffix}"
    else:
        results = bench_encoders(args.bundle or "micro", cache_dir=Path(args.cache), **common)
        name = "encoders-" + (Path(args.bundle).name if args.bundle else "micro") + suffix
    paths = write_report(results, Path(args.out), name)
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


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
    name = ("kernels" if args.device == "cpu" else "kernels-cuda") + (f"-{args.suffix}" if args.suffix else "")
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
        report_suffix=("" if args.device == "cpu" else "-cuda") + (f"-{args.suffix}" if args.suffix else ""),
        progress=not args.json, seed=args.seed)
    texts = [paths["md"].read_text() for paths in results["files"].values()]
    written = [str(p) for paths in results["files"].values() for p in paths.values()]
    _emit(args, results, "\n".join(texts) + "\nwrote " + ", ".join(written))
    return 0


def cmd_bench_zero_shot(args: argparse.Namespace) -> int:
    from edgeclip.bench import write_report
    from edgeclip.bench.zero_shot import REPORT_NAME, bench_zero_shot

    results = bench_zero_shot(args.bundle or "micro", n=args.n, threads=args.threads, progress=not args.json)
    paths = write_report(results, Path(args.out), REPORT_NAME if args.bundle is None else f"zero-shot-{args.name}")
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def cmd_bench_report(args: argparse.Namespace) -> int:
    from edgeclip.bench.suite_report import run_suite_report

    summary = run_suite_report(Path(args.out), quick=args.quick, device=args.device, threads=args.threads,
                               progress=not args.json, benches=args.only, cache_dir=Path(args.cache))
    lines = [f"{b['name']}: {b['status']}" + ("" if b["status"] == "ok" else f": {b.get('reason') or b.get('error')}")
             + (f" ({b['seconds']:.1f} s)" if b["seconds"] is not None else "") for b in summary["benches"]]
    lines.append(f"wrote {summary['files']['md']} and {summary['files']['json']} in {summary['seconds']:.0f} s")
    _emit(args, summary, "\n".join(lines))
    return 0 if summary["ok"] else 1


def _precision_arg(text: str) -> list[str]:
    """``--precision``: a comma list of fp32, int8, fp16 (`edgeclip.bench.encoders.parse_precisions`)."""
    from edgeclip.bench.encoders import parse_precisions
    from edgeclip.errors import InputError

    try:
        return parse_precisions(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _views_arg(text: str) -> list[int]:
    """``--views``: comma-separated view counts (`edgeclip.bench.views_sweep.parse_views`)."""
    from edgeclip.bench.views_sweep import parse_views
    from edgeclip.errors import InputError

    try:
        return parse_views(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_bench_views(args: argparse.Namespace) -> int:
    from edgeclip.bench.views_sweep import bench_views

    kwargs: dict[str, Any] = {"n": args.n, "shifts": args.shifts, "prototypes": args.prototypes, "seed": args.seed,
                              "threads": args.threads, "backend": args.backend, "out_dir": Path(args.out),
                              "progress": not args.json}
    if args.views is not None:
        kwargs["views"] = args.views
    if args.methods is not None:
        kwargs["methods"] = args.methods
    results = bench_views(args.bundle, **kwargs)
    paths = results["files"]
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0


def cmd_bench_session(args: argparse.Namespace) -> int:
    from edgeclip.bench.session_load import bench_session, write_session_report

    results = bench_session(
        args.bundle, parts=args.part or None, producers=args.producers, frames_zeroshot=args.frames_zeroshot,
        frames_tpt=args.frames_tpt, throughput_frames=args.throughput_frames, throughput_rounds=args.rounds,
        fail_every=args.fail_every, budget_model=None if args.model == "none" else args.model,
        budget_classes=args.classes, budget_ms=args.budget_ms, budget_frames=args.budget_frames,
        reference_frames=args.reference_frames, cache_dir=Path(args.cache), threads=args.threads,
        progress=not args.json)
    paths = write_session_report(results, Path(args.out))
    text = paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values())
    _emit(args, results, text)
    return 0 if results["ok"] else 1


def cmd_bench_train(args: argparse.Namespace) -> int:
    if args.method != "grip":
        from edgeclip.bench.train_cost import bench_train_cost, write_cost_report

        results = bench_train_cost(args.method, args.bundle, model_name=args.model, classes=args.classes,
                                   tasks=args.tasks, per_class=args.per_class, epochs=args.epochs,
                                   rounds=args.rounds, threads=args.threads, cache_dir=Path(args.cache),
                                   progress=not args.json)
        paths = write_cost_report(results, Path(args.out), args.suffix)
        _emit(args, results, paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    from edgeclip.bench.train_speed import bench_train, write_train_report

    results = bench_train(args.bundle, model_name=args.model, classes=args.classes, samples=args.samples,
                          batch=args.batch, rounds=args.rounds, max_time=args.max_time, threads=args.threads,
                          cache_dir=Path(args.cache), progress=not args.json)
    paths = write_train_report(results, Path(args.out), args.suffix)
    _emit(args, results, paths["md"].read_text() + "\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


#: verbs whose module has ``add_arguments(p)`` and ``run(args)``: (verb, module in edgeclip.bench, help)
_MODULE_VERBS = (
    ("precision", "precision", "the INT8 image encoder against FP32 through onnxruntime on the CPU: speed side by "
     "side per batch size, zero-shot and TPT accuracy per shift"),
    ("arf", "arf_eval", "ARF against zero-shot, plain fine-tuning and WiSE-FT in the device and the workstation "
     "mode: in-distribution, under the other shifts, on held-out classes; paired CIs"),
    ("clap", "clap_eval", "CLAP class-incremental under a shift against Continual-CLIP and a linear head: "
     "incremental / last accuracy, forgetting, ECE, novelty AUROC and FPR95 over seeds"),
    ("pseudolabel", "pseudolabel_eval", "FPL / IFPL / GRIP without labels against zero-shot on held-out shifts of "
     "the micro world, paired CIs, per-class accuracy before and after"),
    ("ship", "ship_eval", "SHIP + CoOp against CoOp alone on a base/new split of the micro classes (base, new, "
     "harmonic mean, paired CIs)"),
    ("trzsl", "trzsl_eval", "transductive zero-shot GRIP (8 seen classes labelled, 8 unseen) against zero-shot: "
     "harmonic mean of seen and unseen accuracy, paired CIs"),
)


def _cmd_module(module: str) -> Any:
    """A verb that runs `edgeclip.bench.<module>.run(args)` and prints the Markdown report it wrote."""

    def cmd(args: argparse.Namespace) -> int:
        results = importlib.import_module(f"edgeclip.bench.{module}").run(args)
        md = Path(args.out) / f"{args.name}.md"
        _emit(args, results, md.read_text() + f"\nwrote {md} and its JSON")
        return 0

    return cmd


# -- parser ---------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` (with its verbs) to an ``argparse`` subparsers object; returns its parser."""
    b = subparsers.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    be = bsub.add_parser("encoders", help="PyTorch eager vs each ONNX Runtime provider, image and text")
    src = be.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    src.add_argument("--model", help="open_clip name: export a random-weight bundle once and bench it")
    be.add_argument("--cache", default="bench-results/bundles", help="where --model bundles and the INT8 / FP16 "
                    "variants are kept")
    be.add_argument("--precision", type=_precision_arg, default=["fp32"],
                    help="precisions side by side, e.g. fp32,int8 or fp32,int8,fp16 (default fp32); int8 and fp16 "
                    "are variants timed through onnxruntime (fp32 is always timed, as the reference)")
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
    bk.add_argument("--suffix", default=None, help="added to the report name (kernels-SUFFIX), e.g. the build level "
                    "forced with EDGECLIP_NATIVE_MARCH")
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
    bz = bsub.add_parser("zero-shot", help="zero-shot accuracy of a bundle on the held-out micro benchmark, every "
                         "shift, through the exported encoders")
    bz.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    bz.add_argument("--name", default="bundle", help="report name suffix for a --bundle (zero-shot-NAME)")
    bz.add_argument("--n", type=positive_int, default=2048, help="held-out images per shift (default 2048)")
    bz.add_argument("--threads", type=positive_int, default=None, help="torch and onnxruntime threads")
    bz.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    bz.add_argument("--json", action="store_true")
    bz.set_defaults(func=cmd_bench_zero_shot)
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
    bt.add_argument("--suffix", default=None, help="added to the report names (tta-text-stress-SUFFIX...), so runs "
                    "of other bundles do not overwrite each other")
    bt.add_argument("--out", default="bench-results", help="folder for the JSON, Markdown and PNG reports")
    bt.add_argument("--quick", action="store_true", help="tiny sizes everywhere (smoke runs); explicit flags win")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(func=cmd_bench_tta)
    bw = bsub.add_parser("views", help="accuracy against the number of views per frame for TPT, PromptSync and "
                         "ZERO (episodic) on the held-out micro benchmark, zero-shot as the floor, paired differences "
                         "against the largest view count, and the per-frame latency on this machine")
    bw.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    bw.add_argument("--n", type=positive_int, default=256, help="held-out frames per shift (default 256)")
    bw.add_argument("--views", type=_views_arg, default=None,
                    help="view counts, comma-separated, each >= 1, at least two (default 1,2,4,8,16,32,64)")
    bw.add_argument("--methods", type=_parse_names, default=None,
                    help="view-based methods, e.g. tpt,promptsync,zero (the default); zero-shot always runs")
    bw.add_argument("--shifts", type=_parse_names, default=None, help="held-out shifts, e.g. clean,blur (default: all)")
    bw.add_argument("--prototypes", default=None, help="PromptSync's class prototypes: a prototypes file, or a "
                    "spec/folder to build them from (default shapes:512)")
    bw.add_argument("--seed", type=int, default=0, help="seed of the methods' views and of the bootstrap")
    bw.add_argument("--threads", type=positive_int, default=None, help="torch and onnxruntime threads")
    bw.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"], help="encoder backend")
    bw.add_argument("--out", default="bench-results", help="folder for the JSON, Markdown and PNG reports")
    bw.add_argument("--json", action="store_true")
    bw.set_defaults(func=cmd_bench_views)
    from edgeclip.bench.session_load import PARTS as SESSION_PARTS

    bs = bsub.add_parser("session", help="a Session under load (threads x frames, both policies, injected "
                         "failures), its throughput beside a bare predict loop, and TPT under a latency budget; "
                         "exit status 1 when a check or goal fails")
    bs.add_argument("--bundle", help="bundle of the load and throughput parts (default: the embedded micro CLIP)")
    bs.add_argument("--part", action="append", choices=SESSION_PARTS, help="run only this part (repeatable)")
    bs.add_argument("--producers", type=positive_int, default=4, help="submitting threads (default 4)")
    bs.add_argument("--frames-zeroshot", type=positive_int, default=5000, help="frames per thread, zero-shot")
    bs.add_argument("--frames-tpt", type=positive_int, default=500, help="frames per thread, TPT")
    bs.add_argument("--throughput-frames", type=positive_int, default=500, help="frames per throughput round")
    bs.add_argument("--rounds", type=positive_int, default=10, help="paired throughput rounds (default 10)")
    bs.add_argument("--fail-every", type=positive_int, default=97, help="inject a failure every N calls")
    bs.add_argument("--model", default="ViT-B-32", help="open_clip architecture of the budget part (random "
                    "weights, exported once into --cache); 'none': the --bundle")
    bs.add_argument("--classes", type=positive_int, default=10, help="classes of the budget part (default 10)")
    bs.add_argument("--budget-ms", type=float, default=1000.0, help="latency budget of the budget part")
    bs.add_argument("--budget-frames", type=positive_int, default=20, help="frames under the budget")
    bs.add_argument("--reference-frames", type=positive_int, default=3, help="frames at the full view count")
    bs.add_argument("--cache", default="bench-results/bundles", help="where random-weight bundles are kept")
    bs.add_argument("--threads", type=positive_int, default=None, help="torch and onnxruntime threads")
    bs.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(func=cmd_bench_session)
    from edgeclip.bench.suite_report import BENCHES as REPORT_BENCHES

    bp = bsub.add_parser("report", help="every bench this machine supports into one Markdown report with PNG plots "
                         "(latency per backend and precision, accuracy against latency, memory against classes), "
                         "beside each bench's JSON; a bench that cannot run is listed as skipped; exit status 1 when "
                         "one failed")
    bp.add_argument("--out", required=True, help="folder for report.md, report.json, the plots and every bench's "
                    "JSON and Markdown")
    bp.add_argument("--quick", action="store_true", help="CI-sized settings (micro bundle, few repeats; ~1-2 min)")
    bp.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                    help="auto (default): the CUDA benches too when a CUDA device is present; cpu: CPU benches only")
    bp.add_argument("--threads", type=positive_int, default=None, help="torch and onnxruntime threads")
    bp.add_argument("--only", action="append", choices=REPORT_BENCHES, default=None,
                    help="run only this bench (repeatable); the others are listed as not selected")
    bp.add_argument("--cache", default="bench-results/bundles", help="where random-weight bundles and the INT8 / "
                    "FP16 variants are kept")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_bench_report)
    for verb, module, text in _MODULE_VERBS:
        bm = bsub.add_parser(verb, help=text)
        importlib.import_module(f"edgeclip.bench.{module}").add_arguments(bm)
        bm.add_argument("--json", action="store_true")
        bm.set_defaults(func=_cmd_module(module))
    br = bsub.add_parser("train", help="training cost: one GRIP epoch (cached embeddings and the truncated text "
                         "tower against the official structure: image tower every step, 77 tokens), one CLAP task, "
                         "one ARF epoch (device and workstation mode), with peak memory")
    br.add_argument("--method", choices=["grip", "clap", "arf"], default="grip", help="what to train (default grip)")
    src = br.add_mutually_exclusive_group()
    src.add_argument("--bundle", help="bundle (default: the embedded micro CLIP)")
    src.add_argument("--model", help="open_clip name: a random-weight bundle exported once into --cache")
    br.add_argument("--classes", type=positive_int, default=None, help="classes C (default: the micro CLIP's 16)")
    br.add_argument("--samples", type=positive_int, default=256, help="pseudo-labelled images per epoch")
    br.add_argument("--batch", type=positive_int, default=16, help="batch size (GRIP: 16)")
    br.add_argument("--rounds", type=positive_int, default=5, help="paired rounds (one epoch each way); clap and "
                    "arf: repeats with a fresh learner")
    br.add_argument("--tasks", type=positive_int, default=4, help="clap: tasks the classes are split into")
    br.add_argument("--per-class", type=positive_int, default=16, help="clap and arf: images per class")
    br.add_argument("--epochs", type=positive_int, default=5, help="arf: epochs per fit (timed per epoch)")
    br.add_argument("--max-time", type=float, default=120.0, help="stop after this many seconds of the slower one")
    br.add_argument("--threads", type=positive_int, default=None, help="torch and onnxruntime threads")
    br.add_argument("--cache", default="bench-results/bundles", help="where random-weight bundles are kept")
    br.add_argument("--suffix", default=None, help="added to the report name (train-speed-SUFFIX; clap and arf: "
                    "train-cost-METHOD-SUFFIX)")
    br.add_argument("--out", default="bench-results", help="folder for the JSON and Markdown reports")
    br.add_argument("--json", action="store_true")
    br.set_defaults(func=cmd_bench_train)
    return b
