"""What every classifier and adaptation method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from edgeclip.errors import InputError

#: per-frame uncertainty a method may report in ``info["frames"]``, carried into `Prediction.to_records`
UNCERTAINTY_KEYS = ("energy", "mc_variance", "is_novel")


@dataclass
class Prediction:
    """Labels, probabilities and the time spent in each stage (seconds) for a batch of images.

    A `Session` result also carries its frame's sequence number (``seq``, 0, 1, 2, … in submission order) and
    timestamp, so it lines up with its frame whatever order results arrive in."""

    labels: torch.Tensor  # [B] int64
    probs: torch.Tensor  # [B, C]
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None
    timestamp: float | None = None

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def to_records(self, top_k: int = 3) -> list[dict[str, Any]]:
        """One JSON-friendly dict per image: its label (always ``labels[i]``, which a method may choose other
        than the most probable class — ZERO's vote), that label's probability, and the top-k classes by
        probability with the label first; and the frame's uncertainty when the method gives one
        (`UNCERTAINTY_KEYS` of ``info["frames"][i]``: CLAP's energy, MC variance and novelty flag)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be an integer >= 1, got {top_k!r}")
        k = min(top_k, self.probs.shape[1])
        frames = self.info.get("frames") if isinstance(self.info, dict) else None
        if not isinstance(frames, list) or len(frames) != len(self.labels):
            frames = [{}] * len(self.labels)
        out = []
        for label, row, frame in zip(self.labels.tolist(), self.probs.tolist(), frames, strict=True):
            order = sorted(range(len(row)), key=lambda c, lab=label, r=row: (c != lab, -r[c]))[:k]
            out.append({
                "label": self.class_names[label],
                "confidence": row[label],
                "top": [{"label": self.class_names[c], "prob": row[c]} for c in order],
                **{key: frame[key] for key in UNCERTAINTY_KEYS if key in frame},
            })
        return out
