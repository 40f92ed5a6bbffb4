"""open_clip model -> bundle directory: graphs, text tower weights, manifest; written atomically."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from edgeclip.errors import ExportError, InputError
from edgeclip.export.onnx_graph import export_image_graph, export_text_graph, store_weights_fp16
from edgeclip.export.parity import ParityReport, check_parity
from edgeclip.export.source import SourceModel, load_source, round_weights_to_fp16
from edgeclip.runtime.bundle import (
    FORMAT_VERSION,
    IMAGE_ONNX,
    IMAGE_TOWER,
    TEXT_ONNX,
    TEXT_TOWER,
    sha256_file,
)
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.manifest import STORAGE_DTYPES, write_manifest
from edgeclip.runtime.preprocess import PreprocessConfig
from edgeclip.runtime.text_tower import POOL_TYPES, TextTower
from edgeclip.runtime.tokenizer import Tokenizer, TokenizerSpec

log = logging.getLogger(__name__)

MIN_PARITY_COS = 0.9999


@dataclass
class ExportResult:
    path: Path
    parity: ParityReport
    manifest: dict[str, Any]


def _tool_versions() -> dict[str, str]:
    import onnx
    import open_clip

    import edgeclip

    versions = {"edgeclip": edgeclip.__version__, "torch": torch.__version__,
                "open_clip": open_clip.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def _tokenizer_spec(src: SourceModel, tower: TextTower) -> TokenizerSpec:
    import open_clip

    tok = open_clip.get_tokenizer(src.model_name)
    if not isinstance(tok, open_clip.tokenizer.SimpleTokenizer):
        raise ExportError(
            f"{src.model_name} uses the tokenizer {type(tok).__name__}; edgeclip bundles support "
            "CLIP's byte-pair tokenizer only"
        )
    vocab = int(tower.token_embedding.weight.shape[0])
    if vocab != len(tok.encoder):
        raise ExportError(f"text tower has {vocab} token rows but the tokenizer has {len(tok.encoder)}")
    return TokenizerSpec(
        kind="clip_bpe",
        context_length=tower.context_length,
        sot_id=int(tok.sot_token_id),
        eot_id=int(tok.eot_token_id),
        pad_id=0,
    )


def _text_pooling(model: nn.Module, spec: TokenizerSpec) -> dict[str, Any]:
    src = getattr(model, "text", model)
    pool = getattr(src, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
    if pool not in POOL_TYPES:
        raise ExportError(f"text pooling {pool!r} is not supported (supported: {', '.join(POOL_TYPES)})")
    eos_id = getattr(src, "eos_id", None) or getattr(model, "text_eos_id", None)
    if pool == "eos" and eos_id != spec.eot_id:
        raise ExportError(f"text pooling 'eos' with eos id {eos_id}, but the tokenizer's EOT id is {spec.eot_id}")
    return {"pool": pool, "eos_id": int(eos_id) if eos_id is not None else None}


@torch.no_grad()
def _check_tower_matches_model(model: nn.Module, tower: TextTower, tokenizer: Tokenizer) -> float:
    """The token-embedding text path must reproduce open_clip's own `encode_text` exactly."""
    ids, eot = tokenizer.ids(["a photo of a cat.", "a diagram of a robot arm"])
    ref = model.encode_text(ids)
    ours = tower(tower.embed_tokens(ids), eot, truncate=False)
    err = float((ref - ours).abs().max())
    if err > 1e-4 * max(1.0, float(ref.abs().max())):
        raise ExportError(f"text tower does not reproduce open_clip's encode_text (max abs error {err:.3g})")
    return err


def _state_for_storage(module: nn.Module, storage: str) -> dict[str, torch.Tensor]:
    dtype = torch.float16 if storage == "float16" else torch.float32
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        out[k] = (v.to(dtype) if v.is_floating_point() else v).contiguous().clone()
    return out


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; a bundle is meant to be shared and copied."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


