"""Reduced-precision bundle variants: the machinery shared by `fp16` and `quantize`.

A variant is a new bundle folder made from a verified source bundle with one or both encoder graphs replaced
(an FP16 graph, an INT8 QDQ graph). Everything else is copied byte for byte, except the PyTorch image tower
(``image_tower.safetensors``), which is left out: a variant's image encoder *is* its graph, and a torch
fallback would silently run the FP32 weights instead. The manifest is the source's with ``precision``,
``parity``, ``files``, ``created`` and ``tool_versions`` rewritten and an ``extra["variant"]`` record (what
was changed, against what it was measured, the choices made), then sealed again with the same
`~edgeclip.runtime.manifest.write_manifest` that export and `edgeclip.micro.build.write_manifest_extra` use.
It is written to a temporary folder next to ``out``, verified with `open_bundle`, and renamed into place
(`bundle_writer._atomic_replace`); an error, Ctrl-C or SIGTERM on the way removes it, so nothing is ever
half-written.

Parity figures are measured through onnxruntime on the CPU, variant graph against the source bundle's graph,
on real images (procedural shapes under every shift, preprocessed exactly as `EdgeClip.preprocess` does) and
on real prompts (the bundle's class names and captions, at full context length and cut to ``max(eot)+1`` as
the runtime runs a causal tower).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgeclip.errors import BundleError, ExportError, InputError
from edgeclip.export.bundle_writer import _atomic_replace, _make_readable, _terminate_as_exit, _tool_versions
from edgeclip.runtime.bundle import (
    IMAGE_ONNX,
    IMAGE_TOWER,
    TEXT_ONNX,
    TEXT_TOWER,
    Bundle,
    open_bundle,
    sha256_file,
)
from edgeclip.runtime.io_spec import EOT_INDEX, PIXELS, TOKEN_EMBEDS
from edgeclip.runtime.manifest import write_manifest

log = logging.getLogger(__name__)

__all__ = [
    "DATA_MOVEMENT_OPS",
    "PARITY_SEED",
    "VariantResult",
    "cosine_stats",
    "final_projection_nodes",
    "fold_storage_casts",
    "image_parity_pixels",
    "open_source",
    "ort_session",
    "pixel_feeds",
    "prepare_out",
    "run_graph",
    "text_parity",
    "text_parity_feeds",
    "write_variant",
]

#: Seed of the shapes images parity is measured on (distinct from training, evaluation and calibration).
PARITY_SEED = 20_261_201

#: Ops that only move or select data: they may stay in whatever precision their neighbours run in.
DATA_MOVEMENT_OPS = frozenset({
    "Concat", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Reshape", "Slice",
    "Split", "Squeeze", "Transpose", "Unsqueeze",
})


@dataclass
class VariantResult:
    """What `convert_bundle_fp16` / `quantize_bundle` wrote: the new bundle, its precision and parity figures
    (variant vs the source bundle's graphs through onnxruntime CPU) and the choices made on the way."""

    path: Path
    kind: str  # "fp16" or "int8"
    precision: dict[str, Any]
    parity: dict[str, float]
    choices: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the manifest."""
        return {"path": str(self.path), "kind": self.kind, "precision": self.precision, "parity": self.parity,
                "choices": self.choices}


# -- inputs and outputs -------------------------------------------------------------------------------------
def open_source(bundle: str | Path | Bundle) -> Bundle:
    """The source bundle, verified (manifest seal, every file's size and sha256). A path that does not exist, or
    a bundle that is itself a variant, is an `InputError`; a corrupt bundle is the `BundleError` `open_bundle`
    raises."""
    if isinstance(bundle, Bundle):
        bundle = bundle.path
    if not isinstance(bundle, (str, Path)):
        raise InputError(f"bundle must be a path to a bundle folder, got {type(bundle).__name__}")
    path = Path(bundle).expanduser()
    if not path.exists():
        raise InputError(f"bundle {path} does not exist; pass the folder `edgeclip export` wrote")
    source = open_bundle(path, verify=True)
    record = source.spec.extra.get("variant")
    kind = record.get("kind") if isinstance(record, Mapping) else None
    if kind is not None:
        raise InputError(f"bundle {path} is already a {kind} variant; make variants from the FP32 bundle it came "
                         "from")
    return source


def prepare_out(source: Bundle, out: str | Path, overwrite: bool) -> Path:
    """Check the output folder before any work is done: not the source itself, not inside it, and not an
    existing path unless `overwrite` (then it is replaced only once the new bundle is complete)."""
    if not isinstance(out, (str, Path)):
        raise InputError(f"out must be a folder path, got {type(out).__name__}")
    path = Path(out).expanduser()
    src, dst = source.path.resolve(), path.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"out {path} is the source bundle {source.path} or inside it; choose another folder")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} exists and is not a bundle folder; remove it or choose another out")
    return path


# -- graph helpers ------------------------------------------------------------------------------------------
def fold_storage_casts(proto: onnx.ModelProto) -> int:
    """Undo fp16 weight storage in place (`onnx_graph.store_weights_fp16`): every ``Cast(to=FLOAT)`` of a
    FLOAT16 initializer becomes a FLOAT initializer under the cast's output name. Returns how many were folded.

    Both reduced-precision paths need real float weights: the FP16 converter decides per consumer which
    precision a weight is stored in, and `quantize_static` quantises only weights that are initializers.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    keep_nodes, new_inits, dropped = [], [], set()
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if src is not None and src.data_type == TensorProto.FLOAT16 and to == TensorProto.FLOAT:
            arr = numpy_helper.to_array(src).astype(np.float32)
            new_inits.append(numpy_helper.from_array(arr, node.output[0]))
            if uses.get(src.name, 0) == 1 and src.name not in outputs:
                dropped.add(src.name)
            continue
        keep_nodes.append(node)
    if not new_inits:
        return 0
    kept_inits = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    del graph.node[:]
    graph.node.extend(keep_nodes)
    folded = {i.name for i in new_inits}
    vi = [v for v in graph.value_info if v.name not in folded]
    del graph.value_info[:]
    graph.value_info.extend(vi)
    return len(new_inits)


def final_projection_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that make each graph output from the last MatMul/Gemm before it: the final
    projection, plus any bias Add or data-movement op between it and the output (empty when there is none)."""
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    found: list[str] = []
    for out in graph.output:
        chain, node = [], producer.get(out.name)
        while node is not None:
            chain.append(node)
            if node.op_type in ("MatMul", "Gemm"):
                found.extend(n.name for n in chain if n.name not in found)
                break
            if node.op_type != "Add" and node.op_type not in DATA_MOVEMENT_OPS:
                break
            data = [i for i in node.input if i and i not in inits and i in producer]
            node = producer[data[0]] if data else None
    return found


# -- running graphs -----------------------------------------------------------------------------------------
def ort_session(path: Path) -> Any:
    """An onnxruntime CPU session with all graph optimisations (as the runtime makes them)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime could not load {path.name}: {exc}") from exc


def run_graph(session: Any, feeds: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The first output of `session` for every feed, concatenated along the batch axis."""
    return np.concatenate([session.run(None, dict(f))[0] for f in feeds])


def cosine_stats(ref: np.ndarray, new: np.ndarray) -> tuple[float, float]:
    """(mean, min) row-wise cosine similarity of two [N, D] arrays, in float64."""
    a, b = ref.astype(np.float64), new.astype(np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ExportError(f"embeddings to compare have shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan"), float("nan")
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return float(cos.mean()), float(cos.min())


def image_parity_pixels(source: Bundle, n: int = 32, seed: int = PARITY_SEED) -> np.ndarray:
    """`n` procedural shapes images spread over every shift, preprocessed with the bundle's own image config
    (what `EdgeClip.preprocess` does), as float32 [n, 3, S, S]."""
    from edgeclip.data import shapes
    from edgeclip.runtime.images import preprocess

    shifts = list(shapes.SHIFTS)
    per = [n // len(shifts) + (1 if i < n % len(shifts) else 0) for i in range(len(shifts))]
    images = []
    for i, (shift, k) in enumerate(zip(shifts, per, strict=True)):
        if k:
            images.extend(shapes.make_batch(k, seed=seed + i, shift=shift).images)
    return preprocess(list(images), source.spec.image).numpy().astype(np.float32)


def pixel_feeds(pixels: np.ndarray, batch: int = 64) -> list[dict[str, np.ndarray]]:
    """Feeds of the image graph, `batch` images at a time."""
    return [{PIXELS.name: pixels[i : i + batch]} for i in range(0, len(pixels), batch)]


def _parity_prompts(source: Bundle) -> list[str]:
    from edgeclip.data import shapes
    from edgeclip.export.parity import PARITY_PROMPTS

    classes = list(source.spec.classes or shapes.class_names())
    captions = shapes.make_batch(8, seed=PARITY_SEED).captions
    return [*PARITY_PROMPTS, *(f"a photo of a {c}." for c in classes), *captions]


def text_parity_feeds(source: Bundle) -> tuple[list[dict[str, np.ndarray]], int]:
    """Feeds of the text graph for real prompts: at full context length and, for a causal tower, cut to
    ``max(eot)+1`` tokens as the runtime runs it. Returns (feeds, number of full-length rows)."""
    import torch
    from safetensors.torch import load_file

    from edgeclip.runtime.tokenizer import Tokenizer

    tok = Tokenizer(source.spec.text.tokenizer)
    ids, eot = tok.ids(_parity_prompts(source))
    path = source.file(TEXT_TOWER)
    try:
        table = load_file(str(path))["token_embedding.weight"].float()
    except Exception as exc:  # safetensors raises its own error types; a missing key is a KeyError
        raise BundleError(f"{path} has no readable token_embedding.weight: {exc}") from exc
    with torch.no_grad():
        emb = torch.nn.functional.embedding(ids, table).numpy().astype(np.float32)
    eot_np = eot.numpy().astype(EOT_INDEX.np_dtype)
    feeds = [{TOKEN_EMBEDS.name: emb, EOT_INDEX.name: eot_np}]
    if source.spec.text.causal:
        keep = int(eot_np.max()) + 1
        feeds.append({TOKEN_EMBEDS.name: np.ascontiguousarray(emb[:, :keep]), EOT_INDEX.name: eot_np})
    return feeds, len(eot_np)


def text_parity(source: Bundle, new_path: Path) -> dict[str, float]:
    """Text graph of the variant vs the source's on real prompts: mean/min cosine and, for a causal tower,
    the variant's own full-vs-truncated max abs difference (the manifest's ``truncation_max_abs``)."""
    feeds, n = text_parity_feeds(source)
    ref = run_graph(ort_session(source.file(TEXT_ONNX)), feeds)
    new = run_graph(ort_session(new_path), feeds)
    mean, low = cosine_stats(ref, new)
    trunc = float(np.abs(new[n:] - new[:n]).max()) if len(new) > n else 0.0
    return {"text_mean_cos": mean, "text_min_cos": low, "truncation_max_abs": trunc, "text_n": float(n)}


# -- writing ------------------------------------------------------------------------------------------------
def _variant_manifest(source: Bundle, *, kind: str, precision: Mapping[str, Any], parity: Mapping[str, float],
                      info: Mapping[str, Any], replaced: Sequence[str], dropped: Sequence[str]) -> dict[str, Any]:
    raw = copy.deepcopy(source.manifest)
    raw.pop("manifest_sha256", None)
    extra = dict(raw.get("extra") or {})
    # figures measured on the source's graphs do not describe the variant: keep them, but under the source
    moved = {k: extra.pop(k) for k in ("zero_shot_accuracy",) if k in extra}
    for figure in parity.values():
        if not np.isfinite(figure):
            raise ExportError(f"a parity figure of the {kind} variant is not finite ({dict(parity)}); no bundle "
                              "written")
    extra["variant"] = {
        "kind": kind,
        "source": {"name": source.path.name, "manifest_sha256": source.manifest.get("manifest_sha256"),
                   **moved},
        "replaced_files": list(replaced),
        "dropped_files": list(dropped),
        "parity_reference": "the source bundle's graphs through onnxruntime CPU, on the same inputs",
        **copy.deepcopy(dict(info)),
    }
    raw.update(precision=dict(precision), parity={k: float(v) for k, v in parity.items()},
               tool_versions=_tool_versions(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               extra=extra, files={})
    return raw


def write_variant(
    source: Bundle,
    out: Path,
    graphs: Mapping[str, Path],
    *,
    kind: str,
    precision: Mapping[str, Any],
    parity: Mapping[str, float],
    info: Mapping[str, Any],
    overwrite: bool = False,
    drop: Sequence[str] = (IMAGE_TOWER,),
) -> dict[str, Any]:
    """Write the variant bundle at `out` atomically and return its sealed manifest.

    `graphs` maps bundle file names (`IMAGE_ONNX`, `TEXT_ONNX`) to the new graph files (already checked);
    every other file the source's manifest lists is copied, except those in `drop`. `parity` must hold the
    manifest's required figures (``image_min_cos``, ``text_min_cos``, ``truncation_max_abs``) and may hold more
    numbers; `info` goes into ``extra["variant"]``. The new folder is verified with `open_bundle` before it is
    renamed into place; on any failure it is removed and `out` is left as it was.
    """
    for name in graphs:
        if name not in (IMAGE_ONNX, TEXT_ONNX):
            raise ExportError(f"a variant replaces encoder graphs only, not {name!r}")
    missing = [k for k in ("image_min_cos", "text_min_cos", "truncation_max_abs") if k not in parity]
    if missing:
        raise ExportError(f"variant parity lacks {', '.join(missing)}")
    dropped = [n for n in drop if n in source.spec.files and n not in graphs]
    manifest = _variant_manifest(source, kind=kind, precision=precision, parity=parity, info=info,
                                 replaced=sorted(graphs), dropped=dropped)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _terminate_as_exit():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            for name in sorted(source.spec.files):
                if name in dropped:
                    continue
                shutil.copyfile(graphs[name] if name in graphs else source.file(name), tmp / name)
            for name in sorted(p.name for p in tmp.iterdir()):
                manifest["files"][name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
            sealed = write_manifest(tmp, manifest)
            _make_readable(tmp)
            open_bundle(tmp, verify=True)  # the manifest parses and every hash holds
            _atomic_replace(tmp, out, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("wrote %s variant %s", kind, out)
    return sealed
