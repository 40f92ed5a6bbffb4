"""`edgeclip train clap`: CLAP continual learning, one task per call.

Wire it with ``add_parser(train_subparsers)`` (the ``train`` verb's subparsers). Each call learns one task — the
classes of ``--task`` (a folder with one sub-folder per class, or a procedural spec with ``--classes``) — on
top of the state saved in ``--state`` (created by the first call), and writes the state back atomically once the
task is learnt. A call interrupted mid-task leaves the saved state as it was after the previous task; running
the same call again learns the task, and running an already learnt task again is recognised and skipped.
``--calibrate DIR`` then sets the novelty threshold on held-out images of the classes seen so far.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgeclip.cli_args import nonnegative_int, parse_setting, positive_int
from edgeclip.errors import EdgeClipError

__all__ = ["add_parser", "cmd_train_clap"]


def add_parser(train_subparsers: Any) -> argparse.ArgumentParser:
    """Add ``clap`` to the ``train`` verb's subparsers; returns its parser."""
    p = train_subparsers.add_parser(
        "clap", help="CLAP: learn one more task of new classes without forgetting (continual, with uncertainty)",
        description="Learn the classes of one task on top of the saved CLAP state (a head; created by the first "
                    "call): the task's images and the rehearsal memory train the shared attention and the task's "
                    "probabilistic adapters, then a class-balanced fine-tune on the memory. The state is written "
                    "atomically after the task.")
    p.add_argument("--task", required=True, help="the task's labelled images: a folder with one sub-folder per "
                   "class, or a procedural spec 'shapes:N[:SHIFT]' (with --classes)")
    p.add_argument("--classes", default=None, help='the task\'s classes, "name,name" or @file (default: the '
                   "classes of a --task folder); none may have been learnt in an earlier task")
    p.add_argument("--state", required=True, help="the CLAP state (head file): read when it exists, written back "
                   "after the task")
    p.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--calibrate", default=None, help="held-out labelled images of the classes seen so far: set the "
                   "novelty threshold so that --fpr of them are flagged")
    p.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate of the novelty threshold "
                   "(default 0.05)")
    p.add_argument("--extra-views", type=nonnegative_int, default=3, help="augmented views per image (the "
                   "attention's memory; default 3)")
    p.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting of a new state (repeatable), e.g. --set epochs=10 --set mc_samples=10")
    p.add_argument("--seed", type=int, default=20_000, help="base seed of a procedural --task spec and the views")
    p.add_argument("--cache", default=None, help="feature pool cache folder (default ~/.cache/edgeclip/pools)")
    p.add_argument("--no-cache", action="store_true", help="do not cache (or resume) the feature pools")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"])
    p.add_argument("--threads", type=positive_int, help="CPU threads (onnxruntime and PyTorch)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_train_clap)
    return p


def cmd_train_clap(args: argparse.Namespace) -> int:
    """Learn the task, save the state, print the report. Returns 0."""
    import edgeclip
    from edgeclip.cli_args import emit
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool
    from edgeclip.runtime.methods.clap import open_learner

    if not 0.0 < args.fpr < 1.0:
        raise EdgeClipError(f"--fpr must lie in (0, 1), got {args.fpr}")
    t0 = time.perf_counter()
    state = Path(args.state).expanduser()
    model = edgeclip.load(args.bundle, backend=args.backend, threads=args.threads)
    resumed = state.is_file()
    if resumed and args.settings:
        raise EdgeClipError(f"--set configures a new state; {state} exists and keeps its own config")
    learner = open_learner(model, state, **dict(args.settings))
    classes = parse_class_spec(args.classes) if args.classes else None
    cache: Any = False if args.no_cache else (args.cache or True)
    progress = not args.json
    views = ViewPolicy(extra_views=args.extra_views, view_seed=args.seed)
    pool = build_feature_pool(model, args.task, class_names=classes, views=views, seed=args.seed, cache=cache,
                              progress=progress)
    if not pool.is_labelled:
        raise EdgeClipError(f"{args.task} has no class sub-folders: a task needs labelled images "
                            f"({args.task}/<class name>/<images>)")
    report = learner.learn_task(pool, save_to=state, progress=progress)
    threshold = None
    if args.calibrate is not None:
        held = build_feature_pool(model, args.calibrate, class_names=learner.class_names, views=views, cache=cache,
                                  progress=progress)
        threshold = learner.calibrate_novelty(held, fpr=args.fpr)
        learner.save_head(state)
    payload = {"state": str(state), "method": "clap", "tasks": learner.tasks, "classes": learner.class_names,
               "resumed_state": resumed, "report": report.to_dict(), "novelty_threshold": threshold,
               "seconds": round(time.perf_counter() - t0, 3), "backend": model.backend}
    skipped = bool(report.extra.get("resumed"))
    lines = [f"wrote {state}" if not skipped else f"{state}: this task was already learnt; nothing changed",
             f"clap: task {learner.n_tasks if not skipped else '(again)'} — {len(pool.class_names)} classes, "
             f"{report.n_train} images, {report.steps} steps in {report.seconds:.1f} s; "
             f"{len(learner.class_names)} classes in {learner.n_tasks} tasks so far"]
    if threshold is not None:
        lines.append(f"novelty threshold (energy) {threshold:.3f} at a false-positive rate of {args.fpr:g}")
    lines.append(f"use it: edgeclip classify --method clap --head {state} IMAGES")
    emit(args, payload, "\n".join(lines))
    return 0
