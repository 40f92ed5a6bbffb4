"""CoOp — context optimisation (Zhou et al., IJCV 2022): learn the prompt context from labelled images.

The supervised prompt learner that pseudo-label prompt tuning (FPL / IFPL / GRIP) and SHIP's prompt stage
build on, and the first `Trainable` method: ``fit`` trains context vectors shared by all classes
(``"{ctx} {class}."``) with cross-entropy on ``scale · cos(image, text(ctx))`` over a labelled `FeaturePool`
— cached image embeddings, so an epoch costs text-tower work only (the encoders stay frozen). Every view in
the pool is a training sample. SGD with momentum, a linear warm-up from lr/10 (never 0) then a cosine
schedule over the remaining steps; a non-finite loss is skipped and counted. With a validation pool the
context of the epoch with the best validation accuracy is kept (ties: the earlier epoch), else the last.

Prediction is zero-shot with the learnt context: the class text embeddings are computed once per fit or
load by the exported text encoder (no gradient needed) and every image is scored by scaled cosine.
The learnt context is saved as a head (`save_head`) and loaded with ``create_method("coop", model, names,
head=path)`` or ``edgeclip classify --method coop --head FILE``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.errors import ClassNameError, InputError
from edgeclip.runtime.methods.base import FitReport, Trainable
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.prompt_training import OptimSettings, lr_at, train_context
from edgeclip.runtime.methods.zeroshot import image_logits, predict_with_text
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.pool_sources import norm_name
from edgeclip.runtime.prediction import Prediction

__all__ = ["CoOp", "CoOpConfig", "ContextHead", "pool_labels_for"]


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp's settings (the paper's optimiser; fewer epochs, since the features are cached)."""

    # words whose token embeddings start the context (their count is the context length); None = random
    init: str | None = "a photo of a"
    # context length for a random start (init=None); CoOp: 16
    n_ctx: int = 16
    # standard deviation of a random start (CoOp: 0.02)
    init_std: float = 0.02
    # passes over the training pool
    epochs: int = 50
    # samples (pool views) per step
    batch_size: int = 32
    # SGD learning rate after warm-up (CoOp: 2e-3)
    lr: float = 2e-3
    # SGD momentum
    momentum: float = 0.9
    # SGD weight decay (CoOp: 5e-4)
    weight_decay: float = 5e-4
    # linear warm-up epochs from lr/10 to lr (never a step at lr 0)
    warmup_epochs: int = 1
    # seed of the random start and of the shuffling
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            raise InputError(f"init must be words or None (a random start), got {self.init!r}")
        check_positive_int("n_ctx", self.n_ctx)
        check_finite("init_std", self.init_std, strict=True)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_finite("lr", self.lr, strict=True)
        check_finite("momentum", self.momentum)
        check_finite("weight_decay", self.weight_decay)
        check_positive_int("warmup_epochs", self.warmup_epochs, minimum=0)
        check_positive_int("seed", self.seed, minimum=0)


def pool_labels_for(pool: Any, class_names: Sequence[str], what: str = "the feature pool") -> torch.Tensor:
    """A labelled pool's labels ``[M]`` re-indexed into `class_names` (matched case- and space-insensitively);
    `ClassNameError` for a pool class the method does not know."""
    if not getattr(pool, "is_labelled", False):
        raise InputError(f"{what} must be labelled (a folder with one sub-folder per class, a spec, or labels=)")
    index = {norm_name(c): i for i, c in enumerate(class_names)}
    unknown = [c for c in pool.class_names if norm_name(c) not in index]
    if unknown:
        raise ClassNameError(f"{what} has classes {unknown[:8]} that are not among the method's classes")
    remap = torch.tensor([index[norm_name(c)] for c in pool.class_names], dtype=torch.int64)
    return remap[pool.labels]


def optim_settings(cfg: Any) -> OptimSettings:
    """The optimiser settings of a config with CoOp's fields (epochs, batch_size, lr, momentum, ...)."""
    return OptimSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs,
                         cfg.seed)


#: the warm-up cosine schedule (kept under its old name)
_lr_at = lr_at


