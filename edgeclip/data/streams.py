"""The procedural streams every accuracy figure is measured on, and the one methods may be tuned on.

* held-out evaluation: ``make_batch(n, seed=EVAL_SEED, shift=s)`` — the micro model's own evaluation images
  (the same scenes under every shift). Never used for training or tuning.
* validation: ``make_batch(n, seed=VALIDATION_SEED, shift=s)`` — a disjoint stream for choosing
  hyper-parameters (PromptSync's λ_a, λ_d, τ and learning rates).
* class-imbalanced: a stream where a few classes dominate (PromptSync's motivation), drawn from the
  held-out seed space with its own offset.

Training batches come from ``SeedSequence(seed, spawn_key=(TRAIN_STREAM, step))``, which no integer seed here
can reproduce, so the streams are disjoint from training and from each other.
"""

from __future__ import annotations

import numpy as np

from edgeclip.data.shapes import ShapesBatch, make_batch
from edgeclip.micro.train import EVAL_SEED

__all__ = ["EVAL_SEED", "IMBALANCED_SEED", "VALIDATION_SEED", "held_out", "imbalanced", "validation"]

VALIDATION_SEED = 30_000
IMBALANCED_SEED = EVAL_SEED + 1


def held_out(shift: str, n: int, classes: str = "colour-shape") -> ShapesBatch:
    """The held-out evaluation images of one shift (never tuned on), labelled in the class set `classes`."""
    return make_batch(n, seed=EVAL_SEED, shift=shift, classes=classes)


def validation(shift: str, n: int, classes: str = "colour-shape") -> ShapesBatch:
    """The validation images of one shift (for choosing hyper-parameters), labelled in the class set `classes`."""
    return make_batch(n, seed=VALIDATION_SEED, shift=shift, classes=classes)


def imbalanced(shift: str, n: int, *, n_classes: int = 16, head: int = 2, head_share: float = 0.6,
               seed: int = IMBALANCED_SEED) -> ShapesBatch:
    """A held-out stream where `head` classes together take `head_share` of the frames and the other
    classes share the rest equally; frames in random order."""
    rng = np.random.default_rng(seed)
    head_classes = rng.choice(n_classes, size=head, replace=False)
    p = np.full(n_classes, (1.0 - head_share) / (n_classes - head))
    p[head_classes] = head_share / head
    labels = rng.choice(n_classes, size=n, p=p)
    return make_batch(n, seed=seed, shift=shift, labels=labels)
