"""The prompt-context training loop shared by CoOp, pseudo-label prompt tuning and SHIP's prompt stage.

`train_context` runs SGD with momentum on a method's ``prompt.ctx`` over cached image embeddings (a
`FeaturePool`'s rows): per step a shuffled batch, class text embeddings through the differentiable text tower
(``method._train_text()``), cross-entropy on scaled cosine logits (or the caller's loss), a linear warm-up from
lr/10 (never a step at lr 0) then a cosine schedule (`lr_at`). A non-finite loss is skipped and counted. After
every epoch an optional ``evaluate()`` scores the context; the context of the best epoch is kept (ties: the
earlier epoch), else the last. SHIP adds synthetic samples to every batch (``augment``) and scores them with
its own logits (``logits_fn``: its logit scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.runtime.methods.base import FitReport
from edgeclip.runtime.methods.zeroshot import image_logits

__all__ = ["OptimSettings", "finite_step", "lr_at", "train_context"]

#: ``(logits [B, C], batch rows [B]) -> scalar loss``
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``(batch features [B, D], batch labels [B]) -> (features [B', D], labels [B'])``: samples added to a batch
AugmentFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class OptimSettings:
    """What `train_context` needs from a method's config."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    seed: int


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """The learning rate of `step` of `total`: linear from lr/10 to lr over `warmup` steps, then cosine to 0."""
    if step < warmup:
        return lr * (0.1 + 0.9 * step / max(1, warmup))
    t = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * t))


def finite_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """One optimiser step on `loss` — zero the gradients, backward, step — unless the loss is NaN or Inf, which
    never reaches the parameters: then nothing is done and False is returned (the caller counts the skip)."""
    if not bool(torch.isfinite(loss)):
        return False
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return True


def train_context(method: Any, x: torch.Tensor, y: torch.Tensor, opt: OptimSettings, report: FitReport, *,
                  loss_fn: LossFn | None = None, evaluate: Callable[[], float] | None = None,
                  augment: AugmentFn | None = None,
                  logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  progress: bool = False, desc: str = "epochs", leave: bool = True) -> int:
    """Train ``method.prompt.ctx`` on samples `x` ``[N, D]`` with labels `y` ``[N]``; returns the steps taken.

    Appends each epoch's mean loss (and ``evaluate()``, when given) to `report`, counts skipped steps in it and
    sets ``report.best_epoch`` to the kept epoch (counted within this call). The default loss is the mean
    cross-entropy of ``y[rows]``; ``augment`` extends each batch (it goes with the default loss only);
    ``logits_fn(features) -> logits`` replaces the model's scaled cosine logits (it must use
    ``method._train_text()``, so the gradient reaches the context).
    """
    if augment is not None and loss_fn is not None:
        raise ValueError("augment changes the batch, so it goes with the default loss only")
    ctx = method.prompt.ctx
    optimizer = torch.optim.SGD([ctx], lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    steps_per_epoch = math.ceil(len(y) / opt.batch_size)
    total = opt.epochs * steps_per_epoch
    warmup = opt.warmup_epochs * steps_per_epoch
    g = torch.Generator().manual_seed(opt.seed)
    best: tuple[float, torch.Tensor] | None = None
    from tqdm.auto import tqdm

    step = 0
    bar = tqdm(range(opt.epochs), desc=desc, unit="epoch", disable=not progress, leave=leave)
    for epoch in bar:
        order = torch.randperm(len(y), generator=g)
        losses = []
        for start in range(0, len(y), opt.batch_size):
            idx = order[start : start + opt.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, opt.lr)
            step += 1
            xb, yb = x[idx].to(method.device), y[idx].to(method.device)
            if augment is not None:
                xb, yb = augment(xb, yb)
            logits = image_logits(method.model, xb, method._train_text()) if logits_fn is None else logits_fn(xb)
            loss = F.cross_entropy(logits, yb) if loss_fn is None else loss_fn(logits, idx)
            if not finite_step(optimizer, loss):
                report.skipped_steps += 1
                continue
            losses.append(float(loss.detach()))
        report.train_loss.append(sum(losses) / max(1, len(losses)))
        if evaluate is not None:
            acc = evaluate()
            report.val_accuracy.append(acc)
            if best is None or acc > best[0]:
                best = (acc, ctx.detach().clone())
                report.best_epoch = epoch
            bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}", val=f"{acc:.3f}")
        else:
            bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}")
    if best is not None:
        with torch.no_grad():
            ctx.copy_(best[1])
    else:
        report.best_epoch = opt.epochs - 1
    return step
