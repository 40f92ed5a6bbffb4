"""`edgeclip run`: stream a video, camera, RTSP stream, folder or glob through a `Session`.

Wire it into the main parser with ``add_parser(subparsers)``; the verb calls `edgeclip.run_stream.run_stream`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgeclip.cli_args import add_model_args, load_model, nonnegative_int, parse_setting, positive_int, template
from edgeclip.errors import EdgeClipError

__all__ = ["add_parser"]

RUN_EPILOG = """\
output: one line per served frame, "frame N: LABEL (P%)", and a live status line on stderr (fps, p50 latency,
dropped frames) when stderr is a terminal. With --json: JSON Lines, one object per source frame, in order:
{"frame", "seq", "timestamp", "label", "confidence", "top", "views", "fallback", "latency_ms"}, or
{"frame", "seq", "timestamp", "dropped": true, "shown": LABEL} for a frame the latest-wins policy replaced, or
{"frame", "seq", "timestamp", "error": MESSAGE}. A summary goes to stderr at the end.

policy: "latest" (a new frame replaces the one waiting: the newest answer, never a queue of stale ones) is the
default for cameras and streams; "fifo" (every frame, in order) for files, folders and globs.

exit status: 0 every frame read was served or dropped by the policy; 1 some frames failed, or the source failed
mid-stream (the frames before it are kept, the output video too); 2 bad arguments, bundle or source; 130 Ctrl-C.
"""


def _status_line(st: Any) -> str:
    p50 = st.latency_ms.get("latency", {}).get("p50")
    lat = f"{p50:.0f} ms" if p50 is not None else "-"
    return (f"frames {st.submitted} | {st.fps:.1f} fps | p50 {lat} | dropped {st.dropped} | failed {st.failed}"
            + (f" | fallbacks {st.fallbacks}" if st.fallbacks else ""))


def cmd_run(args: argparse.Namespace) -> int:
    import edgeclip
    from edgeclip.cli import method_spec
    from edgeclip.run_stream import run_stream
    from edgeclip.runtime.classnames import parse_class_spec
    from edgeclip.sources import open_source

    if args.classes is None and args.head is None:
        raise EdgeClipError("give --classes (or a --head, which brings its classes)")
    names = parse_class_spec(args.classes) if args.classes is not None else None
    model = load_model(args)
    name, head, settings = method_spec(args)
    source = open_source(args.source, fps=args.fps, skip_unreadable=args.skip_unreadable, reconnect=args.reconnect)
    policy = args.policy or ("latest" if source.is_live else "fifo")
    tty = sys.stderr.isatty()

    def on_record(rec: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(rec), flush=True)
        elif "label" in rec:
            extra = f" [{rec['views']} views]" if rec.get("views") else ""
            extra += " [zero-shot fallback]" if rec.get("fallback") else ""
            print(f"frame {rec['frame']}: {rec['label']} ({100 * rec['confidence']:.1f}%){extra}", flush=True)
        elif "error" in rec:
            print(f"frame {rec['frame']}: error: {rec['error']}", flush=True)

    def on_status(st: Any) -> None:
        if tty:
            print("\r" + _status_line(st), end="", file=sys.stderr, flush=True)

    with source:
        session = edgeclip.Session(model, names, method=name, head=head, budget_ms=args.budget_ms, policy=policy,
                                   workers=args.workers, min_views=args.min_views, **settings)
        summary = run_stream(session, source, out=args.out, max_frames=args.max_frames, realtime=args.realtime,
                             top_k=args.top_k, on_record=on_record, on_status=on_status)
    st = summary["stats"]
    if tty:
        print(file=sys.stderr)
    lat = st["latency_ms"].get("latency", {})
    print(f"{summary['frames']} frames read ({policy}): {st['done']} served, {st['dropped']} dropped, "
          f"{st['failed']} failed; {st['fps']:.1f} fps; latency p50 {lat.get('p50', float('nan')):.1f} ms, "
          f"p99 {lat.get('p99', float('nan')):.1f} ms" + (f"; wrote {summary['out']}" if summary["out"] else ""),
          file=sys.stderr)
    if summary["source_error"]:
        print(f"edgeclip: error: the source failed after {summary['frames']} frames: {summary['source_error']}",
              file=sys.stderr)
        return 1
    return 1 if st["failed"] else 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``run`` to the main parser's subparsers."""
    from edgeclip.runtime.methods import list_methods

    r = subparsers.add_parser("run", help="stream a video, camera, RTSP URL, folder or glob through a Session",
                              epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--source", required=True,
                   help="video file, camera index (0) or device (/dev/video0), rtsp:// URL, image folder or glob")
    r.add_argument("--bundle", help="bundle directory (default: the embedded micro CLIP)")
    r.add_argument("--classes", default=None, help='"cat,dog,robot arm" or @FILE (one name per line); optional with '
                   "--head")
    r.add_argument("--method", default=None, choices=list_methods(), help="method (default: zeroshot, or the "
                   "--head's)")
    r.add_argument("--head", default=None, help="a head file trained by `edgeclip train`")
    r.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[], metavar="KEY=VALUE",
                   help="a config setting of the method (repeatable), e.g. --set n_views=32")
    r.add_argument("--prototypes", default=None, help="class prototypes for promptsync / online_prototypes")
    r.add_argument("--template", type=template, default=None, help="prompt template with one {}")
    r.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget per frame: view-based methods use fewer views to keep the median under it")
    r.add_argument("--min-views", type=positive_int, default=4,
                   help="fewest views under a budget before a frame falls back to zero-shot (default 4)")
    r.add_argument("--policy", choices=["latest", "fifo"], default=None,
                   help="latest: a new frame replaces the waiting one; fifo: every frame (default: latest for live "
                        "sources, fifo for files)")
    r.add_argument("--workers", type=positive_int, default=1, help="worker threads (methods without online state)")
    r.add_argument("--out", default=None, help="write the annotated video here (.mp4)")
    r.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    r.add_argument("--realtime", action="store_true", help="pace a file at its own frame rate, as a camera would")
    r.add_argument("--fps", type=float, default=None, help="frame rate of a folder or glob (timestamps, output video)")
    r.add_argument("--skip-unreadable", action="store_true", help="skip unreadable images of a folder or glob")
    r.add_argument("--reconnect", type=nonnegative_int, default=3,
                   help="times in a row a live camera or stream is opened again after it stops delivering (a dropped "
                        "RTSP stream, a re-plugged camera; waits 1 s, doubling) before the run stops (default 3; 0: "
                        "never)")
    add_model_args(r)
    r.add_argument("--threads", type=positive_int, help="CPU threads for onnxruntime and PyTorch")
    r.add_argument("--top-k", type=positive_int, default=3, help="classes listed per frame with --json (default 3)")
    r.add_argument("--json", action="store_true", help="JSON Lines, one object per source frame")
    r.set_defaults(func=cmd_run)
    return r
