"""`edgeclip train pseudolabel`: pseudo-label prompt tuning (FPL / IFPL / GRIP) on unlabeled images.

Wire it with ``add_parser(train_subparsers)`` (the ``train`` verb's subparsers). The unlabeled images (and the
labelled ones of ssl / trzsl) are encoded once into cached feature pools; every round trains on the cached
embeddings and is checkpointed in ``--work`` (default ``<out>.rounds/``), so an interrupted run started again with
the same arguments resumes after its last finished round; the folder is removed once the head is written.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import parse_setting, positive_int
from edgeclip.errors import EdgeClipError

__all__ = ["add_parser", "cmd_train_pseudolabel"]


def add_parser(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pseudolabel`` to the ``train`` verb's subparsers; returns its parser."""
    p = train_subparsers.add_parser(
        "pseudolabel", help="pseudo-label prompt tuning (FPL / IFPL / GRIP) on unlabeled images",
        description="Label the unlabeled images with zero-shot CLIP (per class the top-K most confident, each image "
                    "in one class at most), train a 16-vector textual prompt on them, relabel with the prompt and "
                    "repeat (IFPL, GRIP); save the prompt as a head.")
    p.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--classes", required=True, help='the classes, in the order the head predicts them: "cat,dog" or '
                   "@file with one name per line")
    p.add_argument("--unlabeled", required=True, help="unlabeled images: a folder (flat, or class sub-folders whose "
                   "names are only used to report accuracy) or a procedural spec 'shapes:N[:SHIFT]'")
    p.add_argument("--labeled", default=None, help="labelled images for ssl / trzsl: a folder with one sub-folder per "
                   "class, or a procedural spec")
    p.add_argument("--seen", default=None, help="trzsl: the seen classes (NAMES or @file; default: the --labeled "
                   "classes); the other classes are unseen and get the pseudo-labels, so --unlabeled should hold "
                   "images of the unseen classes only")
    p.add_argument("--val", default=None, help="labelled validation images for selection (default: held-out "
                   "pseudo-labels)")
    p.add_argument("--strategy", choices=["fpl", "ifpl", "grip"], default="grip", help="default grip")
    p.add_argument("--paradigm", choices=["ul", "ssl", "trzsl"], default="ul", help="default ul")
    p.add_argument("--out", help="head file to write (default: <bundle>/heads/pseudolabel.head.safetensors; for the "
                   "embedded bundle ./pseudolabel.head.safetensors)")
    p.add_argument("--work", default=None, help="folder for the per-round checkpoints (default: <out>.rounds/, "
                   "removed after the head is written)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting (repeatable), e.g. --set epochs=20 --set rounds=5 --set warm_start=True")
    p.add_argument("--seed", type=int, default=20_000, help="base seed of a procedural --unlabeled spec")
    p.add_argument("--cache", default=None, help="feature pool cache folder (default ~/.cache/edgeclip/pools)")
    p.add_argument("--no-cache", action="store_true", help="do not cache (or resume) the feature pools")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--threads", type=positive_int, help="CPU threads (onnxruntime and PyTorch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the per-class accuracy on the unlabeled "
                   "images before (zero-shot) and after as a PNG; needs their classes (class sub-folders or a "
                   "shapes spec) and matplotlib")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train_pseudolabel)
    return p


def _summary(report: Any, path: Path, names: list[str]) -> list[str]:
    ex = report.extra
    lines = [f"wrote {path}",
             f"pseudolabel {ex['strategy']} / {ex['paradigm']}: {len(names)} classes, {report.n_train} unlabeled "
             f"images, {len(ex['rounds'])} rounds, {report.steps} steps in {report.seconds:.1f} s"]
    for r in ex["rounds"]:
        acc = r.get("pseudo_label_accuracy")
        val = max(r["val_accuracy"]) if r["val_accuracy"] else None
        lines.append(f"  round {r['round']:>2}: K={r['k']}, {r['n_pseudo']} pseudo-labels"
                     + (f" ({100 * acc:.1f} % right)" if acc is not None else "")
                     + (f", validation {100 * val:.1f} %" if val is not None else "")
                     + (" (resumed)" if r.get("resumed") else ""))
    pc = ex.get("per_class")
    if pc:
        lines.append("per-class accuracy on the unlabeled images (zero-shot -> tuned):")
        for name, a, b in zip(pc["classes"], pc["zero_shot"], pc["tuned"], strict=True):
            if a is not None and b is not None:
                lines.append(f"  {name:<24} {100 * a:5.1f} -> {100 * b:5.1f}")
    lines.append(f"use it: edgeclip classify --head {path} IMAGES")
    return lines


