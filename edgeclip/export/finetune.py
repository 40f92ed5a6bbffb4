"""ARF's workstation mode: fine-tune the image encoder in PyTorch, then re-export a bundle; with its baselines.

ARF (Han et al., CVPR 2024) fine-tunes CLIP on a downstream task with the FLYP-style contrastive loss and keeps
two kinds of *anchors* (image-text pairs with rich text) aligned beside it, so the fine-tuned image space stays
in register with CLIP's text space (robustness under shift, zero-shot on other classes). Device mode
(`edgeclip.runtime.methods.arf`) keeps both encoders frozen; this module is the workstation mode, which trains
the image encoder's weights and writes a new bundle (ONNX graphs + towers + manifest, with the parity check).

Pipeline::

    result = finetune_image_encoder(bundle_or_checkpoint, images, labels, class_names,
                                    captions=batch.captions, pairs="pool.jsonl")      # ARF
    plain = finetune_image_encoder(..., lambda_tc=0, lambda_it=0)                    # plain fine-tuning (FLYP)
    zs = load_model(bundle_or_checkpoint).model                                     # zero-shot weights
    wise = wise_ft(zs, plain.model, alpha=0.5)                                       # WiSE-FT
    export_finetuned(result, "out.bundle")                                          # new bundle, parity-checked

The loss of one step (`arf_loss`; every term is a function of `edgeclip.runtime.methods.arf_anchors`, so both
modes share one definition)::

    L = L_ft + lambda_tc · L_tc + lambda_it · L_it
    L_ft = flyp_loss(f(x), T(classes), y, s)     images vs "a photo of a {class}." of the batch's classes
    L_tc = anchor_loss(f(x_tc), T(caption), g, s)  text-compensated anchors: fine-tune images vs rich captions
    L_it = anchor_loss(f(x_it), T(caption), g, s)  image-text-pair anchors retrieved from a pair pool

``f`` is the image encoder being trained, ``T`` the frozen text encoder, ``s`` the model's (fixed) logit scale.
A term whose weight is 0, or whose anchor data is not given, is not computed at all, so ``lambda_tc =
lambda_it = 0`` is exactly plain FLYP fine-tuning (the baseline "plain fine-tuning": the same loss without
anchors).

Sources (`load_model`): a bundle that carries both PyTorch towers (a folder, a `Bundle` or a loaded `EdgeClip`;
rebuilt by `edgeclip.export.from_bundle`), a local open_clip checkpoint file with ``model_name=``, or an open_clip
model in memory with ``model_name=`` (copied, never changed).

Anchor data. ``captions``: one caption per fine-tune image (e.g. `ShapesBatch.captions`), paired with the same
augmented view of that image in the same step; or a caption JSONL / its `CaptionRecord` s (images of their own,
drawn as a separate anchor batch). ``pairs``: a pair-pool JSONL, its records, or ``(images, captions)``; the
pairs most similar to the task's class prompts under the *zero-shot* (untrained) encoders are kept
(`class_similarity` + `select_top_k` of `arf_anchors`: the ``retrieval_k`` best per class with score >=
``min_similarity``; a class with none is an `InputError`).

Choices that are ours (ARF released no code):
- **the text encoder stays frozen**; only the image tower trains (FLYP fine-tunes both; FLYP-with-frozen-text
  variants, and the edge setting, where text embeddings of unseen classes must keep working, motivate ours).
  Class prompts and every caption go through the frozen text tower once and are fixed targets;
- the temperature is the model's logit scale, fixed (FLYP learns it); the logit scale is not trained;
- loss weights 1 and 1; each term an average over its batch; duplicate texts in a batch handled as in
  `arf_anchors` (same-class images are not each other's negatives);
- aligned captions reuse the fine-tune batch's image embeddings (one forward pass); separate caption anchors and
  pair anchors are drawn independently, ``anchor_batch_size`` rows without replacement per step, and share the
  forward pass with the fine-tune batch;
- augmentation: a light random resized crop (area 80-100 %, aspect 3/4-4/3, bilinear, on the normalised
  pixels) and **no horizontal flip**, since the procedural captions name left and right; ``augment=False``
  turns it off. Anchor images get the same augmentation;
- AdamW (weight decay 0.1 as FLYP) on the image tower's parameters, a linear warm-up from lr/10 over the first
  10 % of steps then cosine to 0 (`lr_at`, shared with the prompt-training methods); defaults (5 epochs, lr 1e-4,
  batch 64) fit the micro world; the last epoch is kept (no validation-based selection);
- a non-finite loss skips its step (counted in the result);
- images are preprocessed once up front and held as float32 pixels (N·3·S²·4 bytes);
- WiSE-FT interpolates every floating tensor of the state dict (image tower, text tower, which is equal in both,
  and the logit scale), ``(1 − α)·θ_zs + α·θ_ft`` through `torch.lerp` (exact at α = 0 and α = 1).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import ClassNameError, EdgeClipError, InputError
from edgeclip.export.bundle_writer import ExportResult, export_bundle
from edgeclip.runtime.classnames import validate_class_names, validate_template
from edgeclip.runtime.methods.arf_anchors import (
    RETRIEVE_BY,
    AnchorSet,
    CaptionRecord,
    anchor_loss,
    class_similarity,
    flyp_loss,
    read_caption_file,
    select_top_k,
)
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.prompt_training import finite_step, lr_at
from edgeclip.runtime.model import DEFAULT_TEMPLATE
from edgeclip.runtime.preprocess import PreprocessConfig, preprocess
from edgeclip.runtime.text_tower import TextTower
from edgeclip.runtime.tokenizer import Tokenizer, TokenizerSpec

__all__ = [
    "ARFLoss",
    "FinetuneResult",
    "LoadedModel",
    "arf_loss",
    "export_finetuned",
    "finetune_image_encoder",
    "load_model",
    "random_resized_crop",
    "wise_ft",
]

log = logging.getLogger(__name__)

#: fraction of the steps spent in the linear warm-up
WARMUP_FRACTION = 0.1
#: chunk size when encoding or preprocessing outside the training loop
_CHUNK = 64


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trainable open_clip model with what training needs: its architecture name, its preprocessing, its
    tokenizer, and where it came from (``origin``, JSON-ready)."""

    model: nn.Module
    model_name: str
    preprocess: PreprocessConfig
    tokenizer: Tokenizer
    origin: dict[str, Any] = field(default_factory=dict)


