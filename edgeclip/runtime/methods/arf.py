"""ARF — anchor-based robust fine-tuning (Han et al., CVPR 2024), device mode, with its baselines.

ARF fine-tunes CLIP on a downstream task without losing robustness to domain shift or zero-shot accuracy on
classes outside the fine-tune set: beside the FLYP-style fine-tune loss it keeps two kinds of *anchors* (image-
text pairs with rich text) aligned, so the adapted image space stays in register with CLIP's text space.
The anchor data and every loss live in `edgeclip.runtime.methods.arf_anchors` (pure functions on embeddings).

**Device mode** (this class, ``create_method("arf", model, class_names)``). Both encoders stay frozen; training
runs on a labelled `FeaturePool` (cached image embeddings, every view a sample). What is learnt:

* the prompt context ``ctx`` in ``"{ctx} {class}."`` (CoOp's `PromptContext`, started from the words
  ``init`` = "a photo of a"), through the differentiable frozen text tower;
* a residual linear adapter on the (L2-normalised) image embedding, ``a(x) = x + W x + b``, with W and b
  started at zero, so the untrained head is exactly zero-shot CLIP with the prompt "a photo of a {class}.".

The loss of one step, on a batch of B fine-tune samples and (when their weight is not 0) a batch of each kind of
anchors, all image sides through the adapter::

    L = L_ft + lambda_tc · L_tc + lambda_it · L_it
    L_ft = flyp_loss(a(x), text(ctx, task classes), y)          images vs "{ctx} {class}." of the batch's classes
    L_tc = anchor_loss(a(x_tc), t_tc, caption groups)           fine-tune images vs their rich captions (fixed)
    L_it = anchor_loss(a(x_it), t_it, caption groups)           retrieved pool pairs (fixed captions)

Anchor texts go through the frozen text encoder once and are fixed targets (in device mode nothing could move
them). Text-compensated anchors (``captions=``): a caption JSONL (`read_caption_file`, encoded by
`encode_pairs`), one caption per pool image (e.g. `ShapesBatch.captions`; every view of the image is paired
with it), or a ready `AnchorSet`. Image-text-pair anchors (``pairs=``): a JSONL pool or an `AnchorSet`
(`AnchorSet.from_tensors` for embeddings in memory), from which `retrieve_pairs` takes the ``retrieval_k``
pairs most similar to each of the task's classes (the classes the training pool holds), through the frozen
encoders. The method's class list may hold classes that are not in the training pool (held-out classes): the
fine-tune loss never uses them, and prediction scores every class with the learnt context and adapter.

**Baselines** in the same API: zero-shot = the unfitted head (or ``create_method("zeroshot", ...)``, which it
equals); plain fine-tuning = ``lambda_tc=0, lambda_it=0`` (no anchor data needed); WiSE-FT (Wortsman et al.,
2022) = ``wise_alpha=0.5`` (applied at the end of `fit`) or `ARF.interpolated` / `wise_interpolate`: the learnt
tensors interpolated with their zero-shot values, ``(1 − α)·θ_zs + α·θ_ft``. Since the zero-shot values are an
exact zero-shot head (W = 0, b = 0, ctx = the words' embeddings), α = 0 gives zero-shot predictions and α = 1
the fine-tuned ones, exactly.

**Workstation mode** (fine-tuning the image encoder from the open_clip checkpoint, then re-exporting a bundle)
is not this class; it reuses `arf_anchors`' losses and `wise_interpolate` on the encoder's weights.

Optimisation: AdamW (context: ``lr``, no weight decay; adapter: ``adapter_lr`` with ``adapter_weight_decay``,
which pulls it back towards the identity), a linear warm-up from lr/10 then a cosine schedule (`lr_at`); a
non-finite loss is skipped and counted; with a validation pool the epoch with the best validation accuracy is
kept (ties: the earlier), else the last. The head (context + adapter) is saved with `save_head` and loaded with
``create_method("arf", model, names, head=path)``; a head from another bundle or class list is refused.

Choices that are ours (the paper has no code): the device-mode parametrisation (shared context + zero-started
residual adapter; no class prototypes, since a held-out class has none and they would break zero-shot
transfer); the loss weights (1 and 1) and that each term is an average over its batch; anchor batches drawn
independently of the fine-tune batch (``anchor_batch_size`` rows without replacement per step); the duplicate
handling, the fixed temperature and the retrieval rule of `arf_anchors`; AdamW and the schedule above; WiSE-FT
applied to the head's tensors instead of the encoder's weights.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import InputError
from edgeclip.runtime.classnames import validate_class_names, validate_template
from edgeclip.runtime.methods.arf_anchors import (
    RETRIEVE_BY,
    AnchorSet,
    anchor_loss,
    caption_anchors_for_pool,
    encode_pairs,
    flyp_loss,
    retrieve_pairs,
)
from edgeclip.runtime.methods.base import FitReport, Trainable
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.coop import ContextHead, pool_labels_for
from edgeclip.runtime.methods.prompt_training import finite_step, lr_at
from edgeclip.runtime.methods.zeroshot import image_logits
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip
from edgeclip.runtime.prediction import Prediction

__all__ = ["ARF", "ARFConfig", "ResidualAdapter", "wise_interpolate"]

log = logging.getLogger(__name__)

#: the modes this class runs (workstation mode fine-tunes the encoder elsewhere)
ARF_MODES = ("device",)

AnchorBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(image embeds [B, D], text embeds [B, D], caption groups [B])``"""


