"""Train the micro CLIP from scratch on the procedural shapes dataset (clean domain only), on a CPU.

The model is ``open_clip.create_model(MICRO_MODEL_NAME)`` (random init, nothing downloaded) with the
standard CLIP BPE tokenizer. Batches are rendered on the fly; the loss is the symmetric CLIP contrastive
loss; the optimiser AdamW with linear warm-up and cosine decay. The checkpoint is a plain state dict that
``open_clip.create_model(MICRO_MODEL_NAME, pretrained=path)`` loads.

Seeds. Training batch ``step`` is rendered from ``SeedSequence(seed, spawn_key=(TRAIN_STREAM, step))``;
evaluation renders ``make_batch(n, seed=EVAL_SEED)`` (an int seed, i.e. ``SeedSequence(10_000)`` with an
empty spawn key). Seed sequences with different spawn keys are independent streams, so no int seed given
to ``make_batch`` reproduces a training batch and training never sees an evaluation image.

Run it as ``python -m edgeclip.micro.train --out DIR``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edgeclip.data.shapes import ZERO_SHOT_TEMPLATE, class_names, make_batch
from edgeclip.errors import InputError
from edgeclip.micro.config import MICRO_MODEL_NAME, register_micro_config

__all__ = [
    "CHECKPOINT_NAME",
    "EVAL_SEED",
    "TRAIN_STREAM",
    "TrainResult",
    "evaluate_zero_shot",
    "preprocess_batch",
    "train_micro",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "edgeclip-micro.pt"
#: Default seed of the held-out evaluation set (ShapesDataset seed; never used for training).
EVAL_SEED = 10_000
#: spawn_key tag of training batches: SeedSequence(seed, spawn_key=(TRAIN_STREAM, step)).
TRAIN_STREAM = 0x7EA1
IMAGE_SIZE = 32


def preprocess_batch(images: np.ndarray | torch.Tensor, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 images ``(N, H, W, 3)`` → normalised float32 pixels ``(N, 3, S, S)`` for the micro CLIP.

    Resizes with torch bicubic interpolation with anti-aliasing (no clamp afterwards), then normalises
    with open_clip's ``OPENAI_DATASET_MEAN`` / ``OPENAI_DATASET_STD``; the runtime preprocesses the same way.

    Raises:
        InputError: not uint8, or not ``(N, H, W, 3)``.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"expected uint8 images (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
    if x.shape[-2:] != (image_size, image_size):
        size = (image_size, image_size)
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _encode_text_truncated(model: torch.nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(text)`` computed on the first ``max(eot)+1`` tokens only.

    The text transformer is causal and pools at the EOT token (the largest id), so later tokens cannot
    change the result; cutting them makes training about 4× cheaper on the text side.
    """
    eot = text.argmax(dim=-1)  # (N,)
    n_tok = int(eot.max()) + 1
    x = model.token_embedding(text[:, :n_tok]) + model.positional_embedding[:n_tok]  # (N, L, W)
    x = model.transformer(x, attn_mask=model.attn_mask[:n_tok, :n_tok])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]  # (N, W)
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj  # (N, D)


