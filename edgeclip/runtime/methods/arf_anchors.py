"""ARF's anchor data and losses: caption files, image-text pair pools, retrieval, and the contrastive terms.

ARF (Han et al., CVPR 2024) regularises fine-tuning with two kinds of *anchors* — image-text pairs with rich
text — beside the FLYP-style fine-tune loss (`edgeclip.runtime.methods.arf` uses them in device mode):

* **Text-compensated anchors**: the fine-tune images with rich captions (the paper: from a captioner; here a
  caption file the user gives, or the procedural dataset's own captions, `ShapesBatch.captions`).
* **Image-text-pair anchors**: pairs retrieved from a pool of image-text pairs (the paper: CC3M-like data)
  by similarity to the task's class names, through the frozen encoders.

Inputs. A caption file and a pair pool are both JSONL, one object per line, ``{"image": path, "caption": str}``
(`read_caption_file`; a relative path is read from the file's folder; blank lines are skipped). A missing or
unreadable image, an empty caption, a line that is not such an object, and a file with no lines are
`InputError`s naming the line. Pairs can also be given as tensors (`AnchorSet.from_tensors`).

Losses. Every term is `contrastive_loss`: the symmetric CLIP loss between image embeddings ``[B, D]`` and
text embeddings ``[K, D]`` where ``target[b]`` names image b's text. Texts are first made unique within the
batch (one row per class for the fine-tune term, one per distinct caption for the anchors), so two images of
the same class (or with the same caption) are never each other's negatives: image→text is a cross-entropy over
the K texts, text→image a cross-entropy whose target spreads uniformly over all images that share that text.
The functions are pure (embeddings in, a scalar out), so a workstation fine-tune of the image encoder can use
them unchanged.

Choices that are ours (the paper released no code):
- duplicates handled as above (FLYP's own code treats same-class pairs in a batch as negatives);
- the temperature is the bundle's fixed ``logit_scale`` (FLYP learns it with the encoders);
- retrieval scores a pair by the cosine between the class prompt ``template.format(class)`` and the pair's
  image (``by="image"``, the default), its caption (``"text"``) or the mean of both (``"both"``); each class
  takes its ``k`` best pairs with score >= ``min_similarity`` and the anchors are the union over classes (a pair
  wanted by two classes appears once); a class with no pair at or above the threshold is an `InputError`;
- anchor image embeddings are the plain view through the frozen image encoder (L2-normalised); anchor text
  embeddings go through the frozen text encoder and are fixed targets.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.errors import EdgeClipError, InputError
from edgeclip.runtime.classnames import validate_class_names, validate_template
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip

__all__ = [
    "RETRIEVE_BY",
    "AnchorSet",
    "CaptionRecord",
    "anchor_loss",
    "caption_anchors_for_pool",
    "class_similarity",
    "contrastive_loss",
    "encode_pairs",
    "flyp_loss",
    "read_caption_file",
    "retrieve_pairs",
    "select_top_k",
]

log = logging.getLogger(__name__)

#: how a pool pair is scored against a class prompt: its image, its caption, or the mean of both
RETRIEVE_BY = ("image", "text", "both")


# ---------------------------------------------------------------------------------------------------------------
# Losses (pure functions on embeddings)
# ---------------------------------------------------------------------------------------------------------------


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric image↔text contrastive loss with unique texts (see the module docstring).

    Args:
        image: ``[B, D]`` image embeddings (normalised here).
        text: ``[K, D]`` distinct text embeddings (normalised here); every row must be the target of an image.
        target: ``[B]`` int64, the index of image b's text.
        scale: the logit scale (inverse temperature).

    Returns ``(CE(image→text) + CE(text→image)) / 2``, each averaged over its rows.
    """
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1]:
        raise InputError(f"contrastive_loss needs image [B, D] and text [K, D], got {list(image.shape)} and "
                         f"{list(text.shape)}")
    if target.shape != (image.shape[0],) or image.shape[0] == 0:
        raise InputError(f"target must be [{image.shape[0]}] (B >= 1), got {list(target.shape)}")
    k = text.shape[0]
    target = target.to(image.device, torch.int64)
    if int(target.min()) < 0 or int(target.max()) >= k:
        raise InputError(f"target indices must lie in [0, {k})")
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # [B, K]
    i2t = F.cross_entropy(logits, target)
    positives = F.one_hot(target, k).T.to(logits.dtype)  # [K, B]
    counts = positives.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise InputError("every text row of contrastive_loss must be the target of at least one image")
    t2i = -((positives / counts) * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)