def _plot_per_class(report: Any, path: Path) -> Path:
    """The per-class chart of `report` (zero-shot -> tuned on the unlabeled images) as a PNG at `path`."""
    from edgeclip.bench.figures import check_matplotlib, per_class_bars, save_figure

    check_matplotlib()
    from matplotlib.figure import Figure

    pc = report.extra["per_class"]
    keep = [i for i, (a, b) in enumerate(zip(pc["zero_shot"], pc["tuned"], strict=True))
            if a is not None and b is not None]
    fig = Figure(figsize=(max(6.0, 0.45 * len(keep) + 2), 4.2))
    ax = fig.subplots()
    per_class_bars(ax, [pc["classes"][i] for i in keep], [100 * pc["zero_shot"][i] for i in keep],
                   [100 * pc["tuned"][i] for i in keep], ("zero-shot", report.extra["strategy"].upper()),
                   "accuracy on the unlabeled images (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def cmd_train_pseudolabel(args: argparse.Namespace) -> int:
    """Train, save the head, print the report. Returns 0."""
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.cli_train import head_out
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.runtime.feature_pool import build_feature_pool

    out = head_out(args, "pseudolabel")
    if args.paradigm != "ul" and args.labeled is None:
        raise EdgeClipError(f"--paradigm {args.paradigm} needs --labeled images")
    if args.paradigm == "ul" and args.labeled is not None:
        raise EdgeClipError("--labeled goes with --paradigm ssl or trzsl (ul uses no labels)")
    if args.seen is not None and args.paradigm != "trzsl":
        raise EdgeClipError("--seen goes with --paradigm trzsl")
    t0 = time.perf_counter()
    classes = parse_class_spec(args.classes)
    seen = parse_class_spec(args.seen) if args.seen else None
    settings = dict(args.settings)
    settings.update(strategy=args.strategy, paradigm=args.paradigm)
    if seen is not None:
        settings["seen"] = tuple(seen)
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    method = edgeclip.create_method("pseudolabel", model, classes, **settings)
    cache: Any = False if args.no_cache else (args.cache or True)
    progress = not args.json
    if args.plot is not None:
        from edgeclip.bench.figures import check_matplotlib

        check_matplotlib()
    pool = build_feature_pool(model, args.unlabeled, class_names=classes, seed=args.seed, cache=cache,
                              progress=progress)
    if args.plot is not None and not pool.is_labelled:
        raise EdgeClipError(f"--plot needs the classes of the --unlabeled images (class sub-folders or a shapes "
                            f"spec) to score them; {args.unlabeled} has none")
    labeled = None
    if args.labeled is not None:
        labeled = build_feature_pool(model, args.labeled, class_names=seen, cache=cache, progress=progress)
        if not labeled.is_labelled:
            raise EdgeClipError(f"--labeled {args.labeled} has no class sub-folders ({args.labeled}/<class>/<images>)")
    val = None
    if args.val is not None:
        val = build_feature_pool(model, args.val, cache=cache, progress=progress)
    work = Path(args.work).expanduser() if args.work else out.with_name(out.name + ".rounds")
    report = method.fit(pool, val=val, progress=progress, labeled=labeled, work_dir=work)
    path = method.save_head(out)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    payload = {"head": str(path), "method": "pseudolabel", "classes": method.class_names,
               "report": report.to_dict(), "seconds": round(time.perf_counter() - t0, 3), "backend": model.backend}
    lines = _summary(report, path, method.class_names)
    if args.plot is not None:
        payload["plot"] = str(_plot_per_class(report, Path(args.plot).expanduser()))
        lines.append(f"wrote {payload['plot']}")
    emit(args, payload, "\n".join(lines))
    return 0