def _clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over normalised features: image i and caption i are the positive pair."""
    logits = logit_scale * image @ text.T  # (B, B)
    target = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    n: int = 2048,
    seed: int = EVAL_SEED,
    shift: str = "clean",
    batch_size: int = 256,
    render_size: int = 64,
) -> float:
    """Zero-shot accuracy with the prompts ``"a photo of a {class}."`` on ``n`` images of ``shift``.

    The images are ``make_batch(n, seed=seed, shift=shift, render_size=render_size)``: the default
    ``seed`` (:data:`EVAL_SEED`) is never used for training, and ``edgeclip.micro.build`` evaluates the
    exported bundle on the same images.
    """
    if n < 1 or batch_size < 1:
        raise InputError(f"n and batch_size must be positive, got n={n}, batch_size={batch_size}")
    was_training = model.training
    model.eval()
    prompts = [ZERO_SHOT_TEMPLATE.format(cls=c) for c in class_names()]
    text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)  # (C, D)
    batch = make_batch(n, seed=seed, shift=shift, render_size=render_size)
    correct = 0
    for start in range(0, n, batch_size):
        pixels = preprocess_batch(batch.images[start : start + batch_size])
        feats = F.normalize(model.encode_image(pixels), dim=-1)  # (b, D)
        pred = (feats @ text.T).argmax(dim=-1).numpy()
        correct += int((pred == batch.labels[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / n


@dataclass
class TrainResult:
    """What :func:`train_micro` did.

    Attributes:
        checkpoint: the saved state dict (``out/edgeclip-micro.pt``).
        steps: steps run (including any skipped).
        final_loss: mean contrastive loss over the last ``min(50, steps)`` steps.
        seconds: wall-clock training time (rendering included, final evaluation excluded).
        clean_accuracy: zero-shot accuracy on held-out clean images (``evaluate_zero_shot`` defaults).
        shift_accuracy: zero-shot accuracy per shift in ``eval_shifts``.
        skipped_steps: steps skipped because the loss was NaN or Inf (0 in a healthy run).
    """

    checkpoint: Path
    steps: int
    final_loss: float
    seconds: float
    clean_accuracy: float
    shift_accuracy: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_micro(
    out: str | Path,
    *,
    steps: int = 600,
    batch_size: int = 256,
    seed: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    progress: bool = False,
    log_every: int = 50,
    eval_every: int = 0,
    eval_n: int = 2048,
    eval_shifts: Sequence[str] = (),
    num_threads: int | None = None,
) -> TrainResult:
    """Train the micro CLIP on clean shapes and save ``out/edgeclip-micro.pt``.

    Args:
        out: output directory (created).
        steps: optimiser steps; each sees ``batch_size`` freshly rendered image–caption pairs.
        batch_size: contrastive batch size.
        seed: seeds the model init (``torch.manual_seed``) and the training batches.
        lr: peak learning rate (AdamW), reached after ``warmup`` steps (default 8 % of ``steps``), then
            cosine decay to 0.
        weight_decay: AdamW weight decay on weight matrices.
        progress: show a tqdm progress bar.
        log_every: log the mean loss every this many steps (0: never).
        eval_every: log held-out clean zero-shot accuracy (512 images) every this many steps (0: never).
        eval_n: images in the final held-out evaluation.
        eval_shifts: shifts to evaluate zero-shot after training (results in ``shift_accuracy``).
        num_threads: if given, calls ``torch.set_num_threads`` (a process-wide setting) first.

    Returns:
        A :class:`TrainResult`.
    """
    if steps < 1 or batch_size < 2:
        raise InputError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    out = Path(out)
    warmup = max(1, round(0.08 * steps)) if warmup is None else max(1, warmup)
    register_micro_config()
    torch.manual_seed(seed)
    model = open_clip.create_model(MICRO_MODEL_NAME)
    tokenizer = open_clip.get_tokenizer(MICRO_MODEL_NAME)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "training %s (%.2fM parameters) for %d steps at batch %d, lr %g, seed %d, %d threads",
        MICRO_MODEL_NAME,
        n_params / 1e6,
        steps,
        batch_size,
        lr,
        seed,
        torch.get_num_threads(),
    )

    losses: list[float] = []
    skipped = 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="train micro CLIP", unit="step", disable=not progress)
    for step in bar:
        batch = make_batch(batch_size, seed=np.random.SeedSequence(seed, spawn_key=(TRAIN_STREAM, step)))
        pixels = preprocess_batch(batch.images)
        text = tokenizer(batch.captions)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        image_features = F.normalize(model.encode_image(pixels), dim=-1)
        text_features = F.normalize(_encode_text_truncated(model, text), dim=-1)
        loss = _clip_loss(image_features, text_features, model.logit_scale.exp())
        if not torch.isfinite(loss):  # never let a NaN / Inf step reach the weights
            skipped += 1
            value = loss.detach().item()
            logger.warning("step %d: non-finite loss %s, step skipped (%d so far)", step + 1, value, skipped)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{float(model.logit_scale.detach().exp()):.1f}")
        if log_every and (step + 1) % log_every == 0:
            logger.info(
                "step %d/%d loss %.4f lr %.2e (%.0f s)",
                step + 1,
                steps,
                float(np.mean(losses[-log_every:])),
                opt.param_groups[0]["lr"],
                time.perf_counter() - start,
            )
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            acc = evaluate_zero_shot(model, tokenizer, n=512)
            logger.info("step %d: held-out clean zero-shot accuracy %.3f", step + 1, acc)
    bar.close()
    seconds = time.perf_counter() - start

    model.eval()
    path = out / CHECKPOINT_NAME
    _save_atomic(model.state_dict(), path)
    clean = evaluate_zero_shot(model, tokenizer, n=eval_n)
    shift_acc = {s: evaluate_zero_shot(model, tokenizer, n=eval_n, shift=s) for s in eval_shifts}
    final_loss = float(np.mean(losses[-50:])) if losses else float("nan")
    logger.info(
        "saved %s after %d steps in %.0f s: final loss %.4f, clean zero-shot accuracy %.3f%s",
        path,
        steps,
        seconds,
        final_loss,
        clean,
        "".join(f", {s} {a:.3f}" for s, a in shift_acc.items()),
    )
    return TrainResult(path, steps, final_loss, seconds, clean, shift_acc, skipped)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Command line: ``python -m edgeclip.micro.train --out DIR [--steps N] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--eval-shifts", nargs="*", default=[])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return train_micro(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lr=args.lr,
        progress=not args.no_progress,
        eval_every=args.eval_every,
        eval_shifts=args.eval_shifts,
        num_threads=args.threads,
    )


if __name__ == "__main__":
    main()
