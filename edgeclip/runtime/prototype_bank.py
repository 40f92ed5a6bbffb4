"""A bounded per-class memory of confident test embeddings: evolving prototypes and a TDA-style cache term.

Storage is preallocated as ``keys [C, K, D]``, ``scores [C, K]`` and ``valid [C, K]``: however many frames
are absorbed, the bank holds at most K entries per class and its memory never changes (long streams hold
constant memory, DESIGN.md). Tensors are updated in place, never reallocated.

Replacement rule (TDA's positive cache): an entry comes with a score, lower = more confident (the entropy of
its prediction). A class keeps its K lowest-score entries; while it has a free slot a new entry is stored,
once full a new entry replaces the worst one only if it is strictly better (ties keep the older entry).
Slots of a class are kept sorted, most confident first.

Two readouts:

* :meth:`PrototypeBank.prototypes` — ``normalise(w · prior_c + Σ_{cached} e)``: the prior prototype counts
  as ``w`` pseudo-entries (default ``w = K``, so a full cache and the prior weigh the same); a class with an
  empty cache keeps its prior.
* :meth:`PrototypeBank.affinity_logits` — ``A[n, c] = Σ_{k valid} exp(-β (1 - cos(x_n, key_{c,k})))``, Tip-Adapter's
  and TDA's affinity summed into the class columns (0 for a class with an empty cache).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.errors import InputError

__all__ = ["DEFAULT_BETA", "DEFAULT_CAPACITY", "PrototypeBank"]

log = logging.getLogger(__name__)

#: Entries kept per class by default. Enough for a usable class mean, small enough that a stale early
#: pseudo-label is displaced quickly; the memory is ``C·K·(D·4 + 5)`` bytes (1000 classes, D=512: 16 MB).
DEFAULT_CAPACITY = 8
#: Sharpness of the affinity ``exp(-β(1 - cos))``: Tip-Adapter's initial β (TDA's configs use 5.0 on ImageNet).
DEFAULT_BETA = 5.5


class PrototypeBank:
    """Per-class cache of at most `capacity` confident embeddings of width `dim` (see the module docstring)."""

    def __init__(self, n_classes: int, dim: int, capacity: int = DEFAULT_CAPACITY, *,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        for what, v in (("n_classes", n_classes), ("dim", dim), ("capacity", capacity)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{what} must be a positive int, got {v!r}")
        if not dtype.is_floating_point:
            raise InputError(f"dtype must be floating point, got {dtype}")
        self.n_classes, self.dim, self.capacity = n_classes, dim, capacity
        self.keys = torch.zeros(n_classes, capacity, dim, device=device, dtype=dtype)
        self.scores = torch.full((n_classes, capacity), float("inf"), device=device, dtype=torch.float32)
        self.valid = torch.zeros(n_classes, capacity, device=device, dtype=torch.bool)
        self.offered = 0  # entries given to add()
        self.stored = 0  # of those, entries that went into the cache (they may be displaced later)
        self.skipped = 0  # entries refused for NaN/Inf

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.keys.device

    def counts(self) -> torch.Tensor:
        """Entries held per class, ``[C]`` int64."""
        return self.valid.sum(dim=1)

    def __len__(self) -> int:
        return int(self.valid.sum())

    def state_nbytes(self) -> int:
        """Bytes of the bank's state: fixed at construction (``C·K·D`` keys + ``C·K`` scores and flags)."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.scores, self.valid))

    def reset(self) -> None:
        """Empty every class (in place: the storage is kept)."""
        self.keys.zero_()
        self.scores.fill_(float("inf"))
        self.valid.zero_()
        self.offered = self.stored = self.skipped = 0

    def to(self, device: str | torch.device) -> PrototypeBank:
        """Move the storage to `device` (returns self)."""
        self.keys, self.scores, self.valid = (t.to(device) for t in (self.keys, self.scores, self.valid))
        return self

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (clones) that :meth:`load_state_dict` restores."""
        return {"keys": self.keys.clone(), "scores": self.scores.clone(), "valid": self.valid.clone(),
                "counters": (self.offered, self.stored, self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("keys", "scores", "valid"):
            src, dst = state[name], getattr(self, name)
            if src.shape != dst.shape:
                raise InputError(f"bank state {name} has shape {list(src.shape)}, this bank {list(dst.shape)}")
            dst.copy_(src)
        self.offered, self.stored, self.skipped = state.get("counters", (0, 0, 0))

    # -- writing -------------------------------------------------------------------------------------------
    def add(self, embeds: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> int:
        """Offer entries: ``embeds [M, D]`` (normalised here again), ``labels [M]`` class indices, ``scores [M]``
        (lower = more confident). Returns how many were stored. Rows with NaN/Inf are skipped and counted
        in ``self.skipped``.
        """
        if embeds.dim() != 2 or embeds.shape[1] != self.dim:
            raise InputError(f"bank.add needs embeds [M, {self.dim}], got {list(embeds.shape)}")
        m = embeds.shape[0]
        labels = torch.as_tensor(labels).reshape(-1)
        scores = torch.as_tensor(scores).reshape(-1)
        if labels.shape != (m,) or scores.shape != (m,):
            raise InputError(f"bank.add needs labels [{m}] and scores [{m}], got {list(labels.shape)} and "
                             f"{list(scores.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputError(f"bank.add labels must be integers, got {labels.dtype}")
        if m and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
            raise InputError(f"bank.add labels must lie in [0, {self.n_classes}), got "
                             f"{int(labels.min())}..{int(labels.max())}")
        self.offered += m
        embeds = embeds.detach().to(self.device, self.keys.dtype)
        labels, scores = labels.to(self.device, torch.int64), scores.detach().to(self.device, torch.float32)
        ok = torch.isfinite(embeds).all(dim=1) & torch.isfinite(scores) & (embeds.norm(dim=1) > 0)
        if not bool(ok.all()):
            n_bad = int((~ok).sum())
            self.skipped += n_bad
            log.debug("bank.add: skipped %d entries with NaN/Inf or zero embeddings", n_bad)
            embeds, labels, scores = embeds[ok], labels[ok], scores[ok]
        if embeds.shape[0] == 0:
            return 0
        embeds = F.normalize(embeds, dim=1)
        stored = 0
        for c in labels.unique().tolist():
            new = labels == c
            have = self.valid[c]
            cand_keys = torch.cat([self.keys[c][have], embeds[new]])
            cand_scores = torch.cat([self.scores[c][have], scores[new]])
            n_old = int(have.sum())
            order = torch.sort(cand_scores, stable=True).indices[: self.capacity]  # ties: older entries first
            n = order.numel()
            self.keys[c, :n] = cand_keys[order]
            self.scores[c, :n] = cand_scores[order]
            self.valid[c, :n] = True
            self.keys[c, n:] = 0
            self.scores[c, n:] = float("inf")
            self.valid[c, n:] = False
            stored += int((order >= n_old).sum())
        self.stored += stored
        return stored

    # -- reading -------------------------------------------------------------------------------------------
    def prototypes(self, prior: torch.Tensor | None = None, prior_weight: float | None = None) -> torch.Tensor:
        """Per-class prototypes ``[C, D]``: ``normalise(w · prior_c + Σ_{cached} e)`` with ``w = prior_weight``
        (default: the capacity K). A class with an empty cache gets its prior; with no prior, it gets a zero row
        (the only rows that are not unit vectors)."""
        total = (self.keys * self.valid.unsqueeze(-1)).sum(dim=1)  # [C, D]
        if prior is None:
            return torch.where(self.counts().unsqueeze(1) > 0, F.normalize(total, dim=1), total)
        if prior.shape != (self.n_classes, self.dim):
            raise InputError(f"prior prototypes must be [{self.n_classes}, {self.dim}], got {list(prior.shape)}")
        if not bool(torch.isfinite(prior).all()):
            raise InputError("prior prototypes contain NaN or Inf")
        w = float(self.capacity if prior_weight is None else prior_weight)
        if not w > 0:
            raise InputError(f"prior_weight must be > 0, got {prior_weight}")
        prior = F.normalize(prior.detach().to(self.device, self.keys.dtype), dim=1)
        return F.normalize(w * prior + total, dim=1)

    def affinity_logits(self, embeds: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
        """TDA's cache logits ``[N, C]`` for ``embeds [N, D]``: ``Σ_k exp(-β (1 - cos(x, key_{c,k})))`` over each
        class's cached entries (0 for a class with an empty cache)."""
        if embeds.dim() != 2 or embeds.shape[1] != self.dim:
            raise InputError(f"affinity_logits needs embeds [N, {self.dim}], got {list(embeds.shape)}")
        q = F.normalize(embeds.to(self.device, self.keys.dtype), dim=1)
        cos = torch.einsum("nd,ckd->nck", q, self.keys)
        return (torch.exp(-beta * (1.0 - cos)) * self.valid).sum(dim=-1)
