"""The bundle manifest: its schema as typed frozen dataclasses, the one parser, and its content hash.

`parse_manifest` turns the JSON object of ``manifest.json`` into a `Manifest` or raises a `BundleError`
that names the file, the key path (``image.image_size``, ``files["text_encoder.onnx"].sha256``) and what
was expected. The manifest's own content is sealed by ``manifest_sha256``: the sha256 of its canonical JSON
(keys sorted, no whitespace, UTF-8) without that field, written at export (`seal_manifest`) and checked on
load (`check_manifest_hash`), so an edited value is caught like a changed file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgeclip.errors import BundleError
from edgeclip.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES, PreprocessConfig
from edgeclip.runtime.text_tower import POOL_TYPES
from edgeclip.runtime.tokenizer import SUPPORTED_TOKENIZERS, TokenizerSpec

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
TEXT_TOWER = "text_tower.safetensors"
IMAGE_TOWER = "image_tower.safetensors"
REQUIRED_FILES = (IMAGE_ONNX, TEXT_ONNX, TEXT_TOWER)
STORAGE_DTYPES = ("float32", "float16")
HASH_KEY = "manifest_sha256"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MISSING: Any = object()
_FIX = "re-export the bundle (or restore its original manifest.json)"


def _file_name(path: str) -> str:
    """The last component of a path written on any system (POSIX or Windows separators)."""
    return re.split(r"[\\/]", path)[-1]


# -- the schema -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    """One bundle file as the manifest records it."""

    sha256: str  # hex sha256 of the file's bytes
    size: int  # bytes


@dataclass(frozen=True)
class SourceSpec:
    """Where the exported weights came from."""

    architecture: str  # open_clip model name
    pretrained: str | None = None  # open_clip pretrained tag
    checkpoint: str | None = None  # path of the local checkpoint on the machine that exported
    weights: str | None = None  # "random" when neither a tag nor a checkpoint was given
    object: str | None = None  # class name of a model object exported from memory

    @property
    def origin(self) -> str:
        """The weights' origin in words, without the exporting machine's folders."""
        if self.pretrained:
            return f"pretrained tag {self.pretrained!r}"
        if self.checkpoint:
            return f"checkpoint {_file_name(self.checkpoint)}"
        if self.weights == "random":
            return "random weights"
        if self.object:
            return f"a {self.object} object"
        return "unknown"


@dataclass(frozen=True)
class TextSpec:
    """The text side: tokenizer, context, width and how the sequence is pooled."""

    tokenizer: TokenizerSpec
    context_length: int  # tokens the tower takes at most
    width: int  # token embedding width W
    vocab_size: int  # rows of the token-embedding table
    causal: bool  # causal attention: the tower may be cut to max(eot) + 1 tokens
    pool: str  # "argmax" (EOT position) or "eos"
    eos_id: int | None = None  # token id pooled at with pool="eos"


@dataclass(frozen=True)
class PrecisionSpec:
    compute: str  # dtype the graphs compute in
    storage: str  # dtype the weights are stored in ("float32" or "float16")


@dataclass(frozen=True)
class ParitySpec:
    """Agreement of the exported graphs with PyTorch, measured at export."""

    image_min_cos: float
    text_min_cos: float
    truncation_max_abs: float
    other: Mapping[str, float]  # further figures (max abs errors, the required minimum)


@dataclass(frozen=True)
class Manifest:
    """The typed, validated content of a bundle's ``manifest.json``."""

    format_version: int
    source: SourceSpec
    model_config: Mapping[str, Any]  # open_clip architecture config (read-only view of a copy)
    quick_gelu: bool
    embed_dim: int  # width D of both encoders' output
    image: PreprocessConfig
    text: TextSpec
    logit_scale: float  # exp of the learned temperature; finite and > 0
    logit_bias: float | None
    precision: PrecisionSpec
    parity: ParitySpec
    files: Mapping[str, FileEntry]
    tool_versions: Mapping[str, str]
    created: str | None
    extra: Mapping[str, Any]
    classes: tuple[str, ...] | None  # the only classes the model knows (a closed-set model), else None
    description: str | None  # one line about the model, for `edgeclip info`
    manifest_sha256: str | None  # None: written before manifests were sealed


# -- canonical hash ---------------------------------------------------------------------------------------
def manifest_digest(raw: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no whitespace, UTF-8) without ``manifest_sha256``."""
    content = {k: v for k, v in raw.items() if k != HASH_KEY}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_manifest(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the manifest with ``manifest_sha256`` set to its digest (as the last key)."""
    out = {k: v for k, v in raw.items() if k != HASH_KEY}
    out[HASH_KEY] = manifest_digest(out)
    return out


