"""`edgeclip train METHOD`: train a `Trainable` method on a feature pool and save its head.

Wire it into the main parser with ``add_parser(subparsers)``. The images are encoded once into a feature pool
(cached and resumable, `edgeclip.runtime.feature_pool`), the method trains on the cached embeddings, selects on
a validation split held out of the training images (or on ``--val``), and the head is written atomically —
by default inside the bundle, under ``heads/`` (the embedded bundle lives inside the installed package, so its
heads go to the current folder).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import is_embedded_bundle, nonnegative_int, parse_setting, positive_int
from edgeclip.errors import EdgeClipError

__all__ = ["add_parser", "cmd_train", "default_out", "head_out", "labelled_pools"]


def _trainable() -> list[str]:
    from edgeclip.runtime.methods import list_methods, method_class
    from edgeclip.runtime.methods.base import Trainable

    return [n for n in list_methods() if issubclass(method_class(n), Trainable)]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` (one subcommand per trainable method) to an ``argparse`` subparsers object; returns it."""
    t = subparsers.add_parser("train", help="train a method on images and save its head")
    tsub = t.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in _trainable():
        if name in _OWN_PARSERS:
            continue
        _add_supervised(tsub, name)
    # methods with their own arguments add their subcommand here (one line each)
    from edgeclip.cli_train_ship import add_parser as add_ship
    add_ship(tsub)
    from edgeclip.cli_train_pseudolabel import add_parser as add_pseudolabel
    add_pseudolabel(tsub)
    from edgeclip.cli_train_clap import add_parser as add_clap
    add_clap(tsub)
    from edgeclip.cli_train_arf import add_parser as add_arf
    add_arf(tsub)
    return t


#: trainable methods whose ``train`` subcommand is defined by their own CLI module (not the supervised one)
_OWN_PARSERS = ("pseudolabel", "ship", "clap", "arf")


