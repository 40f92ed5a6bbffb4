"""ZERO — training-free test-time adaptation: the majority vote of the most confident views' predictions.

Same views and confidence filter as TPT (the ρ·N lowest-entropy views), no gradient and no state: each
confident view votes for its argmax class and the frame takes the most voted class. Ties go to the class
with the higher mean probability over the confident views. The returned probabilities are the vote shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods.base import FrameResult, TestTimeMethod
from edgeclip.runtime.model import EdgeClip

__all__ = ["Zero"]


class Zero(TestTimeMethod):
    """ZERO: vote of the confident views, zero-shot text embeddings computed once per class set."""

    name = "zero"

    def __init__(self, model: EdgeClip, class_names: Sequence[str], *,
                 template: str = "a photo of a {}.", **kwargs: Any) -> None:
        super().__init__(model, class_names, **kwargs)
        self.text = model.encode_text([template.format(c) for c in self.class_names]).float()

    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        with torch.no_grad():
            sel = select_confident(cosine_logits(embeds, self.text.to(embeds.device), self.scale), self.rho)
            probs = sel.probs[sel.index]
            votes = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).to(probs.dtype)
            share = votes / votes.sum()
            # break ties by mean confident probability: it is < 1, so it never outweighs one vote
            winner = int((votes + probs.mean(dim=0)).argmax())
        return FrameResult(share, {"votes": int(votes.max())}, label=winner)