class ContextHead:
    """What a method whose learnt state is one prompt context shares (CoOp, pseudo-label tuning, SHIP): the class
    text embeddings under the context by the exported text encoder (cached until the context changes), the state
    ``{"ctx", "fitted"}``, reset to the initial context, and zero-shot prediction with the context. The class
    sets ``prompt`` (a `PromptContext`), ``fitted`` and ``_text``."""

    def text_embeds(self) -> torch.Tensor:
        """Class text embeddings ``[C, D]`` under the current context, by the exported text encoder (cached)."""
        if self._text is None:
            with torch.no_grad():
                tokens, eot = self.prompt.build(self.class_names)
                self._text = F.normalize(self.model.text_encoder(tokens.detach(), eot).float(), dim=-1)
        return self._text

    # -- state ---------------------------------------------------------------------------------------------
    def _adapted_state(self) -> dict[str, Any]:
        return {"ctx": self.prompt.ctx.detach(), "fitted": self.fitted}

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        ctx = state.get("ctx")
        if not isinstance(ctx, torch.Tensor) or ctx.shape != self.prompt.ctx.shape:
            got = list(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
            raise InputError(f"{self.name} state: ctx must be {list(self.prompt.ctx.shape)}, got {got}")
        if not bool(torch.isfinite(ctx).all()):
            raise InputError(f"{self.name} state: ctx contains NaN or Inf")
        with torch.no_grad():
            self.prompt.ctx.copy_(ctx)
        self.fitted = bool(state.get("fitted", True))
        self._text = None

    def _reset_adapted(self) -> None:
        self.prompt.reset()
        self.fitted = False
        self._text = None

    def _predict(self, images: Any) -> Prediction:
        pred = predict_with_text(self.model, images, self.text_embeds(), self.class_names, self.name)
        pred.info["fitted"] = self.fitted
        self.frames_seen += len(pred.labels)
        return pred


class CoOp(ContextHead, Trainable):
    """Prompt context learnt from labelled images (see the module docstring)."""

    name = "coop"
    config_class = CoOpConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: CoOpConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        cfg = self.config
        self.tower = model.text_tower
        self.tower.requires_grad_(False)
        if cfg.init is None:
            g = torch.Generator().manual_seed(cfg.seed)
            init: str | torch.Tensor = torch.randn(cfg.n_ctx, self.tower.width, generator=g) * cfg.init_std
        else:
            init = cfg.init
        self.prompt = model.prompt_context(init)
        self.shared_prefix = self.tower.supports_shared_prefix()
        self.fitted = False
        self._text: torch.Tensor | None = None

    # -- text ----------------------------------------------------------------------------------------------
    def _train_text(self) -> torch.Tensor:
        """Class text embeddings ``[C, D]`` through the differentiable tower (gradient reaches the context)."""
        if self.shared_prefix:
            prefix, rest, eot = self.prompt.build_split(self.class_names)
            return self.tower.forward_shared_prefix(prefix, rest, eot).float()
        tokens, eot = self.prompt.build(self.class_names)
        return self.tower(tokens, eot).float()

    # -- fit ------------------------------------------------------------------------------------------------
    def _accuracy(self, embeds: torch.Tensor, labels: torch.Tensor) -> float:
        with torch.no_grad():
            logits = image_logits(self.model, embeds.to(self.device), self._train_text().detach())
        return float((logits.argmax(dim=1).cpu() == labels).float().mean())

    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        cfg = self.config
        pool.check_compatible(self.model)
        labels = pool_labels_for(pool, self.class_names)
        x = pool.embeds.reshape(-1, pool.dim)  # (M·V, D): every view is a sample
        y = labels.repeat_interleave(pool.n_views)
        val_x = val_y = None
        if val is not None:
            val.check_compatible(self.model)
            val_x, val_y = val.plain, pool_labels_for(val, self.class_names, "the validation pool")
        self._reset_adapted()
        report = FitReport(self.name, cfg.epochs, 0, 0.0, len(pool), 0 if val is None else len(val))
        t0 = time.perf_counter()
        evaluate = None if val_x is None else (lambda: self._accuracy(val_x, val_y))
        step = train_context(self, x, y, optim_settings(cfg), report, evaluate=evaluate, progress=progress,
                             desc="coop")
        report.steps = step
        report.seconds = time.perf_counter() - t0
        report.extra["train_accuracy"] = self._accuracy(pool.plain, labels)
        self.fitted = True
        self._text = None
        return report
