"""PromptSync — class-aware prototype alignment and discrimination on top of TPT (edgeclip's formulation).

The encoders are frozen, so the prompts live where gradients reach: the text context `ctx` (through the
PyTorch text tower) and a visual prompt `delta` in embedding space, added to every view's normalised image
embedding. Per frame, with class prototypes ``P [C, D]`` (normalised per-class mean image embeddings of a
labelled proxy set, `edgeclip prototypes build`):

* logits ``s·cos(e_v + delta, t_c(ctx))`` for every view; the confident set S is the ρ·N lowest-entropy views
  plus the plain view; ``p̄`` the mean probability over S; the test prototype ``z = normalise(mean_S e_v + delta)``;
* ``L_ent = H(p̄)`` (TPT's objective);
* ``L_align = Σ_c p̄_c ‖z − P_c‖²``: pull the test prototype towards the class prototypes in proportion to the
  frame's mean class probabilities (class-aware alignment);
* ``L_disc``: symmetric InfoNCE at temperature τ between the class text embeddings ``t_c(ctx)`` and ``P``
  (prototype discrimination), which keeps each class's text close to its own prototype and away from the
  others, so the prompt cannot collapse onto one class;
* ``L = L_ent + λ_a·L_align + λ_d·L_disc``, one AdamW step, predict the plain view, reset (episodic).
* the prediction: ``s·cos(x + delta, t_c(ctx)) + γ·s·cos(x + delta, P_c)`` for the plain view ``x``. The
  prototype readout γ is 0 in episodic mode (``proto_weight``, the formulation as published); in online mode
  with a bank it is ``online_proto_weight`` (3), and ``P`` are the bank's evolving prototypes, so the readout
  is the cache term that carries what the stream has taught (both weights chosen on the validation stream,
  `docs/promptsync-tuning.md`).

The reusable discrimination step: ``ctx`` restarts from the same value for every frame, so the gradient of
``L_disc`` at the first step is the same for every frame; it is computed once per class set and added to
each frame's gradient (``reuse_disc=True``, the default). Later steps (``steps > 1``) reuse it too, which is
then an approximation; ``reuse_disc=False`` computes it exactly at every step. With a bank the prototypes
change as the bank stores entries, and the gradient is recomputed whenever they have.

Prototypes are a `ClassPrototypes` (or a prototypes file, or a spec / folder to build them from), checked
against the model's encoder hashes and aligned to the class order by `prepare_prototypes`, the same check as
online prototypes'. Without prototypes the class text embeddings stand in for them, with a warning:
``L_align`` then pulls the test prototype towards the text embeddings and ``L_disc`` is constant.

Online mode (``mode="online"``) carries a prototype bank from frame to frame (each frame's confident
views enter it under the predicted class, scored by the prediction's entropy; the bank is created with
``bank_capacity`` entries per class unless one is passed as ``bank=``); the prompts still restart every frame
unless ``carry_prompts=True``, because carried prompts drift: on the micro benchmark (64 held-out frames per
shift) PromptSync with carried prompts fell to 36 % mean accuracy against 54 % episodic. A collapse of the
predictions resets the bank too. A bank carries state across frames, so episodic mode refuses one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgeclip.errors import InputError
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods.base import FrameResult
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.tpt import TPT, TPTConfig, mean_entropy
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.prototype_bank import DEFAULT_CAPACITY, PrototypeBank
from edgeclip.runtime.prototypes import ClassPrototypes, PrototypesLike, prepare_prototypes

__all__ = ["PromptSync", "PromptSyncConfig", "info_nce"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSyncConfig(TPTConfig):
    """PromptSync's settings: TPT's (``lr`` is the context's learning rate) plus the loss weights, the visual
    prompt and the readout. The defaults were chosen on the validation stream, never the held-out one: the
    search and the reasons are in `docs/promptsync-tuning.md` (where the context learning rate is ``lr_ctx``)."""

    # λ_a: weight of the class-aware prototype alignment L_align
    lambda_align: float = 0.3
    # λ_d: weight of the prototype discrimination L_disc (symmetric InfoNCE between text and prototypes)
    lambda_disc: float = 0.1
    # τ: temperature of L_disc
    tau: float = 0.07
    # AdamW learning rate of the visual prompt delta (embedding space)
    lr_delta: float = 5e-3
    # γ of the prototype readout in episodic mode (0: the prediction as published)
    proto_weight: float = 0.0
    # γ of the readout in online mode, where it reads the bank's evolving prototypes (a cache term)
    online_proto_weight: float = 3.0
    # reuse the L_disc gradient at the initial context (exact at the first step; the paper's reusable step)
    reuse_disc: bool = True
    # online mode: carry the prompts from frame to frame too (they drift; the bank carries by default)
    carry_prompts: bool = False
    # online mode: entries per class of the prototype bank created when none is passed
    bank_capacity: int = DEFAULT_CAPACITY

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite("tau", self.tau, strict=True)
        for name in ("lambda_align", "lambda_disc", "lr_delta", "proto_weight", "online_proto_weight"):
            check_finite(name, getattr(self, name))
        check_positive_int("bank_capacity", self.bank_capacity)


def info_nce(text: torch.Tensor, protos: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between class text embeddings and class prototypes (row c matches row c)."""
    logits = F.normalize(text, dim=-1) @ F.normalize(protos, dim=-1).T / tau
    target = torch.arange(text.shape[0], device=text.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class PromptSync(TPT):
    """PromptSync (episodic by default; ``mode="online"`` carries a prototype bank, see the module docstring)."""

    name = "promptsync"
    config_class = PromptSyncConfig
    resources = ("prototypes", "bank")

    def __init__(
        self,
        model: EdgeClip,
        class_names: Sequence[str],
        config: PromptSyncConfig | None = None,
        *,
        prototypes: PrototypesLike | None = None,
        bank: PrototypeBank | None = None,
    ) -> None:
        super().__init__(model, class_names, config)
        cfg = self.config
        if bank is not None and cfg.mode != "online":
            raise InputError("a prototype bank carries state from frame to frame: use mode='online' with bank=")
        if bank is not None and (bank.n_classes, bank.dim) != (len(self.class_names), model.bundle.embed_dim):
            raise InputError(f"the bank holds {bank.n_classes} classes of width {bank.dim}, this method needs "
                             f"{len(self.class_names)} of width {model.bundle.embed_dim}")
        if bank is None and cfg.mode == "online":
            bank = PrototypeBank(len(self.class_names), model.bundle.embed_dim, cfg.bank_capacity,
                                 device=self.device)
        self.bank = bank
        self.prototypes_source, self.offline = self._prototypes(prepare_prototypes(model, self.class_names,
                                                                                   prototypes))
        self._disc_grad: torch.Tensor | None = None
        self._disc_protos: torch.Tensor | None = None  # the prototypes `_disc_grad` was computed for

    def _make_optimizer(self) -> torch.optim.Optimizer:
        self.delta = torch.nn.Parameter(torch.zeros(self.model.bundle.embed_dim, device=self.device))
        cfg = self.config
        return torch.optim.AdamW(
            [{"params": [self.prompt.ctx], "lr": cfg.lr}, {"params": [self.delta], "lr": cfg.lr_delta}],
            weight_decay=cfg.weight_decay,
        )

    def _prototypes(self, prototypes: ClassPrototypes | None) -> tuple[str, torch.Tensor]:
        if prototypes is None:
            warnings.warn(
                "PromptSync has no class prototypes (build them with `edgeclip prototypes build`); "
                "using the class text embeddings as prototypes",
                RuntimeWarning,
                stacklevel=4,
            )
            with torch.no_grad():
                protos = F.normalize(self.text_embeds().float(), dim=-1)
            return "text", protos
        return prototypes.kind, prototypes.embeds.to(self.device)

    def current_prototypes(self) -> torch.Tensor:
        """``P [C, D]``: the offline prototypes, refined by the bank when there is one."""
        if self.bank is None:
            return self.offline
        return self.bank.prototypes(self.offline)

    def reset_prompts(self) -> None:
        """Context, visual prompt and optimiser back to their initial state (the bank is kept)."""
        super()._reset_adapted()
        with torch.no_grad():
            self.delta.zero_()

    def _reset_adapted(self) -> None:
        """Everything adapted so far: the prompts and, in online mode, the prototype bank."""
        self.reset_prompts()
        if self.bank is not None:
            self.bank.reset()

    def _adapted_state(self) -> dict[str, Any]:
        state = {**super()._adapted_state(), "delta": self.delta.detach()}
        if self.bank is not None:
            state["bank"] = self.bank.state_dict()
        return state

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        delta = state.get("delta")
        if not isinstance(delta, torch.Tensor) or delta.shape != self.delta.shape:
            raise InputError(f"promptsync state: delta must be a tensor [{self.delta.shape[0]}]")
        if (self.bank is None) != ("bank" not in state):
            raise InputError("promptsync state: a bank state goes with an online method that has a bank")
        super()._load_adapted_state(state)
        with torch.no_grad():
            self.delta.copy_(delta)
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])

    def _reusable_disc_grad(self, protos: torch.Tensor) -> torch.Tensor:
        """∂(λ_d·L_disc)/∂ctx at the initial context, computed once per class set and prototype set (with a bank,
        again whenever the bank's prototypes have changed)."""
        if self._disc_grad is None or self._disc_protos is None or not torch.equal(protos, self._disc_protos):
            ctx = self.prompt.ctx
            saved = ctx.detach().clone()
            with torch.no_grad():
                ctx.copy_(self.prompt.ctx_init)
            loss = self.config.lambda_disc * info_nce(self.text_embeds(), protos, self.config.tau)
            (grad,) = torch.autograd.grad(loss, ctx)
            with torch.no_grad():
                ctx.copy_(saved)
            self._disc_grad = grad.detach()
            self._disc_protos = protos.detach().clone()
        return self._disc_grad

    def losses(self, embeds: torch.Tensor, protos: torch.Tensor, with_disc: bool
               ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
        """Total loss, its parts, the mean probability over the confident views and the test prototype."""
        cfg = self.config
        e = F.normalize(embeds, dim=-1) + self.delta
        text = self.text_embeds()
        sel = select_confident(cosine_logits(e, text, self.scale), self.rho, force_first=True)
        log_p = sel.log_mean_prob
        p_bar = log_p.exp()
        z = F.normalize(e[sel.index].mean(dim=0), dim=-1)
        l_ent = mean_entropy(log_p)
        l_align = (p_bar * ((z.unsqueeze(0) - protos) ** 2).sum(dim=1)).sum()
        total = l_ent + cfg.lambda_align * l_align
        parts = {"ent": float(l_ent.detach()), "align": float(l_align.detach())}
        if with_disc:
            l_disc = info_nce(text, protos, cfg.tau)
            total = total + cfg.lambda_disc * l_disc
            parts["disc"] = float(l_disc.detach())
        return total, parts, p_bar.detach(), z.detach()

    def step(self, embeds: torch.Tensor) -> float:
        protos = self.current_prototypes()
        reuse = self.config.reuse_disc and self.config.lambda_disc > 0
        loss, _, _, _ = self.losses(embeds, protos, with_disc=not reuse)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            return float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reuse:
            g = self._reusable_disc_grad(protos)
            self.prompt.ctx.grad = g.clone() if self.prompt.ctx.grad is None else self.prompt.ctx.grad + g
        if not all(torch.isfinite(p.grad).all() for p in (self.prompt.ctx, self.delta) if p.grad is not None):
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.optimizer.step()
        return float(loss.detach())

    @property
    def readout_weight(self) -> float:
        """γ: weight of the prototype readout in the prediction (`online_proto_weight` in online mode with a
        bank, else `proto_weight`)."""
        if self.mode == "online" and self.bank is not None:
            return self.config.online_proto_weight
        return self.config.proto_weight

    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        losses = [self.step(embeds) for _ in range(self.steps)]
        with torch.no_grad():
            e = F.normalize(embeds, dim=-1) + self.delta
            text = self.text_embeds()
            logits = cosine_logits(e[:1], text, self.scale)[0]
            gamma = self.readout_weight
            if gamma > 0:  # the prototype readout: a cache term when the bank refines the prototypes online
                logits = logits + gamma * self.scale * (F.normalize(e[:1], dim=-1) @ self.current_prototypes().T)[0]
            probs = logits.softmax(dim=-1)
            if self.bank is not None:
                sel = select_confident(cosine_logits(e, text, self.scale), self.rho, force_first=True)
                z = F.normalize(e[sel.index].mean(dim=0), dim=-1)
                score = torch.special.entr(probs).sum()  # the prediction's entropy: lower = more confident
                self.bank.add(z.unsqueeze(0), torch.tensor([int(probs.argmax())]), score.reshape(1))
        if self.mode == "online" and not self.config.carry_prompts:
            self.reset_prompts()  # online state is the prototype bank; the prompts restart every frame
        return FrameResult(probs, {"loss": losses, "skipped_steps": sum(1 for x in losses if x != x)})