@dataclass(frozen=True)
class ARFConfig:
    """ARF's device-mode settings (ours where the paper is silent; see the module docstring)."""

    # "device": frozen encoders, learn context + adapter on cached features (workstation mode is not this class)
    mode: str = "device"
    # words whose token embeddings start the context; the untrained head is zero-shot "{init} {class}."
    init: str = "a photo of a"
    # the prompt of the retrieval queries, "{}" where the class name goes
    template: str = DEFAULT_TEMPLATE
    # learn the prompt context
    train_context: bool = True
    # learn the residual image adapter
    train_adapter: bool = True
    # weight of the text-compensated anchor loss (0: no caption anchors; with lambda_it = 0 plain fine-tuning)
    lambda_tc: float = 1.0
    # weight of the image-text-pair anchor loss (0: no retrieved anchors)
    lambda_it: float = 1.0
    # passes over the training pool
    epochs: int = 10
    # fine-tune samples (pool views) per step
    batch_size: int = 32
    # anchors of each kind per step (drawn without replacement, at most all of them)
    anchor_batch_size: int = 32
    # AdamW learning rate of the context after warm-up
    lr: float = 2e-3
    # AdamW learning rate of the adapter after warm-up
    adapter_lr: float = 1e-3
    # AdamW weight decay of the adapter (towards W = 0, b = 0: the zero-shot head); the context has none
    adapter_weight_decay: float = 0.01
    # linear warm-up epochs from lr/10 to lr
    warmup_epochs: int = 1
    # WiSE-FT: after fit, interpolate the learnt tensors with their zero-shot values by this α; None = off
    wise_alpha: float | None = None
    # image-text pairs retrieved per task class from the pair pool
    retrieval_k: int = 8
    # the least cosine similarity a pool pair needs to be retrieved for a class (model-dependent)
    min_similarity: float = 0.2
    # what a pool pair is scored by against a class prompt: "image", "text" (its caption) or "both" (mean)
    retrieve_by: str = "image"
    # seed of the shuffling and of the anchor batches
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode == "workstation":
            raise InputError("ARF's workstation mode (fine-tuning the image encoder, then re-exporting a bundle) "
                             "is not this method; the device method takes mode='device'")
        if self.mode not in ARF_MODES:
            raise InputError(f"mode must be one of {ARF_MODES}, got {self.mode!r}")
        if not isinstance(self.init, str) or not self.init.strip():
            raise InputError(f"init must be words, got {self.init!r}")
        validate_template(self.template)
        for name in ("train_context", "train_adapter"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (self.train_context or self.train_adapter):
            raise InputError("ARF needs something to learn: train_context or train_adapter (or both)")
        for name in ("lambda_tc", "lambda_it", "adapter_weight_decay"):
            check_finite(name, getattr(self, name))
        for name in ("lr", "adapter_lr"):
            check_finite(name, getattr(self, name), strict=True)
        for name in ("epochs", "batch_size", "anchor_batch_size", "retrieval_k"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("warmup_epochs", self.warmup_epochs, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)
        if self.wise_alpha is not None:
            check_finite("wise_alpha", self.wise_alpha)
            if self.wise_alpha > 1.0:
                raise InputError(f"wise_alpha must lie in [0, 1], got {self.wise_alpha}")
        check_finite("min_similarity", self.min_similarity, minimum=-1.0)
        if self.retrieve_by not in RETRIEVE_BY:
            raise InputError(f"retrieve_by must be one of {RETRIEVE_BY}, got {self.retrieve_by!r}")


class ResidualAdapter(nn.Module):
    """``a(x) = x + W x + b`` on image embeddings ``[..., D]``; W and b start at zero (the identity)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.linear(x, self.weight, self.bias)

    def reset(self) -> None:
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()


def wise_interpolate(zero_shot: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor],
                     alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 − α)·θ_zs + α·θ_ft`` per tensor (same keys and shapes); exact at α = 0 and α = 1."""
    check_finite("alpha", alpha)
    if alpha > 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    if set(zero_shot) != set(fine_tuned):
        raise InputError(f"WiSE-FT needs the same tensors on both sides, got {sorted(zero_shot)} and "
                         f"{sorted(fine_tuned)}")
    out = {}
    for k, a in zero_shot.items():
        b = fine_tuned[k]
        if a.shape != b.shape:
            raise InputError(f"WiSE-FT: {k} is {list(a.shape)} zero-shot but {list(b.shape)} fine-tuned")
        out[k] = (1.0 - alpha) * a.detach() + alpha * b.detach().to(a.device, a.dtype)
    return out


class ARF(ContextHead, Trainable):
    """ARF in device mode: a learnt prompt context and residual image adapter (see the module docstring)."""

    name = "arf"
    config_class = ARFConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: ARFConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        self.tower = model.text_tower
        self.tower.requires_grad_(False)
        self.prompt = model.prompt_context(self.config.init)
        self.adapter = ResidualAdapter(model.bundle.embed_dim).to(self.device)
        self.shared_prefix = self.tower.supports_shared_prefix()
        self.scale = float(model.logit_scale)
        self.fitted = False
        self._text: torch.Tensor | None = None

    # -- features ------------------------------------------------------------------------------------------
    def image_features(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, D]`` (any norm) → the adapted features the head scores: ``a(x / ‖x‖)``."""
        return self.adapter(F.normalize(image_embeds.to(self.device).float(), dim=-1))

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits ``[B, C]`` of image embeddings ``[B, D]`` (e.g. a pool's ``plain``) over the
        method's classes, with the current context and adapter."""
        with torch.no_grad():
            return image_logits(self.model, self.image_features(image_embeds), self.text_embeds())

    def text_embeds_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """Normalised class text embeddings ``[K, D]`` under the learnt context for any class names (e.g. classes
        the head was not created with), by the exported text encoder."""
        names = validate_class_names(class_names)
        with torch.no_grad():
            tokens, eot = self.prompt.build(names)
            return F.normalize(self.model.text_encoder(tokens.detach(), eot).float(), dim=-1)

    def logits_for(self, image_embeds: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """As `logits`, over `class_names` instead of the method's classes."""
        with torch.no_grad():
            return image_logits(self.model, self.image_features(image_embeds), self.text_embeds_for(class_names))

    def _train_text(self, class_names: Sequence[str]) -> torch.Tensor:
        """Class text embeddings ``[K, D]`` through the differentiable tower (gradient reaches the context)."""
        if self.shared_prefix:
            prefix, rest, eot = self.prompt.build_split(class_names)
            return self.tower.forward_shared_prefix(prefix, rest, eot).float()
        tokens, eot = self.prompt.build(class_names)
        return self.tower(tokens, eot).float()

    # -- the loss ------------------------------------------------------------------------------------------
    def objective(self, x: torch.Tensor, labels: torch.Tensor, class_text: torch.Tensor,
                  tc: AnchorBatch | None = None, it: AnchorBatch | None = None) -> tuple[torch.Tensor,
                                                                                        dict[str, float]]:
        """The training loss of one step and its parts (see the module docstring).

        `x` ``[B, D]`` fine-tune image embeddings, `labels` ``[B]`` indexing `class_text` ``[K, D]``; `tc` / `it`
        the anchor batches (required when their weight is above 0, unused at 0). Returns
        ``(L_ft + lambda_tc·L_tc + lambda_it·L_it, {"ft", "tc", "it", "total"})`` (a part that is not computed is
        NaN in the dict).
        """
        cfg = self.config
        ft = flyp_loss(self.image_features(x), class_text, labels.to(self.device), self.scale)
        total = ft
        parts = {"ft": float(ft.detach()), "tc": math.nan, "it": math.nan}
        for key, weight, batch in (("tc", cfg.lambda_tc, tc), ("it", cfg.lambda_it, it)):
            if weight == 0:
                continue
            if batch is None:
                raise InputError(f"lambda_{key} = {weight} needs a batch of {key} anchors")
            img, txt, groups = batch
            term = anchor_loss(self.image_features(img), txt.to(self.device).detach(), groups, self.scale)
            parts[key] = float(term.detach())
            total = total + weight * term
        parts["total"] = float(total.detach())
        return total, parts

    # -- anchors -------------------------------------------------------------------------------------------
    def _caption_anchors(self, captions: Any, pool: Any) -> AnchorSet:
        if isinstance(captions, AnchorSet):
            anchors = captions
        elif isinstance(captions, (str, os.PathLike)):
            anchors = encode_pairs(self.model, Path(captions))
        elif isinstance(captions, Sequence):
            anchors = caption_anchors_for_pool(self.model, pool, list(captions))
        else:
            raise InputError(f"captions must be a caption JSONL file, one caption per pool image or an AnchorSet, "
                             f"got {type(captions).__name__}")
        self._check_width(anchors, "caption anchors")
        return anchors

    def _pair_anchors(self, pairs: Any, task_names: list[str]) -> AnchorSet:
        if isinstance(pairs, (str, os.PathLike)):
            pairs = encode_pairs(self.model, Path(pairs))
        if not isinstance(pairs, AnchorSet):
            raise InputError(f"pairs must be a JSONL pair pool or an AnchorSet, got {type(pairs).__name__}")
        self._check_width(pairs, "the pair pool")
        cfg = self.config
        return retrieve_pairs(self.model, pairs, task_names, k=cfg.retrieval_k, min_similarity=cfg.min_similarity,
                              by=cfg.retrieve_by, template=cfg.template)

    def _check_width(self, anchors: AnchorSet, what: str) -> None:
        if anchors.dim != self.model.bundle.embed_dim:
            raise InputError(f"{what} have width {anchors.dim}, the bundle embeds to {self.model.bundle.embed_dim}: "
                             "they were encoded by another model")

    @staticmethod
    def _draw(anchors: AnchorSet | None, size: int, g: torch.Generator) -> AnchorBatch | None:
        if anchors is None:
            return None
        rows = torch.randperm(len(anchors), generator=g)[: min(size, len(anchors))]
        return anchors.image_embeds[rows], anchors.text_embeds[rows], anchors.groups[rows]

    # -- fit -----------------------------------------------------------------------------------------------
    def fit(self, pool: Any, *, val: Any = None, progress: bool = False, captions: Any = None,
            pairs: Any = None) -> FitReport:
        """Fine-tune on the labelled `pool`; `captions` (text-compensated anchors) are needed when
        ``lambda_tc > 0``, `pairs` (a pool to retrieve image-text-pair anchors from) when ``lambda_it > 0``.
        `val`: a labelled pool for epoch selection."""
        with self._lock:
            return self._fit_arf(pool, val=val, progress=progress, captions=captions, pairs=pairs)

    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        return self._fit_arf(pool, val=val, progress=progress, captions=None, pairs=None)

    def _fit_arf(self, pool: Any, *, val: Any, progress: bool, captions: Any, pairs: Any) -> FitReport:
        cfg = self.config
        if pool is None or not hasattr(pool, "embeds") or not hasattr(pool, "labels"):
            raise InputError(f"arf fits on a labelled FeaturePool (build_feature_pool), got {type(pool).__name__}")
        if len(pool) == 0:
            raise InputError("the training pool holds no images")
        pool.check_compatible(self.model)
        labels = pool_labels_for(pool, self.class_names)
        val_y = None
        if val is not None:
            val.check_compatible(self.model)
            val_y = pool_labels_for(val, self.class_names, "the validation pool")
        task = sorted(set(labels.tolist()))
        task_names = [self.class_names[i] for i in task]
        position = torch.full((len(self.class_names),), -1, dtype=torch.int64)
        position[torch.tensor(task)] = torch.arange(len(task))
        tc = it = None
        if cfg.lambda_tc > 0:
            if captions is None:
                raise InputError(f"lambda_tc = {cfg.lambda_tc} needs captions= (a caption JSONL, one caption per "
                                 "pool image, or an AnchorSet); lambda_tc=0 trains without them")
            tc = self._caption_anchors(captions, pool)
        elif captions is not None:
            log.info("lambda_tc = 0: the captions given are not used")
        if cfg.lambda_it > 0:
            if pairs is None:
                raise InputError(f"lambda_it = {cfg.lambda_it} needs pairs= (a JSONL pool of image-text pairs or an "
                                 "AnchorSet); lambda_it=0 trains without them")
            it = self._pair_anchors(pairs, task_names)
        elif pairs is not None:
            log.info("lambda_it = 0: the pair pool given is not used")

        x = pool.embeds.reshape(-1, pool.dim)
        y = position[labels].repeat_interleave(pool.n_views)
        self._reset_adapted()
        groups: list[dict[str, Any]] = []
        if cfg.train_context:
            groups.append({"params": [self.prompt.ctx], "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": 0.0})
        if cfg.train_adapter:
            groups.append({"params": list(self.adapter.parameters()), "lr": cfg.adapter_lr,
                           "base_lr": cfg.adapter_lr, "weight_decay": cfg.adapter_weight_decay})
        optimizer = torch.optim.AdamW(groups)
        steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_epochs * steps_per_epoch
        g = torch.Generator().manual_seed(cfg.seed)
        report = FitReport(self.name, cfg.epochs, 0, 0.0, len(pool), 0 if val is None else len(val))
        parts_log: list[dict[str, float]] = []
        best: tuple[float, dict[str, Any]] | None = None
        fixed_text = None
        if not cfg.train_context:
            with torch.no_grad():
                fixed_text = self._train_text(task_names).detach()
        t0 = time.perf_counter()
        from tqdm.auto import tqdm

        step = 0
        bar = tqdm(range(cfg.epochs), desc="arf", unit="epoch", disable=not progress)
        for epoch in bar:
            order = torch.randperm(len(y), generator=g)
            sums: dict[str, float] = {"ft": 0.0, "tc": 0.0, "it": 0.0, "total": 0.0}
            n_ok = 0
            for start in range(0, len(y), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, total, warmup, group["base_lr"])
                step += 1
                text = fixed_text if fixed_text is not None else self._train_text(task_names)
                loss, parts = self.objective(x[idx], y[idx], text, self._draw(tc, cfg.anchor_batch_size, g),
                                             self._draw(it, cfg.anchor_batch_size, g))
                if not finite_step(optimizer, loss):
                    report.skipped_steps += 1
                    continue
                n_ok += 1
                for k in sums:
                    sums[k] += 0.0 if math.isnan(parts[k]) else parts[k]
            mean = {k: v / max(1, n_ok) for k, v in sums.items()}
            parts_log.append(mean)
            report.train_loss.append(mean["total"])
            self._text = None
            if val_y is not None:
                acc = self._accuracy(val.plain, val_y)
                report.val_accuracy.append(acc)
                if best is None or acc > best[0]:
                    best = (acc, self._learnt())
                    report.best_epoch = epoch
                bar.set_postfix(loss=f"{mean['total']:.3f}", val=f"{acc:.3f}")
            else:
                bar.set_postfix(loss=f"{mean['total']:.3f}")
        if best is not None:
            self._set_learnt(best[1])
        else:
            report.best_epoch = cfg.epochs - 1
        self.fitted = True
        self._text = None
        if cfg.wise_alpha is not None:
            self._set_learnt(wise_interpolate(self._zero_shot(), self._learnt(), cfg.wise_alpha))
        report.steps = step
        report.seconds = time.perf_counter() - t0
        report.extra.update({
            "task_classes": task_names, "loss_parts": parts_log, "lambda_tc": cfg.lambda_tc,
            "lambda_it": cfg.lambda_it, "wise_alpha": cfg.wise_alpha,
            "n_caption_anchors": 0 if tc is None else len(tc), "n_pair_anchors": 0 if it is None else len(it),
            "retrieval": None if it is None else it.meta.get("retrieval"),
            "train_accuracy": self._accuracy(pool.plain, labels)})
        return report

    def _accuracy(self, embeds: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            logits = image_logits(self.model, self.image_features(embeds),
                                  self._train_text(self.class_names).detach())
        return float((logits.argmax(dim=1).cpu() == labels).float().mean())

    # -- WiSE-FT -------------------------------------------------------------------------------------------
    def _learnt(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.prompt.ctx.detach().clone(), "adapter.weight": self.adapter.weight.detach().clone(),
                "adapter.bias": self.adapter.bias.detach().clone()}

    def _zero_shot(self) -> dict[str, torch.Tensor]:
        return {"ctx": self.prompt.ctx_init.detach().clone(), "adapter.weight": torch.zeros_like(self.adapter.weight),
                "adapter.bias": torch.zeros_like(self.adapter.bias)}

    def _set_learnt(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.prompt.ctx.copy_(tensors["ctx"])
            self.adapter.weight.copy_(tensors["adapter.weight"])
            self.adapter.bias.copy_(tensors["adapter.bias"])
        self._text = None

    def interpolated(self, alpha: float = 0.5) -> ARF:
        """WiSE-FT: a new ARF head whose tensors are ``(1 − α)·zero-shot + α·these`` (this one is unchanged)."""
        with self._lock:
            mixed = wise_interpolate(self._zero_shot(), self._learnt(), alpha)
            fitted = self.fitted
        out = type(self)(self.model, self.class_names, self.config)
        out._set_learnt(mixed)
        out.fitted = fitted
        return out

    # -- state ---------------------------------------------------------------------------------------------
    def _adapted_state(self) -> dict[str, Any]:
        return {"ctx": self.prompt.ctx.detach(), "adapter": {"weight": self.adapter.weight.detach(),
                                                             "bias": self.adapter.bias.detach()},
                "fitted": self.fitted}

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        adapter = state.get("adapter") if isinstance(state, dict) else None
        want = {"ctx": (state.get("ctx") if isinstance(state, dict) else None, self.prompt.ctx),
                "adapter.weight": (adapter.get("weight") if isinstance(adapter, dict) else None, self.adapter.weight),
                "adapter.bias": (adapter.get("bias") if isinstance(adapter, dict) else None, self.adapter.bias)}
        for key, (got, ref) in want.items():
            if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
                shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise InputError(f"{self.name} state: {key} must be {list(ref.shape)}, got {shape}")
            if not bool(torch.isfinite(got).all()):
                raise InputError(f"{self.name} state: {key} contains NaN or Inf")
        self._set_learnt({k: v[0] for k, v in want.items()})
        self.fitted = bool(state.get("fitted", True))

    def _reset_adapted(self) -> None:
        self.prompt.reset()
        self.adapter.reset()
        self.fitted = False
        self._text = None

    # -- predict -------------------------------------------------------------------------------------------
    def _predict(self, images: Any) -> Prediction:
        t0 = time.perf_counter()
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4 and images.shape[-1] in (1, 3, 4):
            images = list(images)
        pixels = self.model.preprocess(images)
        t1 = time.perf_counter()
        with torch.no_grad():
            emb = self.model.image_encoder(pixels)
            t2 = time.perf_counter()
            probs = self.logits(emb).softmax(dim=-1)
        t3 = time.perf_counter()
        self.frames_seen += int(probs.shape[0])
        return Prediction(probs.argmax(dim=-1).cpu(), probs.float().cpu(), self.class_names,
                          {"preprocess": t1 - t0, "image_encoder": t2 - t1, "head": t3 - t2},
                          {"method": self.name, "fitted": self.fitted})