def _add_supervised(tsub: Any, name: str) -> argparse.ArgumentParser:
    """``train NAME``: a method trained on labelled images (a class-folder tree or a shapes spec)."""
    p = tsub.add_parser(
        name, help=f"train {name} on labelled images and save its head",
        description="Encode the images once with the bundle's image encoder (a cached, resumable feature pool), "
                    "train the method on the cached embeddings, keep the epoch that is best on a held-out "
                    "validation split, and save what it learnt as a head file (safetensors, atomic).")
    p.add_argument("--data", required=True, help="training images: a folder with one sub-folder per class, or a "
                   "procedural spec 'shapes[:N[:SHIFT]]'")
    p.add_argument("--val", default=None, help="validation images (same forms as --data); default: --val-split "
                   "of --data held out")
    p.add_argument("--val-split", type=float, default=0.2, help="share of each class held out for validation when "
                   "there is no --val (default 0.2; 0: no validation, the last epoch is kept)")
    p.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--classes", help='classes in the order the head predicts them: "cat,dog" or @file with one '
                   "name per line (default: every class of --data)")
    p.add_argument("--out", help="head file to write (default: <bundle>/heads/<method>.head.safetensors; for the "
                   "embedded bundle ./<method>.head.safetensors)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting of the method (repeatable), e.g. --set epochs=20 --set lr=0.01")
    p.add_argument("--extra-views", type=nonnegative_int, default=0, help="augmented views per training image in "
                   "the pool (random resized crops 50–100 %% with flips; default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and of the pool's views")
    p.add_argument("--cache", default=None, help="feature pool cache folder (default ~/.cache/edgeclip/pools)")
    p.add_argument("--no-cache", action="store_true", help="do not cache (or resume) the feature pools")
    p.add_argument("--plot", default=None, help="write the training curves (loss, validation accuracy) as a PNG "
                   "(needs matplotlib)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--threads", type=positive_int, help="CPU threads (onnxruntime and PyTorch)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing head file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train)
    return p


def head_out(args: argparse.Namespace, method: str) -> Path:
    """``--out`` (or `default_out`), refused when it exists and ``--overwrite`` was not given."""
    out = Path(args.out).expanduser() if args.out else default_out(args.bundle, method)
    if out.exists() and not args.overwrite:
        raise EdgeClipError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    return out


def default_out(bundle: str | None, method: str) -> Path:
    """The default head path: inside a user's bundle, or the current folder for the embedded bundle."""
    from edgeclip.runtime.head import default_head_path

    if is_embedded_bundle(bundle):
        return Path(f"{method}.head.safetensors")
    return default_head_path(bundle, method)


def _plot(report: Any, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EdgeClipError("--plot needs matplotlib: pip install 'edgeclip[bench]'") from exc
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(report.train_loss) + 1)
    ax.plot(epochs, report.train_loss, label="training loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    if report.val_accuracy:
        twin = ax.twinx()
        twin.plot(epochs, [100 * a for a in report.val_accuracy], label="validation accuracy", color="tab:orange")
        twin.set_ylabel("validation accuracy (%)")
        if report.best_epoch is not None:
            twin.axvline(report.best_epoch + 1, color="grey", linestyle=":", label="kept")
        twin.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(f"{report.method}: {report.n_train} training, {report.n_val} validation images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def labelled_pools(args: argparse.Namespace, model: Any, *, class_names: list[str] | None = None,
                   **source: Any) -> tuple[Any, Any]:
    """The training pool of ``--data`` (labelled, ``--extra-views`` augmented views) and the validation pool:
    ``--val``, else ``--val-split`` of the training images held out, else None. `source` goes to
    `build_feature_pool` (e.g. ``seed=`` of a procedural spec)."""
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool

    cache: Any = False if args.no_cache else (args.cache or True)
    progress = not args.json
    views = ViewPolicy(extra_views=args.extra_views, view_seed=args.seed)
    pool = build_feature_pool(model, args.data, class_names=class_names, views=views, cache=cache,
                              progress=progress, **source)
    if not pool.is_labelled:
        raise EdgeClipError(f"{args.data} has no class sub-folders: training needs labelled images "
                            f"({args.data}/<class name>/<images>)")
    if args.val is not None:
        val = build_feature_pool(model, args.val, class_names=pool.class_names, cache=cache, progress=progress)
    elif args.val_split > 0:
        pool, val = pool.split(args.val_split, seed=args.seed)
    else:
        val = None
    return pool, val


def cmd_train(args: argparse.Namespace) -> int:
    """Train, save the head, print the report. Returns 0."""
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.runtime.classnames import parse_class_spec

    out = head_out(args, args.method)
    if not 0.0 <= args.val_split < 1.0:
        raise EdgeClipError(f"--val-split must lie in [0, 1), got {args.val_split}")
    t0 = time.perf_counter()
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    classes = parse_class_spec(args.classes) if args.classes else None
    progress = not args.json
    pool, val = labelled_pools(args, model, class_names=classes)
    method = edgeclip.create_method(args.method, model, pool.class_names, **dict(args.settings))
    report = method.fit(pool, val=val, progress=progress)
    path = method.save_head(out)
    if args.plot:
        _plot(report, Path(args.plot).expanduser())
    payload = {"head": str(path), "method": args.method, "classes": method.class_names, "report": report.to_dict(),
               "seconds": round(time.perf_counter() - t0, 3), "backend": model.backend}
    best = report.val_accuracy[report.best_epoch] if report.val_accuracy and report.best_epoch is not None else None
    lines = [f"wrote {path}",
             f"{args.method}: {len(method.class_names)} classes, {report.n_train} training and {report.n_val} "
             f"validation images, {report.epochs} epochs ({report.steps} steps) in {report.seconds:.1f} s",
             f"kept epoch {report.best_epoch + 1 if report.best_epoch is not None else '-'}"
             + (f": validation accuracy {100 * best:.1f} %" if best is not None else " (no validation: the last)")
             + f"; training accuracy {100 * report.extra.get('train_accuracy', float('nan')):.1f} %"]
    if report.skipped_steps:
        lines.append(f"skipped {report.skipped_steps} steps with a non-finite loss")
    if args.plot:
        lines.append(f"curves: {args.plot}")
    lines.append(f"use it: edgeclip classify --method {args.method} --head {path} IMAGES")
    emit(args, payload, "\n".join(lines))
    return 0
