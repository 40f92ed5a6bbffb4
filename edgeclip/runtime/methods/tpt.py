"""TPT — test-time prompt tuning, as published: per frame, tune the prompt context on the entropy of the
mean prediction over the most confident views, predict the plain view, reset.

Defaults follow the paper and its code: 64 views, the 10 % most confident (lowest entropy, chosen at the
first step and kept for later ones), 4 context tokens initialised from "a photo of a", AdamW (lr 5e-3,
PyTorch's default weight decay 0.01), one step.
The fast path: the views' image embeddings are computed once by the exported encoder and reused by the
prediction pass, which only needs the new text embeddings; the text tower runs truncated to the longest
prompt (under bf16 autocast on CUDA, ``amp``); similarity and selection go through `edgeclip.kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from edgeclip.errors import InputError
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.runtime.methods.base import FrameResult, ViewMethod
from edgeclip.runtime.methods.config import GuardConfig, ViewConfig, check_finite, check_positive_int
from edgeclip.runtime.methods.state import load_optimizer_state, optimizer_state
from edgeclip.runtime.model import EdgeClip

__all__ = ["TPT", "TPTConfig", "mean_entropy"]


@dataclass(frozen=True)
class TPTConfig:
    """TPT's settings; the defaults are the paper's."""

    # the views of every frame and the confident share (TPT: 64 views, the 10 % most confident)
    views: ViewConfig = field(default_factory=ViewConfig)
    # AdamW learning rate of the context vectors (TPT: 5e-3)
    lr: float = 5e-3
    # AdamW weight decay (PyTorch's default, which TPT's code keeps)
    weight_decay: float = 0.01
    # tuning steps per frame (TPT: 1; 0 = zero-shot on the plain view with the initial context)
    steps: int = 1
    # the words whose token embeddings initialise the context (their token count is the context length)
    init: str = "a photo of a"
    # choose the confident views again at every step (TPT chooses them at the first step and keeps them)
    reselect_each_step: bool = False
    # compute the shared causal prefix (SOT + context) once for all classes (a causal tower only; exact)
    shared_prefix: bool = True
    # bf16 autocast for the text tower; None = on for a CUDA model, off on the CPU
    amp: bool | None = None
    # "episodic": reset after every frame (as published); "online": carry the context, with the collapse guard
    mode: str = "episodic"
    # collapse guard of the online mode
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        check_finite("lr", self.lr)
        check_finite("weight_decay", self.weight_decay)
        check_positive_int("steps", self.steps, minimum=0)
        if not isinstance(self.init, str) or not self.init.strip():
            raise InputError(f"init must be a non-empty string of words, got {self.init!r}")


def log_mean_prob_over(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax over the views in `index` (for steps that reuse an earlier selection)."""
    logp = logits.float().log_softmax(dim=1)[index]
    return (torch.logsumexp(logp, dim=0) - math.log(index.numel())).to(logits.dtype)


def mean_entropy(log_mean_prob: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean probability, from its log (what TPT minimises)."""
    return -(log_mean_prob.exp() * log_mean_prob).sum()


class TPT(ViewMethod):
    """Test-time prompt tuning (episodic by default): one `predict` call adapts on, and predicts, every frame."""

    name = "tpt"
    config_class = TPTConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: TPTConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        cfg = self.config
        # mixed precision for the text tower: on by default on CUDA (bf16, so no gradient scaler is needed)
        self.amp = self.device.type == "cuda" if cfg.amp is None else bool(cfg.amp)
        self._index: torch.Tensor | None = None
        self.tower = model.text_tower
        self.tower.requires_grad_(False)
        self.prompt = model.prompt_context(cfg.init)
        self.shared_prefix = cfg.shared_prefix and self.tower.supports_shared_prefix()
        self.optimizer = self._make_optimizer()

    @property
    def steps(self) -> int:
        return self.config.steps

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([self.prompt.ctx], lr=self.config.lr, weight_decay=self.config.weight_decay)

    def text_embeds(self) -> torch.Tensor:
        """Class text embeddings ``[C, D]`` under the current context (differentiable in it).

        The tower runs only up to the last EOT, and on a causal tower the shared prefix (SOT and the context)
        is computed once for all classes instead of once per class. With ``amp`` it runs under bf16 autocast;
        the embeddings come back in fp32 either way.
        """
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.shared_prefix:
                prefix, rest, eot = self.prompt.build_split(self.class_names)
                out = self.tower.forward_shared_prefix(prefix, rest, eot)
            else:
                tokens, eot = self.prompt.build(self.class_names)
                out = self.tower(tokens, eot)
        return out.float()

    # -- adapted state -------------------------------------------------------------------------------------
    def _reset_adapted(self) -> None:
        self.prompt.reset()
        self.optimizer.state.clear()  # AdamW's moments start empty (the official loop reloads the initial state)
        self._index = None

    def _adapted_state(self) -> dict[str, Any]:
        return {"ctx": self.prompt.ctx.detach(), "optimizer": optimizer_state(self.optimizer)}

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        ctx = state.get("ctx")
        if not isinstance(ctx, torch.Tensor) or ctx.shape != self.prompt.ctx.shape:
            got = list(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
            raise InputError(f"{self.name} state: ctx must be {list(self.prompt.ctx.shape)}, got {got}")
        with torch.no_grad():
            self.prompt.ctx.copy_(ctx)
        load_optimizer_state(self.optimizer, state.get("optimizer", {}))
        self._index = None

    # -- adaptation ----------------------------------------------------------------------------------------
    def step(self, embeds: torch.Tensor) -> float:
        """One tuning step on the views' embeddings; a non-finite loss is skipped and counted.

        As in TPT's code, the confident views are chosen at the frame's first step and kept for its later
        steps (``reselect_each_step=True`` chooses again at every step).
        """
        logits = cosine_logits(embeds, self.text_embeds(), self.scale)
        if self._index is None or self.config.reselect_each_step:
            sel = select_confident(logits, self.rho)
            self._index, log_p = sel.index, sel.log_mean_prob
        else:
            log_p = log_mean_prob_over(logits, self._index)
        loss = mean_entropy(log_p)
        if not torch.isfinite(loss):  # never let a NaN/Inf reach the context: skip the step, count it
            self.skipped_steps += 1
            return float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        self._index = None  # a new frame chooses its own confident views
        losses = [self.step(embeds) for _ in range(self.steps)]
        with torch.no_grad():
            probs = cosine_logits(embeds[:1], self.text_embeds(), self.scale).softmax(dim=-1)[0]
        return FrameResult(probs, {"loss": losses, "skipped_steps": sum(1 for x in losses if x != x)})