def _atomic_replace(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        backup = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While exporting, turn SIGTERM into `SystemExit(143)` so the temporary folder is cleaned up as on
    Ctrl-C, instead of the process dying with it on disk. Only in the main thread (the only one that can set
    signal handlers) and only where SIGTERM still has its default action (an application's own handler is
    left alone); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        log.warning("export terminated (signal %d): removing the partial bundle", signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def export_bundle(
    out: str | Path,
    model_name: str,
    *,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    model: nn.Module | None = None,
    storage: str = "float32",
    include_image_tower: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    description: str | None = None,
) -> ExportResult:
    """Export an open_clip model to a bundle directory at `out`.

    The model comes from `model_name` plus one of `pretrained` (an open_clip tag; needs the network
    the first time), `checkpoint` (a local file) or `model` (an object in memory). `storage="float16"`
    rounds the weights to fp16 and stores them at half size; compute stays fp32. The bundle is written
    to a temporary folder and renamed into place only after the ONNX checker and the parity check pass; an
    error, Ctrl-C or SIGTERM on the way removes it. `classes` names the only classes a closed-set model knows
    and `description` says in one line what it is (both shown by `edgeclip info`). The manifest is sealed
    with its ``manifest_sha256``.
    """
    if storage not in STORAGE_DTYPES:
        raise InputError(f"storage must be one of {STORAGE_DTYPES}, got {storage!r}")
    if classes is not None:
        classes = validate_class_names(classes)
    if description is not None and not isinstance(description, str):
        raise InputError(f"description must be a string, got {type(description).__name__}")
    # the bar is closed however the export ends, before any error reaches the caller
    with _terminate_as_exit(), tqdm(total=6, desc=f"export {model_name}", disable=not progress, unit="step") as steps:
        return _export(Path(out).expanduser(), model_name, pretrained=pretrained, checkpoint=checkpoint,
                       model=model, storage=storage, include_image_tower=include_image_tower, overwrite=overwrite,
                       steps=steps, extra=extra, classes=classes, description=description)


def _export(out: Path, model_name: str, *, pretrained: str | None, checkpoint: str | Path | None,
            model: nn.Module | None, storage: str, include_image_tower: bool, overwrite: bool, steps: Any,
            extra: dict[str, Any] | None, classes: list[str] | None, description: str | None) -> ExportResult:
    steps.set_postfix_str("loading model")
    src = load_source(model_name, pretrained=pretrained, checkpoint=checkpoint, model=model)
    mdl = src.model
    if storage == "float16":
        round_weights_to_fp16(mdl)
    try:
        tower = TextTower.from_open_clip(mdl)
    except InputError as exc:
        raise ExportError(str(exc)) from exc
    spec = _tokenizer_spec(src, tower)
    tokenizer = Tokenizer(spec)
    pooling = _text_pooling(mdl, spec)
    tower_err = _check_tower_matches_model(mdl, tower, tokenizer)
    pre = PreprocessConfig.from_open_clip(mdl)
    steps.update()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        steps.set_postfix_str("image graph")
        export_image_graph(mdl.visual, pre.image_size, tmp / IMAGE_ONNX)
        steps.update()
        steps.set_postfix_str("text graph")
        export_text_graph(tower, tmp / TEXT_ONNX)
        steps.update()
        if storage == "float16":
            store_weights_fp16(tmp / IMAGE_ONNX)
            store_weights_fp16(tmp / TEXT_ONNX)
        steps.set_postfix_str("weights")
        save_file(_state_for_storage(tower, storage), str(tmp / TEXT_TOWER))
        if include_image_tower:
            save_file(_state_for_storage(mdl.visual, storage), str(tmp / IMAGE_TOWER))
        steps.update()

        steps.set_postfix_str("parity")
        report = check_parity(mdl.visual, tower, tokenizer, pre.image_size, tmp / IMAGE_ONNX, tmp / TEXT_ONNX)
        log.info("parity: %s", report.to_dict())
        if report.image_min_cos < MIN_PARITY_COS or report.text_min_cos < MIN_PARITY_COS:
            raise ExportError(
                f"exported graphs disagree with PyTorch: min cosine image {report.image_min_cos:.6f}, "
                f"text {report.text_min_cos:.6f} (need >= {MIN_PARITY_COS}); no bundle written"
            )
        steps.update()

        scale = float(mdl.logit_scale.exp().item())
        bias = getattr(mdl, "logit_bias", None)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "source": src.source,
            "model_config": src.model_cfg,
            "quick_gelu": src.quick_gelu,
            "embed_dim": int(mdl.visual(torch.zeros(1, 3, pre.image_size, pre.image_size)).shape[-1]),
            "image": pre.to_dict(),
            "text": {
                "tokenizer": spec.to_dict(),
                "context_length": spec.context_length,
                "width": tower.width,
                "vocab_size": int(tower.token_embedding.weight.shape[0]),
                "causal": tower.causal,
                **pooling,
            },
            "logit_scale": scale,
            "logit_bias": float(bias.item()) if bias is not None else None,
            "precision": {"compute": "float32", "storage": storage},
            "parity": {**report.to_dict(), "text_tower_vs_open_clip_max_abs": tower_err,
                       "min_required_cos": MIN_PARITY_COS},
            "tool_versions": _tool_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": extra or {},
            "files": {},
        }
        if classes is not None:
            manifest["classes"] = classes
        if description is not None:
            manifest["description"] = description
        for name in sorted(p.name for p in tmp.iterdir()):
            manifest["files"][name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
        manifest = write_manifest(tmp, manifest)
        _make_readable(tmp)
        _atomic_replace(tmp, out, overwrite)
        steps.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s", out)
    return ExportResult(out, report, manifest)
