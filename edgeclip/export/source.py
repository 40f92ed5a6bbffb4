"""Getting an open_clip model and the config needed to rebuild its towers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeclip.errors import ExportError

log = logging.getLogger(__name__)


@dataclass
class SourceModel:
    """An open_clip model in eval mode plus what the manifest needs to say about it."""

    model: nn.Module
    model_name: str
    model_cfg: dict[str, Any]
    quick_gelu: bool
    source: dict[str, Any] = field(default_factory=dict)


def _uses_quick_gelu(model: nn.Module) -> bool:
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def model_config(model_name: str) -> dict[str, Any]:
    """The open_clip architecture config for `model_name`, or an `ExportError` listing close names."""
    import open_clip

    from edgeclip.micro.config import register_micro_config

    register_micro_config()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        known = open_clip.list_models()
        close = [m for m in known if model_name.lower().split("-")[0] in m.lower()][:8]
        raise ExportError(
            f"unknown open_clip model {model_name!r}" + (f"; similar names: {', '.join(close)}" if close else "")
        )
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _checkpoint_problem(model_name: str, ckpt: Path, exc: Exception) -> str:
    """Why `ckpt` did not load into `model_name`: not a readable checkpoint, or one of another model."""
    import open_clip

    try:
        state = open_clip.factory.load_state_dict(str(ckpt), weights_only=True)
    except Exception as read_exc:  # torch.load / safetensors raise many types for files that are not theirs
        return (f"checkpoint {ckpt} cannot be read: it is not a checkpoint ({_first_line(read_exc)}); give a state "
                f"dict of a {model_name} model saved with torch.save(model.state_dict(), path) or as .safetensors")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"checkpoint {ckpt} holds no state dict of tensors: it is not a checkpoint of a {model_name} model"
    expected = open_clip.create_model(model_name).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = [f"{len(missing)} of its {len(expected)} tensors missing" if missing else "",
             f"{len(unexpected)} unknown" if unexpected else "",
             f"{len(shapes)} of another shape (e.g. {shapes[0]}: {list(state[shapes[0]].shape)} in the file, "
             f"{list(expected[shapes[0]].shape)} in {model_name})" if shapes else ""]
    detail = ", ".join(p for p in parts if p) or _first_line(exc)
    return (f"checkpoint {ckpt} does not match the model {model_name} ({detail}): it was saved from another "
            "architecture; give the model name it was trained as")


def _model_from_checkpoint(model_name: str, ckpt: Path) -> nn.Module:
    import open_clip

    if not ckpt.is_file():
        raise ExportError(f"checkpoint {ckpt} does not exist or is not a file")
    if ckpt.stat().st_size == 0:
        raise ExportError(f"checkpoint {ckpt} is empty (0 bytes): it is not a checkpoint of a {model_name} model")
    try:
        return open_clip.create_model(model_name, pretrained=str(ckpt), load_weights=True)
    except Exception as exc:  # open_clip passes on torch.load's, load_state_dict's and its own assertion errors
        raise ExportError(_checkpoint_problem(model_name, ckpt, exc)) from exc


def load_source(
    model_name: str,
    *,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    model: nn.Module | None = None,
) -> SourceModel:
    """Resolve one of: name + pretrained tag (downloads through open_clip), name + local checkpoint
    file, or a model object already in memory (its architecture named by `model_name`)."""
    import open_clip

    given = sum(x is not None for x in (pretrained, checkpoint, model))
    if given > 1:
        raise ExportError("give at most one of pretrained, checkpoint or model")
    cfg = model_config(model_name)
    source: dict[str, Any] = {"architecture": model_name}
    if model is None:
        if checkpoint is not None:
            ckpt = Path(checkpoint).expanduser()
            source["checkpoint"] = str(ckpt.resolve())
            model = _model_from_checkpoint(model_name, ckpt)
        else:
            source["pretrained"] = pretrained
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, load_weights=pretrained is not None)
            except Exception as exc:  # download, cache and state-dict errors of every kind
                what = f"pretrained tag {pretrained!r}" if pretrained else "random weights"
                raise ExportError(f"could not create {model_name} with {what}: {type(exc).__name__}: {exc}") from exc
        if pretrained is None and checkpoint is None:
            log.warning("exporting %s with random weights (no pretrained tag or checkpoint given)", model_name)
            source["weights"] = "random"
    else:
        source["object"] = type(model).__name__
    model.eval()
    if not hasattr(model, "visual"):
        raise ExportError(f"{type(model).__name__} has no `visual` tower: not an open_clip CLIP model")
    quick = _uses_quick_gelu(model)
    # Some pretrained tags change the image size; record what the model really uses.
    img = getattr(model.visual, "image_size", None)
    if img is not None:
        size = img if isinstance(img, int) else img[0]
        cfg.setdefault("vision_cfg", {})["image_size"] = int(size)
    return SourceModel(model=model, model_name=model_name, model_cfg=cfg, quick_gelu=quick, source=source)


def round_weights_to_fp16(model: nn.Module) -> None:
    """Round every floating parameter and buffer to fp16 precision in place (dtype stays fp32)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
