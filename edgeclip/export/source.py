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
            if not ckpt.is_file():
                raise ExportError(f"checkpoint {ckpt} does not exist or is not a file")
            weights = str(ckpt)
            source["checkpoint"] = str(ckpt.resolve())
        else:
            weights = pretrained
            source["pretrained"] = pretrained
        try:
            model = open_clip.create_model(model_name, pretrained=weights, load_weights=weights is not None)
        except (RuntimeError, KeyError, ValueError) as exc:
            what = f"checkpoint {weights}" if checkpoint is not None else f"pretrained tag {weights!r}"
            raise ExportError(f"could not load {model_name} with {what}: {exc}") from exc
        if weights is None:
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
