"""Online prototype evolution: a training-free, *online* method (state carries from frame to frame).

Per frame (METHODS.md, "Online prototype evolution"; cf. TDA's positive cache):

1. The N views go through the image encoder once (base class); zero-shot logits ``s·cos(e_v, t_c)`` for every
   view against the class text embeddings (computed once, template ``"a photo of a {}."``).
2. Prediction on view 0 (the plain view ``x``)::

       logits = s·cos(x, t) + α·(s/100)·A(x) [+ γ·s·cos(x, P̃)]

   ``A`` is the bank's affinity term (:meth:`PrototypeBank.affinity_logits`, sharpness β). ``α`` is stated on
   CLIP's logit scale of 100, as TDA's configs are, and multiplied by ``s/100`` so that the cache term keeps
   the same weight relative to the zero-shot logits for a model with another scale (the micro CLIP has
   s ≈ 18.4). With offline prototypes ``P`` (:class:`~edgeclip.runtime.prototypes.ClassPrototypes`), the
   evolving prototypes ``P̃ = bank.prototypes(P)`` add an image-space classifier with weight γ.
3. Absorb: the normalised mean embedding of the confident views (the ⌊ρN⌋ lowest-entropy ones, as TPT and
   ZERO select them) goes into the bank under the predicted label, scored by the entropy of the views' mean
   zero-shot probability. That score does not depend on the bank, so entries from early and late frames
   compete on equal terms.

Defaults are TDA's published ImageNet positive-cache settings (shot capacity 3, α = 2.0, β = 5.0), not
tuned on any stream here; γ = 1 weighs the image prototypes like the text classifier. The method runs in
``mode="online"`` by default; `reset()` empties the bank, nothing else is learnt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.classnames import validate_template
from edgeclip.runtime.methods.base import FrameResult, ViewMethod
from edgeclip.runtime.methods.config import GuardConfig, ViewConfig, check_finite, check_positive_int
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip
from edgeclip.runtime.prototype_bank import PrototypeBank
from edgeclip.runtime.prototypes import PrototypesLike, prepare_prototypes

__all__ = ["REFERENCE_LOGIT_SCALE", "OnlinePrototypes", "OnlinePrototypesConfig"]

#: The logit scale α is expressed against (CLIP's learnt scale, 100, which TDA's α values assume).
REFERENCE_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class OnlinePrototypesConfig:
    """Online prototypes' settings; the defaults are TDA's published ImageNet positive-cache values."""

    # the views of every frame and the confident share whose mean embedding enters the bank
    views: ViewConfig = field(default_factory=ViewConfig)
    # cache entries per class (TDA: 3)
    capacity: int = 3
    # weight of the cache term, stated on the reference logit scale 100 (TDA: 2.0)
    alpha: float = 2.0
    # affinity sharpness exp(-beta (1 - cos)) (TDA: 5.0)
    beta: float = 5.0
    # weight of the evolving image prototypes (only with offline prototypes)
    gamma: float = 1.0
    # pseudo-count of the prior prototype in bank.prototypes (None: the capacity)
    prior_weight: float | None = None
    # zero-shot prompt, "{}" where the class name goes
    template: str = DEFAULT_TEMPLATE
    # "online": the bank carries over frames (the collapse guard empties it when one class takes over);
    # "episodic": emptied after every frame (zero-shot plus the prior prototypes, an ablation)
    mode: str = "online"
    # collapse guard of the online mode
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        check_positive_int("capacity", self.capacity)
        for name in ("alpha", "beta", "gamma"):
            check_finite(name, getattr(self, name))
        if self.prior_weight is not None:
            check_finite("prior_weight", self.prior_weight, strict=True)
        validate_template(self.template)


class OnlinePrototypes(ViewMethod):
    """Zero-shot logits plus a bounded, online cache of confident test embeddings (see the module docstring).

    ``prototypes`` (optional) are offline class prototypes, checked against the model and aligned to the class
    order by `prepare_prototypes` (the same check as PromptSync's).
    """

    name = "online_prototypes"
    config_class = OnlinePrototypesConfig
    resources = ("prototypes",)

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: OnlinePrototypesConfig | None = None,
                 *, prototypes: PrototypesLike | None = None) -> None:
        super().__init__(model, class_names, config)
        cfg = self.config
        self.alpha, self.beta, self.gamma = float(cfg.alpha), float(cfg.beta), float(cfg.gamma)
        self.prior_weight = cfg.prior_weight
        self.text = model.encode_text([cfg.template.format(c) for c in self.class_names]).float().to(self.device)
        protos = prepare_prototypes(model, self.class_names, prototypes)
        self.prior = None if protos is None else protos.embeds.to(self.device)
        self.bank = PrototypeBank(len(self.class_names), int(self.text.shape[1]), cfg.capacity, device=self.device)

    @property
    def cache_weight(self) -> float:
        """The factor in front of the affinity term: ``α · s / 100``."""
        return self.alpha * self.scale / REFERENCE_LOGIT_SCALE

    def _reset_adapted(self) -> None:
        """Empty the cache (start a new stream)."""
        self.bank.reset()

    def _adapted_state(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"])

    def logits(self, query: torch.Tensor) -> torch.Tensor:
        """The method's logits ``[N, C]`` for embeddings ``[N, D]`` under the current bank (no update)."""
        query = F.normalize(query.float(), dim=-1)
        out = cosine_logits(query, self.text.to(query.device), self.scale)
        if self.alpha > 0:
            out = out + self.cache_weight * self.bank.affinity_logits(query, self.beta).to(out.device)
        if self.prior is not None and self.gamma > 0:
            protos = self.bank.prototypes(self.prior, self.prior_weight).to(query.device)
            out = out + self.gamma * self.scale * query @ protos.T
        return out

    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        with torch.no_grad():
            embeds = embeds.float()
            sel = select_confident(cosine_logits(embeds, self.text.to(embeds.device), self.scale), self.rho)
            logits = self.logits(embeds[:1])[0]
            probs = logits.softmax(dim=-1)
            label = int(probs.argmax())
            key = F.normalize(embeds[sel.index].mean(dim=0, keepdim=True), dim=-1)
            entropy = torch.special.entr(sel.log_mean_prob.exp()).sum()  # 0·log 0 = 0
            stored = self.bank.add(key, torch.tensor([label]), entropy.reshape(1))
        info = {"absorbed": bool(stored), "entropy": float(entropy), "bank_entries": len(self.bank),
                "zero_shot_label": int(sel.probs[0].argmax())}
        return FrameResult(probs, info, label=label)
