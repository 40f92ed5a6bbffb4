"""Heads: what a `Trainable` method learnt, in one safetensors file that a device loads.

A head holds the method's adapted state (`Method.state_dict()["adapted"]`: context vectors, prototypes,
adapters) as tensors, and a header with the format name and version, the method's registry name, its config
(JSON), the class names, the identity of the bundle it was trained on (`edgeclip.runtime.identity`), when it
was made and by which versions. It is written atomically (temporary file in the same folder, then a rename).

Loading checks all of it: another method, another class list (names and order) or a bundle with other
encoders is a `BundleError` that says so — a head is meaningless on embeddings it was not trained on.

Heads live beside the bundle or inside it, under ``<bundle>/heads/`` (`default_head_path`): a bundle is
verified file by file against the hashes its manifest lists, and heads are not listed, so adding or replacing
one never breaks that check.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeclip.errors import BundleError, ClassNameError, EdgeClipError
from edgeclip.runtime.bundle import Bundle
from edgeclip.runtime.identity import bundle_identity, check_same_encoders
from edgeclip.runtime.methods.config import config_from_dict, config_to_dict
from edgeclip.runtime.methods.state import flatten_state, unflatten_state
from edgeclip.runtime.safetensors_io import atomic_save, read_format

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADS_DIR", "Head", "default_head_path", "read_head", "save_head"]

FORMAT = "edgeclip.head"
FORMAT_VERSION = 1
#: The folder inside a bundle where heads may live (not listed in the manifest, so never hash-checked).
HEADS_DIR = "heads"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_head_path(bundle: Bundle | str | os.PathLike, method: str, name: str | None = None) -> Path:
    """``<bundle>/heads/<name or method>.head.safetensors``."""
    root = bundle.path if isinstance(bundle, Bundle) else Path(bundle).expanduser()
    stem = name or method
    if not _NAME_RE.match(stem):
        raise EdgeClipError(f"a head name may hold letters, digits, '_', '-' and '.', got {stem!r}")
    return root / HEADS_DIR / f"{stem}.head.safetensors"


def _versions() -> dict[str, str]:
    from edgeclip import __version__

    return {"edgeclip": __version__, "torch": torch.__version__}


def save_head(method: Any, path: str | os.PathLike) -> Path:
    """Write `method`'s learnt state as a head at `path` (atomically); returns the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise EdgeClipError(f"{path} is a folder; give a file path such as {path / 'coop.head.safetensors'}")
    tensors, values = flatten_state(method.state_dict()["adapted"])
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "method": method.name,
        "config": json.dumps(config_to_dict(method.config)),
        "class_names": json.dumps(method.class_names),
        "bundle": json.dumps(bundle_identity(method.model.bundle)),
        "values": json.dumps(values),
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": json.dumps(_versions()),
    }
    return atomic_save(tensors, path, header)


@dataclass
class Head:
    """A head read from disk (not yet checked against a model: `check` / `apply_to` do that)."""

    path: Path
    method: str
    config: dict[str, Any]
    class_names: list[str]
    bundle: dict[str, Any]
    state: dict[str, Any]
    created: str
    versions: dict[str, Any]

    def config_for(self, config_class: type) -> Any:
        try:
            return config_from_dict(config_class, self.config)
        except EdgeClipError as exc:
            raise BundleError(f"head {self.path}: its config does not fit this edgeclip ({exc})") from exc

    def check(self, method_name: str, bundle: Bundle, class_names: list[str] | None) -> None:
        """Raise `BundleError` / `ClassNameError` unless this head is for `method_name`, `bundle`'s encoders and
        (when given) exactly `class_names`."""
        if self.method != method_name:
            raise BundleError(f"head {self.path} was trained by method {self.method!r}, not {method_name!r}: "
                              f"create the method with create_method({self.method!r}, ...)")
        check_same_encoders(self.bundle, bundle, f"head {self.path}")
        if class_names is not None and list(class_names) != list(self.class_names):
            raise ClassNameError(f"head {self.path} was trained for the classes {self.class_names[:8]}"
                                 f"{'…' if len(self.class_names) > 8 else ''} ({len(self.class_names)}), not "
                                 f"{list(class_names)[:8]} ({len(class_names)}): use the same classes in the same "
                                 "order, or train a head for these")

    def apply_to(self, method: Any) -> None:
        """Check the head against `method` and load its state into it."""
        self.check(method.name, method.model.bundle, method.class_names)
        method._load_adapted_state(self.state)


def read_head(path: str | os.PathLike) -> Head:
    """Read a head file (format and version checked; `BundleError` for anything that is not a head)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BundleError(f"head file {path} does not exist; train one with `edgeclip train`")
    header, tensors, _ = read_format(path, FORMAT, FORMAT_VERSION, "head", "train one with `edgeclip train`")
    try:
        fields = {k: json.loads(header[k]) for k in ("config", "class_names", "bundle", "values", "versions")}
        method = header["method"]
    except (KeyError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: its header is incomplete or not valid JSON ({exc})") from exc
    if not isinstance(fields["class_names"], list) or not isinstance(fields["config"], dict):
        raise BundleError(f"{path}: class_names must be a JSON list and config a JSON object")
    return Head(path, method, fields["config"], fields["class_names"], fields["bundle"],
                unflatten_state(tensors, fields["values"]), header.get("created", ""), fields["versions"])
