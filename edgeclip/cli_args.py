"""What the `edgeclip` command's verbs share: argument types (a bad value is an argparse error: one line on
stderr, exit status 2) and the output helper."""

from __future__ import annotations

import argparse
import ast
import json
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_model_args",
    "bit_depth",
    "emit",
    "is_embedded_bundle",
    "load_model",
    "max_pixels",
    "nonnegative_int",
    "parse_frames",
    "parse_ints",
    "parse_names",
    "parse_setting",
    "positive_int",
    "template",
]


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """Print ``payload`` as JSON with ``--json``, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def max_pixels(text: str) -> int | None:
    """``--max-pixels``: a positive integer (underscores and commas allowed), or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    return _int_at_least(1, "a positive number of pixels or 'none'")(text.replace(",", "").replace("_", ""))


def bit_depth(text: str) -> int:
    """``--bit-depth``: 8 to 32."""
    value = _int_at_least(8, "a bit depth from 8 to 32")(text)
    if value > 32:
        raise argparse.ArgumentTypeError(f"expected a bit depth from 8 to 32, got {value}")
    return value


def template(text: str) -> str:
    """``--template``: exactly one ``{}`` and no other replacement field."""
    from edgeclip.errors import ClassNameError
    from edgeclip.runtime.classnames import validate_template

    try:
        return validate_template(text)
    except ClassNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def parse_frames(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        h, sep, w = part.lower().partition("x")
        if not part or not sep or not h.strip().isdigit() or not w.strip().isdigit() or min(int(h), int(w)) < 1:
            raise argparse.ArgumentTypeError(f"expected comma-separated HxW frame sizes, e.g. 1080x1920, got {text!r}")
        out.append((int(h), int(w)))
    return out


def parse_names(text: str) -> list[str]:
    vals = [v.strip() for v in text.split(",") if v.strip()]
    if not vals:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return vals


def parse_setting(text: str) -> tuple[str, Any]:
    """``"epochs=20"`` → ``("epochs", 20)``; the value is a Python literal (number, True/False/None, a quoted
    string, a tuple) or, failing that, a plain string (``init=a photo of a``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected SETTING=VALUE (e.g. epochs=20), got {text!r}")
    try:
        value: Any = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


def is_embedded_bundle(bundle: str | None) -> bool:
    """True for the embedded micro bundle (None or its path): it lives inside the installed package, often
    read-only and replaced on upgrade, so the verbs write what they make for it to the current folder."""
    from pathlib import Path

    from edgeclip import default_bundle

    return bundle is None or Path(bundle).expanduser().resolve() == Path(default_bundle()).resolve()


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device`` and ``--engine-precision``: where a verb's model runs (see `load_model`)."""
    from edgeclip.runtime.model import BACKENDS

    parser.add_argument("--backend", default="auto", choices=list(BACKENDS),
                        help="encoder backend (default auto: the fastest measured here; tensorrt: the bundle's "
                             "engines from `edgeclip engine build`, CUDA only)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--engine-precision", choices=["fp32", "fp16", "int8"], default=None,
                        help="with --backend tensorrt: the engines built at this precision (default: the lowest "
                             "built)")


def load_model(args: argparse.Namespace) -> Any:
    """`edgeclip.load` with a verb's ``--bundle``, ``--backend``, ``--device``, ``--engine-precision`` and
    ``--threads``."""
    import edgeclip

    return edgeclip.load(args.bundle, backend=args.backend, device=getattr(args, "device", "cpu"),
                         threads=args.threads, engine_precision=getattr(args, "engine_precision", None))