def write_manifest(folder: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Seal the manifest and write it to ``folder/manifest.json`` atomically (temp file + rename)."""
    sealed = seal_manifest(raw)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(sealed, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sealed


def check_manifest_hash(raw: Mapping[str, Any], file: Path) -> None:
    """Raise `BundleError` when the manifest's content does not match its ``manifest_sha256``; a manifest
    without one (written by an older edgeclip) is accepted with a warning."""
    stored = raw.get(HASH_KEY)
    if stored is None:
        log.warning("%s has no %s (written by an older edgeclip), so its content cannot be verified; "
                    "re-export the bundle to add it", file, HASH_KEY)
        return
    if not isinstance(stored, str) or not _HEX64.fullmatch(stored):
        raise BundleError(f"{file}: {HASH_KEY} must be 64 lower-case hex digits, got {_show(stored)}; {_FIX}")
    if manifest_digest(raw) != stored:
        raise BundleError(
            f"{file} was changed after export: its content no longer matches its {HASH_KEY}; restore the "
            "original manifest.json or re-export the bundle"
        )


# -- the parser -------------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {dict: "an object", list: "a list", str: "the string", bool: "", type(None): ""}.get(type(value), "")
    return f"{kind} {text}".strip()


class _Reader:
    """Typed access to the JSON object with errors naming the file and the key path."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, where: str, expected: str, value: Any = _MISSING) -> BundleError:
        got = "it is missing" if value is _MISSING else f"got {_show(value)}"
        return BundleError(f"{self.file}: {where} must be {expected}, {got}; {_FIX}")

    def get(self, obj: Mapping[str, Any], key: str, parent: str, expected: str, check: Any,
            default: Any = _MISSING) -> Any:
        where = f"{parent}.{key}" if parent else key
        value = obj.get(key, _MISSING)
        if value is _MISSING or (value is None and default is None):
            if default is _MISSING:
                raise self.fail(where, expected)
            return default
        if not check(value):
            raise self.fail(where, expected, value)
        return value

    def obj(self, obj: Mapping[str, Any], key: str, parent: str = "", default: Any = _MISSING) -> dict[str, Any]:
        return self.get(obj, key, parent, "an object", lambda v: isinstance(v, dict), default)

    def text(self, obj: Mapping[str, Any], key: str, parent: str = "", default: Any = _MISSING,
            choices: tuple[str, ...] | None = None) -> Any:
        expected = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
        return self.get(obj, key, parent, expected,
                        lambda v: isinstance(v, str) and (choices is None or v in choices), default)

    def integer(self, obj: Mapping[str, Any], key: str, parent: str = "", minimum: int = 0,
            default: Any = _MISSING) -> Any:
        return self.get(obj, key, parent, f"an integer >= {minimum}",
                        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum, default)

    def boolean(self, obj: Mapping[str, Any], key: str, parent: str = "", default: Any = _MISSING) -> Any:
        return self.get(obj, key, parent, "true or false", lambda v: isinstance(v, bool), default)

    def number(self, obj: Mapping[str, Any], key: str, parent: str = "", positive: bool = False,
            default: Any = _MISSING) -> Any:
        def ok(v: Any) -> bool:
            return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (not positive or v > 0))

        value = self.get(obj, key, parent, "a finite number" + (" > 0" if positive else ""), ok, default)
        return float(value) if value is not None else None


def _image(r: _Reader, m: Mapping[str, Any]) -> PreprocessConfig:
    d = r.obj(m, "image")
    r.integer(d, "image_size", "image", minimum=1)
    for key in ("mean", "std"):
        r.get(d, key, "image", "a list of 3 finite numbers",
              lambda v: isinstance(v, list) and len(v) == 3 and all(
                  isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))
    r.text(d, "resize_mode", "image", choices=RESIZE_MODES)
    r.text(d, "interpolation", "image", choices=INTERPOLATIONS)
    r.integer(d, "fill_color", "image", default=0)
    known = ("image_size", "mean", "std", "resize_mode", "interpolation", "fill_color")
    try:
        return PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})
    except ValueError as exc:
        raise BundleError(f"{r.file}: image.{exc}; {_FIX}") from exc


def _text(r: _Reader, m: Mapping[str, Any]) -> TextSpec:
    d = r.obj(m, "text")
    t = r.obj(d, "tokenizer", "text")
    p = "text.tokenizer"
    vocab = r.integer(d, "vocab_size", "text", minimum=1)
    ids = {k: r.integer(t, k, p) for k in ("sot_id", "eot_id", "pad_id")}
    for k, v in ids.items():
        if v >= vocab:
            raise r.fail(f"{p}.{k}", f"a token id below text.vocab_size ({vocab})", v)
    tok = TokenizerSpec(kind=r.text(t, "kind", p, choices=SUPPORTED_TOKENIZERS),
                        context_length=r.integer(t, "context_length", p, minimum=2), **ids)
    ctx = r.integer(d, "context_length", "text", minimum=2)
    if ctx != tok.context_length:
        raise r.fail("text.context_length", f"equal to text.tokenizer.context_length ({tok.context_length})", ctx)
    return TextSpec(tokenizer=tok, context_length=ctx, width=r.integer(d, "width", "text", minimum=1),
                    vocab_size=vocab, causal=r.boolean(d, "causal", "text"),
                    pool=r.text(d, "pool", "text", choices=POOL_TYPES),
                    eos_id=r.integer(d, "eos_id", "text", default=None))