def flyp_loss(image: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """FLYP's fine-tune loss: images ``[B, D]`` against the prompts of the classes present in the batch.

    `class_text` ``[C, D]`` holds one prompt embedding per class ("a photo of a {class}." or its learnt
    context), `labels` ``[B]`` index it. Only the batch's classes are texts of the contrastive loss (as FLYP
    pairs every image with its own class prompt); each appears once.
    """
    labels = labels.to(class_text.device, torch.int64)
    present, target = torch.unique(labels, return_inverse=True)
    return contrastive_loss(image, class_text[present], target, scale)


def anchor_loss(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, scale: float) -> torch.Tensor:
    """An anchor term: anchor images ``[B, D]`` against their texts ``[B, D]``; rows with equal `groups` ``[B]``
    share one text (the same caption), which then counts once and has all those images as positives."""
    if text.shape != image.shape:
        raise InputError(f"anchor_loss needs one text per image, got {list(image.shape)} and {list(text.shape)}")
    groups = groups.to(text.device, torch.int64)
    present, target = torch.unique(groups, return_inverse=True)
    first = torch.full((len(present),), len(groups), dtype=torch.int64, device=text.device)
    first = first.scatter_reduce(0, target, torch.arange(len(groups), device=text.device), reduce="amin")
    return contrastive_loss(image, text[first], target, scale)


# ---------------------------------------------------------------------------------------------------------------
# Anchor sets
# ---------------------------------------------------------------------------------------------------------------


def _groups_of(captions: Sequence[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions], dtype=torch.int64)


@dataclass
class AnchorSet:
    """Anchor pairs: ``image_embeds [N, D]`` and ``text_embeds [N, D]`` (L2-normalised, fixed), ``groups [N]``
    (rows with the same caption share a group), the captions and an id per row (``items``), and ``meta``."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    groups: torch.Tensor
    captions: list[str]
    items: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        e, t = self.image_embeds, self.text_embeds
        if e.dim() != 2 or e.shape[0] < 1:
            raise InputError(f"anchor image embeddings must be [N, D] with N >= 1, got {list(e.shape)}")
        if t.shape != e.shape:
            raise InputError(f"anchor text embeddings must match the images {list(e.shape)}, got {list(t.shape)}")
        if self.groups.shape != (e.shape[0],) or self.groups.dtype != torch.int64:
            raise InputError(f"anchor groups must be int64 [{e.shape[0]}], got {self.groups.dtype} "
                             f"{list(self.groups.shape)}")
        if len(self.captions) != e.shape[0] or len(self.items) != e.shape[0]:
            raise InputError(f"{len(self.captions)} captions and {len(self.items)} ids for {e.shape[0]} anchors")
        if not (bool(torch.isfinite(e).all()) and bool(torch.isfinite(t).all())):
            raise InputError("anchor embeddings contain NaN or Inf")

    def __len__(self) -> int:
        return int(self.image_embeds.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image_embeds.shape[1])

    @classmethod
    def from_tensors(cls, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                     captions: Sequence[str] | None = None, items: Sequence[str] | None = None) -> AnchorSet:
        """Pairs given as embeddings (normalised here). Without `captions`, rows with identical text
        embeddings share a group."""
        if not isinstance(image_embeds, torch.Tensor) or not isinstance(text_embeds, torch.Tensor):
            raise InputError("anchor pairs need image and text embeddings as tensors")
        if image_embeds.dim() != 2 or image_embeds.shape[0] < 1:
            raise InputError(f"an anchor set needs at least one pair [N, D], got {list(image_embeds.shape)}")
        img = F.normalize(image_embeds.detach().float(), dim=-1)
        txt = F.normalize(text_embeds.detach().float(), dim=-1)
        n = img.shape[0]
        if txt.shape != img.shape:
            raise InputError(f"anchor pairs need one text per image: images {list(img.shape)}, texts "
                             f"{list(txt.shape)}")
        if captions is None:
            groups = torch.unique(txt, dim=0, return_inverse=True)[1].to(torch.int64)
            caps = [f"<pair {i}>" for i in range(n)]
        else:
            caps = list(captions)
            groups = _groups_of(caps)
        ids = [f"pair:{i}" for i in range(n)] if items is None else [str(i) for i in items]
        return cls(img, txt, groups, caps, ids, {"source": "tensors"})

    def subset(self, index: Sequence[int] | torch.Tensor) -> AnchorSet:
        """The rows `index`, in that order (groups renumbered)."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        groups = torch.unique(self.groups[idx], return_inverse=True)[1].to(torch.int64)
        return AnchorSet(self.image_embeds[idx], self.text_embeds[idx], groups,
                         [self.captions[i] for i in idx.tolist()], [self.items[i] for i in idx.tolist()],
                         dict(self.meta))


@dataclass(frozen=True)
class CaptionRecord:
    """One line of a caption file: the image (resolved path), its caption, and the 1-based line number."""

    image: Path
    caption: str
    line: int


def _problems(path: Path, what: list[str]) -> InputError:
    more = f" (and {len(what) - 5} more)" if len(what) > 5 else ""
    return InputError(f"{path}: " + "; ".join(what[:5]) + more)


def read_caption_file(path: str | os.PathLike, *, check_images: bool = True) -> list[CaptionRecord]:
    """The records of a JSONL caption (or pair-pool) file, ``{"image": path, "caption": str}`` per line.

    Relative image paths are read from the file's folder. `InputError` naming the line(s) for: a line that is
    not a JSON object with a string ``image`` and a string ``caption``, an empty caption, a missing image file
    (with `check_images`); and for a file that does not exist or holds no records.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"caption file {path} does not exist (expected JSONL lines "
                         '{"image": "path.png", "caption": "..."})')
    records: list[CaptionRecord] = []
    problems: list[str] = []
    with path.open("r", encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"line {n} is not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or "caption" not in obj:
                problems.append(f'line {n} must be an object {{"image": path, "caption": text}}')
                continue
            caption = obj["caption"]
            if not isinstance(caption, str) or not caption.strip():
                problems.append(f"line {n} has an empty caption (image {obj['image']!r})")
                continue
            image = Path(obj["image"]).expanduser()
            if not image.is_absolute():
                image = path.parent / image
            if check_images and not image.is_file():
                problems.append(f"line {n}: image {obj['image']!r} does not exist ({image})")
                continue
            records.append(CaptionRecord(image, caption.strip(), n))
    if problems:
        raise _problems(path, problems)
    if not records:
        raise InputError(f"caption file {path} holds no image-caption lines")
    return records


def _encode_texts(model: EdgeClip, captions: Sequence[str], where: Sequence[str], batch_size: int) -> torch.Tensor:
    ctx = model.tokenizer.spec.context_length
    for cap, at in zip(captions, where, strict=True):
        if len(model.tokenizer.encode(cap)) + 2 > ctx:
            raise InputError(f"{at}: the caption {cap[:60]!r}… is longer than the text context of {ctx} tokens; "
                             "shorten it")
    out = []
    for s in range(0, len(captions), batch_size):
        with torch.no_grad():
            out.append(model.encode_text(list(captions[s : s + batch_size])).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


def encode_pairs(model: EdgeClip, pairs: str | os.PathLike | Sequence[CaptionRecord], *,
                 batch_size: int = 64) -> AnchorSet:
    """Encode image-caption pairs (a JSONL file, or its records) through the frozen encoders: the plain view
    of every image by the exported image encoder, every caption by the text encoder (both normalised)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    source = str(pairs) if isinstance(pairs, (str, os.PathLike)) else "records"
    records = read_caption_file(pairs) if isinstance(pairs, (str, os.PathLike)) else list(pairs)
    if not records:
        raise InputError("no image-caption pairs to encode")
    where = [f"{source} line {r.line}" for r in records]
    images = []
    for s in range(0, len(records), batch_size):
        chunk = records[s : s + batch_size]
        try:
            with torch.no_grad():
                images.append(model.encode_images([r.image for r in chunk], normalize=False).float().cpu())
        except EdgeClipError as exc:
            lines = f"{chunk[0].line}–{chunk[-1].line}"
            raise InputError(f"{source}: an image of lines {lines} could not be used: {exc}") from exc
    img = F.normalize(torch.cat(images), dim=-1)
    if not bool(torch.isfinite(img).all()):
        raise InputError(f"{source}: the image encoder returned NaN or Inf")
    txt = _encode_texts(model, [r.caption for r in records], where, batch_size)
    caps = [r.caption for r in records]
    return AnchorSet(img, txt, _groups_of(caps), caps, [str(r.image) for r in records],
                     {"source": source, "lines": [r.line for r in records]})


def caption_anchors_for_pool(model: EdgeClip, pool: Any, captions: Sequence[str], *,
                             batch_size: int = 64) -> AnchorSet:
    """Text-compensated anchors from a `FeaturePool` and one caption per pool image (in pool order): every view
    of image i (its cached embedding) paired with caption i through the frozen text encoder."""
    if isinstance(captions, str) or len(captions) != len(pool):
        got = "a string" if isinstance(captions, str) else f"{len(captions)} captions"
        raise InputError(f"caption anchors need one caption per pool image ({len(pool)}), got {got}")
    bad = [i for i, c in enumerate(captions) if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"pool image(s) {[pool.items[i] for i in bad[:5]]} have an empty caption")
    caps = [c.strip() for c in captions]
    txt = _encode_texts(model, caps, [f"pool image {it}" for it in pool.items], batch_size)
    v = pool.n_views
    img = pool.embeds.reshape(-1, pool.dim).float()
    rep = [c for c in caps for _ in range(v)]
    items = [f"{it}#view{j}" for it in pool.items for j in range(v)]
    return AnchorSet(F.normalize(img, dim=-1), txt.repeat_interleave(v, dim=0), _groups_of(rep), rep, items,
                     {"source": "pool captions"})


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------


def class_similarity(class_text: torch.Tensor, pairs: AnchorSet, by: str = "image") -> torch.Tensor:
    """Cosine ``[C, N]`` between class prompt embeddings ``[C, D]`` and the pool's images, captions, or their mean."""
    if by not in RETRIEVE_BY:
        raise InputError(f"retrieve_by must be one of {RETRIEVE_BY}, got {by!r}")
    q = F.normalize(class_text.float(), dim=-1).to(pairs.image_embeds.device)
    s_img = q @ pairs.image_embeds.T
    s_txt = q @ pairs.text_embeds.T
    return s_img if by == "image" else s_txt if by == "text" else 0.5 * (s_img + s_txt)


def select_top_k(scores: torch.Tensor, class_names: Sequence[str], k: int, min_similarity: float) -> list[list[int]]:
    """Per class (row of `scores` ``[C, N]``) the indices of its ``k`` best pairs with score >= `min_similarity`,
    best first (ties: lower index). `InputError` naming every class that gets none."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    picked: list[list[int]] = []
    empty: list[str] = []
    for c, row in enumerate(scores):
        order = sorted(range(row.numel()), key=lambda j: (-float(row[j]), j))
        keep = [j for j in order if float(row[j]) >= min_similarity][:k]
        if not keep:
            empty.append(f"{class_names[c]!r} (best {float(row.max()):.3f})")
        picked.append(keep)
    if empty:
        raise InputError(f"the pair pool has no pair with similarity >= {min_similarity} for class(es) "
                         f"{', '.join(empty[:8])}: add pairs for them or lower min_similarity")
    return picked


def retrieve_pairs(model: EdgeClip, pairs: AnchorSet, class_names: Sequence[str], *, k: int = 8,
                   min_similarity: float = 0.2, by: str = "image", template: str = DEFAULT_TEMPLATE) -> AnchorSet:
    """Image-text-pair anchors: the pairs of `pairs` most similar to `class_names` (prompted with `template`,
    through the frozen text encoder); see `select_top_k`. The result's ``meta["retrieval"]`` records, per class,
    the chosen pool rows and their scores."""
    names = validate_class_names(class_names)
    validate_template(template)
    if not isinstance(pairs, AnchorSet):
        raise InputError(f"retrieve_pairs needs an AnchorSet (encode_pairs / AnchorSet.from_tensors), got "
                         f"{type(pairs).__name__}")
    if pairs.dim != model.bundle.embed_dim:
        raise InputError(f"the pair pool has width {pairs.dim}, the bundle embeds to {model.bundle.embed_dim}")
    with torch.no_grad():
        query = F.normalize(model.encode_text([template.format(c) for c in names]).float().cpu(), dim=-1)
    scores = class_similarity(query, pairs, by)
    picked = select_top_k(scores, names, k, min_similarity)
    rows = sorted({j for p in picked for j in p})
    out = pairs.subset(rows)
    out.meta = {**pairs.meta, "retrieval": {
        "k": k, "min_similarity": min_similarity, "by": by, "template": template, "pool_size": len(pairs),
        "per_class": {n: {"rows": p, "scores": [round(float(scores[c, j]), 6) for j in p]}
                      for c, (n, p) in enumerate(zip(names, picked, strict=True))}}}
    log.info("retrieved %d anchor pairs from a pool of %d for %d classes (k=%d, by %s)", len(rows), len(pairs),
             len(names), k, by)
    return out