def _tokenizer_for(model_name: str, tower: TextTower) -> Tokenizer:
    import open_clip

    tok = open_clip.get_tokenizer(model_name)
    if not isinstance(tok, open_clip.tokenizer.SimpleTokenizer):
        raise InputError(f"{model_name} uses the tokenizer {type(tok).__name__}; edgeclip supports CLIP's "
                         "byte-pair tokenizer only")
    return Tokenizer(TokenizerSpec(kind="clip_bpe", context_length=tower.context_length,
                                   sot_id=int(tok.sot_token_id), eot_id=int(tok.eot_token_id), pad_id=0))


def load_model(source: Any, *, model_name: str | None = None) -> LoadedModel:
    """The open_clip model to fine-tune (or the zero-shot one to interpolate with), from `source`:

    * a bundle folder, a `Bundle` or a loaded `EdgeClip` whose bundle carries ``image_tower.safetensors`` and
      ``text_tower.safetensors`` (`edgeclip.export.from_bundle.model_from_bundle`);
    * a local checkpoint file (a state dict) of the open_clip architecture `model_name`;
    * an open_clip model object of the architecture `model_name` (deep-copied: the caller's model is untouched).

    `InputError` for a bundle without its image tower, a missing `model_name`, or a path that is neither.
    """
    from edgeclip.export.from_bundle import model_from_bundle
    from edgeclip.export.source import load_source
    from edgeclip.runtime import bundle as B
    from edgeclip.runtime.model import EdgeClip

    if isinstance(source, (EdgeClip, B.Bundle)) or (isinstance(source, (str, os.PathLike))
                                                     and Path(source).expanduser().is_dir()):
        rebuilt = model_from_bundle(source if not isinstance(source, os.PathLike) else Path(source))
        if model_name is not None and model_name != rebuilt.model_name:
            raise InputError(f"model_name {model_name!r} given, but the bundle {rebuilt.bundle.path} holds "
                             f"{rebuilt.model_name!r}")
        spec = rebuilt.bundle.spec
        return LoadedModel(rebuilt.model, rebuilt.model_name, spec.image, Tokenizer(spec.text.tokenizer),
                           {"bundle": str(rebuilt.bundle.path), "identity": rebuilt.bundle.identity()})
    if isinstance(source, nn.Module):
        if model_name is None:
            raise InputError("fine-tuning a model object needs model_name= (its open_clip architecture name)")
        src = load_source(model_name, model=copy.deepcopy(source))
        origin: dict[str, Any] = {"object": type(source).__name__}
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"{path} does not exist: give a bundle folder or an open_clip checkpoint file")
        if model_name is None:
            raise InputError(f"{path} is a checkpoint file: pass model_name= (the open_clip architecture it was "
                             "saved from)")
        src = load_source(model_name, checkpoint=path)
        origin = {"checkpoint": str(path.resolve())}
    else:
        raise InputError(f"cannot fine-tune from a {type(source).__name__}: give a bundle (folder, Bundle, EdgeClip), "
                         "a checkpoint file with model_name=, or an open_clip model with model_name=")
    model = src.model.float().cpu().eval()
    try:
        tower = TextTower.from_open_clip(model)
    except InputError as exc:
        raise InputError(f"{model_name}: {exc}") from exc
    return LoadedModel(model, model_name, PreprocessConfig.from_open_clip(model), _tokenizer_for(model_name, tower),
                       {**origin, "architecture": model_name})


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------

AnchorBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(image embeds [B, D], text embeds [B, D], caption groups [B])``"""


@dataclass
class ARFLoss:
    """The terms of one step: ``total = ft + lambda_tc·tc + lambda_it·it``; a term that was not computed is None."""

    total: torch.Tensor
    ft: torch.Tensor
    tc: torch.Tensor | None = None
    it: torch.Tensor | None = None


def arf_loss(image: torch.Tensor, labels: torch.Tensor, class_text: torch.Tensor, scale: float, *,
             tc: AnchorBatch | None = None, it: AnchorBatch | None = None,
             lambda_tc: float = 1.0, lambda_it: float = 1.0) -> ARFLoss:
    """ARF's loss on embeddings: `flyp_loss` of the fine-tune batch plus the weighted `anchor_loss` of the
    text-compensated (`tc`) and image-text-pair (`it`) anchor batches. A term with weight 0 or no batch is not
    computed, so with both weights 0 (or no anchors) ``total`` is `flyp_loss` itself."""
    ft = flyp_loss(image, class_text, labels, scale)
    total = ft
    out_tc = out_it = None
    if tc is not None and lambda_tc != 0:
        out_tc = anchor_loss(tc[0], tc[1], tc[2], scale)
        total = total + lambda_tc * out_tc
    if it is not None and lambda_it != 0:
        out_it = anchor_loss(it[0], it[1], it[2], scale)
        total = total + lambda_it * out_it
    return ARFLoss(total, ft, out_tc, out_it)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _pixels(images: Any, cfg: PreprocessConfig, what: str) -> torch.Tensor:
    """Images → normalised float32 pixels ``[N, 3, S, S]`` on the CPU (preprocessed in chunks)."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        if images.dim() != 4 or images.shape[0] == 0:
            raise InputError(f"{what}: no images (a pixel tensor must be [N, 3, S, S] with N >= 1, got "
                             f"{list(images.shape)})")
        px = preprocess(images, cfg).detach().float().cpu()
        if not bool(torch.isfinite(px).all()):
            raise InputError(f"{what}: the pixel tensor holds NaN or Inf")
        return px
    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: list[Any] = list(images)
    elif isinstance(images, torch.Tensor) and images.dim() == 4:
        items = list(images.cpu().numpy())
    elif isinstance(images, (list, tuple)):
        items = list(images)
    elif images is None:
        items = []
    else:
        items = [images]
    if not items:
        raise InputError(f"{what}: no images to fine-tune on")
    out = []
    for s in range(0, len(items), _CHUNK):
        try:
            out.append(preprocess(items[s : s + _CHUNK], cfg).float().cpu())
        except EdgeClipError as exc:
            last = min(s + _CHUNK, len(items)) - 1
            raise InputError(f"{what}: image(s) {s}–{last} could not be used: {exc}") from exc
    return torch.cat(out)