def _files(r: _Reader, m: Mapping[str, Any]) -> dict[str, FileEntry]:
    d = r.obj(m, "files")
    out: dict[str, FileEntry] = {}
    for name, meta in d.items():
        where = f"files[{json.dumps(name)}]"
        if not name or name in (".", "..", MANIFEST) or Path(name).name != name or "\\" in name:
            raise r.fail(f"files key {json.dumps(name)}", "a plain file name inside the bundle folder")
        if not isinstance(meta, dict):
            raise r.fail(where, "an object with sha256 and size", meta)
        sha = r.get(meta, "sha256", where, "64 lower-case hex digits",
                    lambda v: isinstance(v, str) and _HEX64.fullmatch(v) is not None)
        out[name] = FileEntry(sha256=sha, size=r.integer(meta, "size", where))
    for name in REQUIRED_FILES:
        if name not in out:
            raise BundleError(f"{r.file} does not list the required file {name}; re-export the bundle")
    return out


def _parity(r: _Reader, m: Mapping[str, Any]) -> ParitySpec:
    d = r.obj(m, "parity")
    main = ("image_min_cos", "text_min_cos", "truncation_max_abs")
    vals = {k: r.number(d, k, "parity") for k in main}
    other = {k: r.number(d, k, "parity") for k in d if k not in main}
    return ParitySpec(**vals, other=MappingProxyType(other))


def _model_config(r: _Reader, m: Mapping[str, Any], embed_dim: int, image_size: int) -> dict[str, Any]:
    cfg = r.obj(m, "model_config")
    if r.integer(cfg, "embed_dim", "model_config", minimum=1) != embed_dim:
        raise r.fail("model_config.embed_dim", f"equal to embed_dim ({embed_dim})", cfg["embed_dim"])
    vision = r.obj(cfg, "vision_cfg", "model_config")
    r.obj(cfg, "text_cfg", "model_config")
    size = vision.get("image_size")
    size = size[0] if isinstance(size, list) and len(size) == 2 and size[0] == size[1] else size
    if size is not None and size != image_size:
        raise BundleError(
            f"{r.file}: image.image_size is {image_size} but model_config.vision_cfg.image_size is "
            f"{vision['image_size']}: the manifest was edited; {_FIX}"
        )
    return copy.deepcopy(cfg)


def _classes(r: _Reader, m: Mapping[str, Any]) -> tuple[str, ...] | None:
    def ok(v: Any) -> bool:
        return (isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)
                and len(set(v)) == len(v))

    value = r.get(m, "classes", "", "a non-empty list of distinct class names", ok, default=None)
    return tuple(value) if value is not None else None


def parse_manifest(raw: Any, file: Path) -> Manifest:
    """Validate the JSON value of a manifest and return it typed; `BundleError` names what is wrong."""
    r = _Reader(file)
    if not isinstance(raw, dict):
        raise BundleError(f"{file} must hold a JSON object, got {_show(raw)}; {_FIX}")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{file} has no integer format_version; re-export the bundle")
    if version > FORMAT_VERSION:
        raise BundleError(f"{file} has format version {version}, newer than this edgeclip reads "
                          f"({FORMAT_VERSION}): upgrade edgeclip")
    if version < 1:
        raise BundleError(f"{file} has unknown format version {version}; re-export the bundle")
    src = r.obj(raw, "source")
    source = SourceSpec(architecture=r.text(src, "architecture", "source"),
                        **{k: r.text(src, k, "source", default=None)
                           for k in ("pretrained", "checkpoint", "weights", "object")})
    embed_dim = r.integer(raw, "embed_dim", minimum=1)
    image = _image(r, raw)
    precision = r.obj(raw, "precision")
    versions = r.get(raw, "tool_versions", "", "an object of strings",
                     lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), default={})
    return Manifest(
        format_version=version,
        source=source,
        model_config=MappingProxyType(_model_config(r, raw, embed_dim, image.image_size)),
        quick_gelu=r.boolean(raw, "quick_gelu", default=False),
        embed_dim=embed_dim,
        image=image,
        text=_text(r, raw),
        logit_scale=r.number(raw, "logit_scale", positive=True),
        logit_bias=r.number(raw, "logit_bias", default=None),
        precision=PrecisionSpec(compute=r.text(precision, "compute", "precision"),
                                storage=r.text(precision, "storage", "precision", choices=STORAGE_DTYPES)),
        parity=_parity(r, raw),
        files=MappingProxyType(_files(r, raw)),
        tool_versions=MappingProxyType(dict(versions)),
        created=r.text(raw, "created", default=None),
        extra=MappingProxyType(copy.deepcopy(r.obj(raw, "extra", default={}))),
        classes=_classes(r, raw),
        description=r.text(raw, "description", default=None),
        manifest_sha256=r.text(raw, HASH_KEY, default=None),
    )
