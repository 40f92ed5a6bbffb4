"""What every classifier and adaptation method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prediction:
    """Labels, probabilities and the time spent in each stage (seconds) for a batch of images."""

    labels: torch.Tensor  # [B] int64
    probs: torch.Tensor  # [B, C]
    class_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.gather(1, self.labels.unsqueeze(1)).squeeze(1)

    def to_records(self, top_k: int = 3) -> list[dict[str, Any]]:
        """One JSON-friendly dict per image: label, confidence, top-k."""
        k = min(top_k, self.probs.shape[1])
        vals, idx = self.probs.topk(k, dim=1)
        out = []
        for row_v, row_i in zip(vals.tolist(), idx.tolist(), strict=True):
            out.append({
                "label": self.class_names[row_i[0]],
                "confidence": row_v[0],
                "top": [{"label": self.class_names[i], "prob": v} for v, i in zip(row_v, row_i, strict=True)],
            })
        return out
