"""CLAP's rehearsal memory and exemplar selection (random, entropy, variance, energy), one score per image.

The memory holds a bounded number of exemplars per seen class as cached image embeddings (a few views each,
``embeds [K, V, D]`` with ``valid [K, V]`` marking the views an exemplar really has), never pixels, so it costs
``K·V·D`` floats on the device. After every task it is rebuilt class by class: each class keeps
``per_class_quota(...)`` exemplars, chosen from its old exemplars and (for a new class) the task's images.

Scores come from the model's Monte-Carlo logits ``[M, B, C]`` (M samples, B images) and are computed **per
image** from that image's own M samples. The official code (srvCodes/clap4clip, ``dataset/exemplars_selection.py``)
collects ``[M, B, C]`` batches sample-major and then reshapes them image-major (``reshape(N, M, -1)``), so its
variance and energy selectors score mixtures of different images' samples; edgeclip does not.

Which end of each score is kept follows the official selectors: entropy keeps the most uncertain images (highest
entropy of the MC-mean softmax), variance the least variable (lowest summed variance of the softmax over the
samples), energy the lowest mean ``logsumexp`` over classes (the highest energy); random keeps a random subset of
a new class and the first exemplars (in kept order) of an old one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeclip.errors import InputError

__all__ = ["SELECTORS", "RehearsalMemory", "energy_scores", "entropy_scores", "per_class_quota",
           "selection_order", "variance_scores"]

#: The exemplar selectors (``CLAPConfig.selector``).
SELECTORS = ("random", "entropy", "variance", "energy")


def _check_mc(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise InputError(f"MC logits must be a tensor [M, B, C], got "
                         f"{list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")


def entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """``[B]``: entropy of the softmax of each image's MC-averaged logits (``logits [M, B, C]``)."""
    _check_mc(logits)
    p = logits.float().mean(0).softmax(-1)
    return torch.special.entr(p).sum(-1)


def variance_scores(logits: torch.Tensor) -> torch.Tensor:
    """``[B]``: per image, the variance over its own M samples of the softmax, summed over classes."""
    _check_mc(logits)
    p = logits.float().softmax(-1)
    if p.shape[0] < 2:
        return torch.zeros(p.shape[1])
    return p.var(0).sum(-1)


def energy_scores(logits: torch.Tensor) -> torch.Tensor:
    """``[B]``: per image, the mean over its own M samples of ``logsumexp`` over classes (the negative energy)."""
    _check_mc(logits)
    return torch.logsumexp(logits.float(), dim=-1).mean(0)


def selection_order(selector: str, logits: torch.Tensor | None, n: int, generator: torch.Generator,
                    *, keep_order: bool = False) -> torch.Tensor:
    """The order ``[n]`` in which a class's `n` candidates are kept (best first) by `selector`.

    `logits` are the candidates' MC logits ``[M, n, C]`` (unused by ``random``). ``random`` with `keep_order`
    keeps the candidates in their given order (an old class's exemplars, already in kept order)."""
    if selector not in SELECTORS:
        raise InputError(f"selector must be one of {SELECTORS}, got {selector!r}")
    if selector == "random":
        return torch.arange(n) if keep_order else torch.randperm(n, generator=generator)
    if logits is None or logits.shape[1] != n:
        raise InputError(f"selector {selector!r} needs MC logits for all {n} candidates")
    if selector == "entropy":
        return torch.argsort(entropy_scores(logits), descending=True, stable=True)
    if selector == "variance":
        return torch.argsort(variance_scores(logits), stable=True)
    return torch.argsort(energy_scores(logits), stable=True)


def per_class_quota(n_classes: int, per_class: int, total: int | None) -> int:
    """Exemplars kept per class: ``per_class``, capped at ``total // n_classes`` when a total bound is set."""
    if n_classes < 1:
        return 0
    return per_class if total is None else min(per_class, total // n_classes)


@dataclass
class RehearsalMemory:
    """Exemplars as embeddings: ``embeds [K, V, D]`` (float32), ``valid [K, V]`` (bool), ``labels [K]`` (int64,
    global class index), in kept order within each class."""

    embeds: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def empty(cls, views: int, dim: int) -> RehearsalMemory:
        return cls(torch.zeros(0, views, dim), torch.zeros(0, views, dtype=torch.bool),
                   torch.zeros(0, dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def counts(self, n_classes: int) -> torch.Tensor:
        """Exemplars per class ``[n_classes]``."""
        return torch.bincount(self.labels, minlength=n_classes)

    def of_class(self, c: int) -> torch.Tensor:
        """Row indices of class `c`, in kept order."""
        return torch.nonzero(self.labels == c).flatten()
