"""ZERO — training-free test-time adaptation: the majority vote of the most confident views' predictions.

Same views and confidence filter as TPT (the ρ·N lowest-entropy views), no gradient and no state: each
confident view votes for its argmax class and the frame takes the most voted class. Ties go to the class
with the higher mean probability over the confident views. The returned probabilities are the vote shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.classnames import validate_template
from edgeclip.runtime.methods.base import FrameResult, ViewMethod
from edgeclip.runtime.methods.config import GuardConfig, ViewConfig
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip

__all__ = ["Zero", "ZeroConfig"]


@dataclass(frozen=True)
class ZeroConfig:
    """ZERO's settings (the paper's: TPT's views and confidence filter)."""

    # the views of every frame and the confident share that votes
    views: ViewConfig = field(default_factory=ViewConfig)
    # zero-shot prompt, "{}" where the class name goes
    template: str = DEFAULT_TEMPLATE
    # ZERO keeps no state, so it only runs episodically
    mode: str = "episodic"
    # unused (no online mode); kept so every view method has the same shape of config
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        validate_template(self.template)


class Zero(ViewMethod):
    """ZERO: vote of the confident views, zero-shot text embeddings computed once per class set."""

    name = "zero"
    config_class = ZeroConfig
    modes = ("episodic",)

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: ZeroConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        self.text = model.encode_text([self.config.template.format(c) for c in self.class_names]).float()

    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        with torch.no_grad():
            sel = select_confident(cosine_logits(embeds, self.text.to(embeds.device), self.scale), self.rho)
            probs = sel.probs[sel.index]
            votes = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).to(probs.dtype)
            share = votes / votes.sum()
            # break ties by mean confident probability: it is < 1, so it never outweighs one vote
            winner = int((votes + probs.mean(dim=0)).argmax())
        return FrameResult(share, {"votes": int(votes.max())}, label=winner)