def _labels(labels: Any, n: int, n_classes: int) -> torch.Tensor:
    arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"labels must be one integer per image ({n}), got shape {list(arr.shape)}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels must be integers (indices into class_names), got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
    if bad.size:
        raise InputError(f"labels must lie in [0, {n_classes}) (one of the {n_classes} class names); image(s) "
                         f"{bad[:5].tolist()} have {arr[bad[:5]].tolist()}")
    return torch.as_tensor(arr, dtype=torch.int64)


def _count(images: Any) -> int | None:
    """The number of images, where it is known without decoding them (None: a single image or an iterable)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return int(images.shape[0]) if images.ndim == 4 else None
    if isinstance(images, (list, tuple)):
        return len(images)
    return 0 if images is None else None


def _is_caption_file(captions: Any) -> bool:
    return isinstance(captions, (str, os.PathLike)) or (
        isinstance(captions, (list, tuple)) and bool(captions) and isinstance(captions[0], CaptionRecord))


def _aligned_captions(captions: Any, n: int | None) -> list[str] | None:
    """One caption per fine-tune image, checked (None for a caption file, which has images of its own)."""
    if _is_caption_file(captions):
        return None
    caps = list(captions) if isinstance(captions, Sequence) else None
    if caps is None or (n is not None and len(caps) != n):
        got = f"{len(caps)} captions" if caps is not None else f"a {type(captions).__name__}"
        raise InputError(f"captions must be one per fine-tune image ({n}), got {got}")
    return _check_captions(caps, [f"image {i}" for i in range(len(caps))])


def _check_captions(captions: Sequence[Any], where: Sequence[str]) -> list[str]:
    bad = [w for c, w in zip(captions, where, strict=True) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"empty caption(s) for {', '.join(bad[:5])}" + (f" (and {len(bad) - 5} more)"
                                                                        if len(bad) > 5 else ""))
    return [c.strip() for c in captions]


def _groups(captions: Sequence[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions], dtype=torch.int64)


@torch.no_grad()
def _encode_texts(tower: TextTower, tokenizer: Tokenizer, texts: Sequence[str], where: Sequence[str]) -> torch.Tensor:
    """Texts through the frozen text tower, L2-normalised ``[N, D]``; `InputError` naming a text too long."""
    out = []
    for s in range(0, len(texts), _CHUNK):
        chunk = list(texts[s : s + _CHUNK])
        try:
            ids, eot = tokenizer.ids(chunk)
        except ClassNameError as exc:
            i = next(j for j, t in enumerate(chunk) if len(tokenizer.encode(t)) + 2 > tokenizer.spec.context_length)
            raise InputError(f"{where[s + i]}: {exc}") from exc
        dev = tower.positional_embedding.device
        out.append(tower(tower.embed_tokens(ids.to(dev)), eot.to(dev)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def _encode_images(visual: nn.Module, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = [visual(pixels[s : s + _CHUNK].to(device)).float().cpu() for s in range(0, len(pixels), _CHUNK)]
    return F.normalize(torch.cat(out), dim=-1)


@dataclass
class _Anchors:
    """Anchor images (pixels, trained through the encoder) with fixed caption embeddings and caption groups."""

    pixels: torch.Tensor
    text: torch.Tensor
    groups: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def _records_or_pairs(data: Any, what: str) -> tuple[Any, list[str], list[str]]:
    """(images, captions, where) of a JSONL path, a list of `CaptionRecord`, or ``(images, captions)``."""
    if isinstance(data, (str, os.PathLike)):
        records = read_caption_file(data)
        return [r.image for r in records], [r.caption for r in records], [f"{data} line {r.line}" for r in records]
    if isinstance(data, (list, tuple)) and data and all(isinstance(r, CaptionRecord) for r in data):
        return [r.image for r in data], [r.caption for r in data], [f"{what} line {r.line}" for r in data]
    if isinstance(data, tuple) and len(data) == 2:
        images, caps = data
        if isinstance(caps, str) or not isinstance(caps, Sequence):
            raise InputError(f"{what}: (images, captions) needs a list of captions, got {type(caps).__name__}")
        return images, list(caps), [f"{what} pair {i}" for i in range(len(caps))]
    raise InputError(f"{what} must be a JSONL file, a list of CaptionRecord or a pair (images, captions); got "
                     f"{type(data).__name__}" + (" (empty)" if isinstance(data, (list, tuple)) and not data else ""))


def _anchor_set(data: Any, what: str, lm: LoadedModel, tower: TextTower) -> _Anchors:
    images, caps, where = _records_or_pairs(data, what)
    px = _pixels(images, lm.preprocess, what)
    if len(caps) != len(px):
        raise InputError(f"{what}: {len(caps)} captions for {len(px)} images (one caption per image)")
    caps = _check_captions(caps, where)
    text = _encode_texts(tower, lm.tokenizer, caps, where)
    return _Anchors(px, text, _groups(caps), caps)


def _retrieve(pool: _Anchors, visual: nn.Module, class_text: torch.Tensor, names: Sequence[str], *, k: int,
              min_similarity: float, by: str, device: torch.device) -> tuple[_Anchors, dict[str, Any]]:
    """The pairs of `pool` nearest to the class prompts under the zero-shot encoders (`arf_anchors`' rule)."""
    image_embeds = _encode_images(visual, pool.pixels, device)
    scored = AnchorSet.from_tensors(image_embeds, pool.text, captions=pool.captions)
    scores = class_similarity(class_text, scored, by)
    picked = select_top_k(scores, list(names), k, min_similarity)
    rows = sorted({j for p in picked for j in p})
    idx = torch.tensor(rows, dtype=torch.int64)
    groups = torch.unique(pool.groups[idx], return_inverse=True)[1].to(torch.int64)
    out = _Anchors(pool.pixels[idx], pool.text[idx], groups, [pool.captions[i] for i in rows])
    meta = {"pool_size": len(pool), "kept": len(rows), "k": k, "min_similarity": min_similarity, "by": by}
    log.info("retrieved %d anchor pairs from a pool of %d for %d classes (k=%d, by %s)", len(rows), len(pool),
             len(names), k, by)
    return out, meta


def random_resized_crop(pixels: torch.Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.8, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random resized crop of each image of ``[B, 3, S, S]`` back to S × S (bilinear, via an affine grid):
    area fraction in `scale`, aspect ratio log-uniform in `ratio`, placed uniformly inside the image."""
    b = pixels.shape[0]
    u = torch.rand(b, 4, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # centre in [-1 + w, 1 - w] (normalised coordinates)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(pixels.device, pixels.dtype)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """A fine-tuned model (eval mode, on the CPU, parameters frozen) and how it was made.

    ``history``: per epoch the mean of each loss term (``total``, ``ft``, ``tc``, ``it``; a term that was off
    is absent) and the learning rate at its end; ``steps`` taken, ``skipped_steps`` (non-finite loss);
    ``settings``: JSON-ready (method "arf" when an anchor term was on, else "flyp", the weights, epochs, lr,
    anchor counts, the source), recorded in the manifest by `export_finetuned`.
    """

    model: nn.Module
    model_name: str
    history: list[dict[str, float]]
    steps: int
    skipped_steps: int
    seconds: float
    settings: dict[str, Any]


def _check_options(epochs: int, lr: float, batch_size: int, lambda_tc: float, lambda_it: float, weight_decay: float,
                   anchor_batch_size: int | None, retrieval_k: int, retrieve_by: str, seed: int) -> None:
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_int("retrieval_k", retrieval_k)
    if anchor_batch_size is not None:
        check_positive_int("anchor_batch_size", anchor_batch_size)
    check_finite("lr", lr, strict=True)
    check_finite("lambda_tc", lambda_tc)
    check_finite("lambda_it", lambda_it)
    check_finite("weight_decay", weight_decay)
    if retrieve_by not in RETRIEVE_BY:
        raise InputError(f"retrieve_by must be one of {RETRIEVE_BY}, got {retrieve_by!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}")


def finetune_image_encoder(
    source: Any,
    images: Any,
    labels: Any,
    class_names: Sequence[str],
    *,
    captions: Any = None,
    pairs: Any = None,
    lambda_tc: float = 1.0,
    lambda_it: float = 1.0,
    epochs: int = 5,
    lr: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    model_name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    weight_decay: float = 0.1,
    augment: bool = True,
    anchor_batch_size: int | None = None,
    retrieval_k: int = 8,
    min_similarity: float = 0.2,
    retrieve_by: str = "image",
    device: str = "cpu",
) -> FinetuneResult:
    """Fine-tune the image encoder of `source` on `images` / `labels` with ARF's loss (see the module docstring).

    Args:
        source: a bundle with both PyTorch towers, a checkpoint file or an open_clip model (`load_model`).
        images: the fine-tune images: uint8 ``[N, H, W, 3]``, a list of anything `preprocess` reads, or
            normalised pixels ``[N, 3, S, S]``.
        labels: ``[N]`` indices into `class_names`.
        class_names: the task's classes (classes absent from `labels` are allowed and never trained on).
        captions: text-compensated anchors: one caption per image, or a caption JSONL (or its records).
        pairs: image-text-pair pool (JSONL, records or ``(images, captions)``) to retrieve anchors from.
        lambda_tc, lambda_it: weights of the two anchor terms (0 turns a term off; both 0: plain fine-tuning).
        epochs, lr, batch_size, seed: the optimisation (AdamW, warm-up + cosine) and its randomness.
        progress: show a tqdm bar over the epochs.
        model_name: the open_clip architecture (needed for a checkpoint or a model object).
        template: the class prompt, ``{}`` where the class name goes.
        weight_decay: AdamW's decoupled weight decay.
        augment: random resized crops of the training images (no flips).
        anchor_batch_size: rows per separate anchor batch (default `batch_size`).
        retrieval_k, min_similarity, retrieve_by: the pair retrieval (`select_top_k`, `class_similarity`).
        device: where to train ("cpu" or "cuda"); the result is on the CPU.

    Raises:
        InputError: no images; labels not one per image or out of range; a caption count that does not match the
            images, or an empty caption; a bundle without ``image_tower.safetensors``; bad options.
    """
    _check_options(epochs, lr, batch_size, lambda_tc, lambda_it, weight_decay, anchor_batch_size, retrieval_k,
                   retrieve_by, seed)
    names = validate_class_names(class_names)
    validate_template(template)
    dev = torch.device(device)
    # what can be checked without the model is checked first (loading a large model takes a while)
    counted_images = _count(images)
    if counted_images == 0:
        raise InputError("images: no images to fine-tune on")
    if counted_images is not None:
        _labels(labels, counted_images, len(names))
    if captions is not None and lambda_tc != 0:
        _aligned_captions(captions, counted_images)
    lm = load_model(source, model_name=model_name)
    px = _pixels(images, lm.preprocess, "images")
    n = len(px)
    y = _labels(labels, n, len(names))

    model = lm.model.to(dev)
    tower = TextTower.from_open_clip(model)  # shares the model's text weights; frozen
    model.requires_grad_(False)
    model.eval()
    scale = float(model.logit_scale.exp().item())
    class_text = _encode_texts(tower, lm.tokenizer, [template.format(c) for c in names],
                               [f"class {c!r}" for c in names]).to(dev)

    # anchors: built only for terms that are on
    aligned: tuple[torch.Tensor, torch.Tensor] | None = None  # caption embeds per image, groups
    tc_set: _Anchors | None = None
    it_set: _Anchors | None = None
    retrieval: dict[str, Any] | None = None
    if captions is not None and lambda_tc != 0:
        if _is_caption_file(captions):
            tc_set = _anchor_set(captions, "captions", lm, tower)
        else:
            caps = _aligned_captions(captions, n) or []
            aligned = (_encode_texts(tower, lm.tokenizer, caps, [f"caption of image {i}" for i in range(n)]).to(dev),
                       _groups(caps).to(dev))
    elif captions is not None:
        log.info("lambda_tc = 0: the captions are not used")
    elif lambda_tc != 0:
        log.info("no captions given: the text-compensated anchor term is off")
    if pairs is not None and lambda_it != 0:
        pool = _anchor_set(pairs, "pairs", lm, tower)
        it_set, retrieval = _retrieve(pool, model.visual, class_text.cpu(), names, k=retrieval_k,
                                      min_similarity=min_similarity, by=retrieve_by, device=dev)
    elif pairs is not None:
        log.info("lambda_it = 0: the pair pool is not used")
    elif lambda_it != 0:
        log.info("no pair pool given: the image-text-pair anchor term is off")
    use_tc = aligned is not None or tc_set is not None
    use_it = it_set is not None

    # optimisation: the image tower only
    params = list(model.visual.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, round(WARMUP_FRACTION * total))
    g = torch.Generator().manual_seed(seed)
    g_tc = torch.Generator().manual_seed(seed + 1)
    g_it = torch.Generator().manual_seed(seed + 2)
    abs_ = anchor_batch_size or batch_size

    def draw(anchors: _Anchors, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(anchors), generator=gen)[: min(abs_, len(anchors))]

    history: list[dict[str, float]] = []
    step = skipped = 0
    t0 = time.perf_counter()
    log.info("fine-tuning the image encoder of %s on %d images, %d classes: %d epochs x %d steps (terms: ft%s%s)",
             lm.model_name, n, len(names), epochs, steps_per_epoch, ", tc" if use_tc else "", ", it" if use_it else "")
    from tqdm.auto import tqdm

    model.visual.train()
    try:
        for epoch in tqdm(range(epochs), desc="fine-tune", disable=not progress, unit="epoch"):
            sums: dict[str, float] = {}
            counted = 0
            perm = torch.randperm(n, generator=g)
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size : (s + 1) * batch_size]
                cur = lr_at(step, total, warmup, lr)
                for group in opt.param_groups:
                    group["lr"] = cur
                # each part is augmented from its own stream, so anchors never change the fine-tune batch's crops
                parts = [random_resized_crop(px[idx], g) if augment else px[idx]]
                j_tc = draw(tc_set, g_tc) if tc_set is not None else None
                j_it = draw(it_set, g_it) if it_set is not None else None
                if j_tc is not None:
                    parts.append(random_resized_crop(tc_set.pixels[j_tc], g_tc) if augment else tc_set.pixels[j_tc])
                if j_it is not None:
                    parts.append(random_resized_crop(it_set.pixels[j_it], g_it) if augment else it_set.pixels[j_it])
                x = torch.cat(parts) if len(parts) > 1 else parts[0]
                emb = model.visual(x.to(dev))
                b = len(idx)
                img, rest = emb[:b], emb[b:]
                tc_batch = it_batch = None
                if aligned is not None:
                    i_dev = idx.to(dev)
                    tc_batch = (img, aligned[0][i_dev], aligned[1][i_dev])
                if j_tc is not None:
                    m = len(j_tc)
                    tc_batch = (rest[:m], tc_set.text[j_tc].to(dev), tc_set.groups[j_tc].to(dev))
                    rest = rest[m:]
                if j_it is not None:
                    it_batch = (rest, it_set.text[j_it].to(dev), it_set.groups[j_it].to(dev))
                loss = arf_loss(img, y[idx].to(dev), class_text, scale, tc=tc_batch, it=it_batch,
                                lambda_tc=lambda_tc, lambda_it=lambda_it)
                step += 1
                if not finite_step(opt, loss.total):
                    skipped += 1
                    log.warning("step %d: non-finite loss, skipped", step)
                    continue
                counted += 1
                for key in ("total", "ft", "tc", "it"):
                    v = getattr(loss, key)
                    if v is not None:
                        sums[key] = sums.get(key, 0.0) + float(v.detach())
            row = {k: v / max(1, counted) for k, v in sums.items()}
            row["lr"] = cur
            history.append(row)
            log.info("epoch %d/%d: %s", epoch + 1, epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    finally:
        model.requires_grad_(False)
        model.eval()
    model = model.cpu()
    seconds = time.perf_counter() - t0
    settings = {
        "method": "arf" if (use_tc or use_it) else "flyp",
        "trained": "image tower (text tower frozen)",
        "lambda_tc": float(lambda_tc) if use_tc else 0.0,
        "lambda_it": float(lambda_it) if use_it else 0.0,
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed,
        "augment": augment, "template": template, "images": n, "classes": names,
        "caption_anchors": (n if aligned is not None else len(tc_set) if tc_set is not None else 0),
        "pair_anchors": len(it_set) if it_set is not None else 0,
        "retrieval": retrieval, "steps": step, "skipped_steps": skipped, "source": lm.origin,
    }
    log.info("fine-tuned in %.1f s (%d steps, %d skipped)", seconds, step, skipped)
    return FinetuneResult(model, lm.model_name, history, step, skipped, seconds, settings)


# ---------------------------------------------------------------------------------------------------------------
# WiSE-FT and export
# ---------------------------------------------------------------------------------------------------------------


def _as_model(m: Any, what: str) -> nn.Module:
    if isinstance(m, FinetuneResult):
        return m.model
    if isinstance(m, LoadedModel):
        return m.model
    if not isinstance(m, nn.Module):
        raise InputError(f"{what} must be an open_clip model (or a FinetuneResult), got {type(m).__name__}")
    return m


@torch.no_grad()
def wise_ft(zero_shot_model: Any, finetuned_model: Any, alpha: float = 0.5) -> nn.Module:
    """WiSE-FT (Wortsman et al., 2022): a new model whose every floating weight and buffer is
    ``(1 − alpha)·zero_shot + alpha·finetuned`` (`torch.lerp`: exactly the zero-shot weights at α = 0 and the
    fine-tuned ones at α = 1). Integer buffers must agree. Neither input is changed; the result (a copy of the
    fine-tuned model's structure, on the CPU, eval mode, frozen) exports with `export_finetuned`."""
    zs = _as_model(zero_shot_model, "zero_shot_model")
    ft = _as_model(finetuned_model, "finetuned_model")
    check_finite("alpha", alpha)
    if alpha > 1:
        raise InputError(f"alpha must lie in [0, 1] (0: zero-shot, 1: fine-tuned), got {alpha!r}")
    s_zs, s_ft = zs.state_dict(), ft.state_dict()
    if set(s_zs) != set(s_ft):
        diff = sorted(set(s_zs) ^ set(s_ft))
        raise InputError(f"the two models are not the same architecture (keys differ: {diff[:6]})")
    mixed: dict[str, torch.Tensor] = {}
    for k, a in s_zs.items():
        b = s_ft[k]
        if a.shape != b.shape:
            raise InputError(f"the two models are not the same architecture ({k}: {list(a.shape)} vs {list(b.shape)})")
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.is_floating_point():
            mixed[k] = torch.lerp(a.float(), b.float(), float(alpha)).to(b.dtype)
        else:
            if not torch.equal(a, b):
                raise InputError(f"the models' integer buffer {k} differs; they cannot be interpolated")
            mixed[k] = b.clone()
    out = copy.deepcopy(ft).cpu()
    out.load_state_dict(mixed, strict=True)
    out.requires_grad_(False)
    return out.eval()


def export_finetuned(model: Any, out: str | Path, *, model_name: str | None = None, storage: str = "float32",
                     overwrite: bool = False, classes: Sequence[str] | None = None, description: str | None = None,
                     extra: dict[str, Any] | None = None, progress: bool = False) -> ExportResult:
    """Export a fine-tuned (or WiSE-FT) model as a bundle at `out` through `export_bundle(model=...)`: the ONNX
    checker and the parity check (min cosine >= 0.9999 of both graphs against this PyTorch model) run before the
    bundle is renamed into place, atomically; on failure nothing is left at `out`. The image tower is included,
    so the bundle can be fine-tuned again. A `FinetuneResult` brings its `model_name` and records its settings
    under ``extra["finetune"]``; a bare model needs `model_name`. The caller's model is not changed."""
    settings = model.settings if isinstance(model, FinetuneResult) else None
    if isinstance(model, FinetuneResult):
        model_name = model_name or model.model_name
    mdl = _as_model(model, "model")
    if model_name is None:
        raise InputError("export_finetuned needs model_name= (the open_clip architecture) for a model object")
    mdl = copy.deepcopy(mdl).cpu().float().eval()  # export may round weights to fp16 in place
    mdl.requires_grad_(False)
    info = dict(extra or {})
    if settings is not None:
        info.setdefault("finetune", settings)
    return export_bundle(out, model_name, model=mdl, storage=storage, overwrite=overwrite, progress=progress,
                         extra=info, classes=classes, description=description)
