"""TPT's official per-image loop, re-implemented plainly: the peer edgeclip's `TPT` is checked and timed against.

Written from a description of the official code (azshue/TPT: ``tpt_classification.py`` and
``clip/custom_clip.py``); no code was copied. What it keeps from that code:

- Views: TPT's PIL augmentation loop (`pil_views`: view 0 is CLIP's resize + centre crop, the others
  ``RandomResizedCrop`` + ``RandomHorizontalFlip``), one image at a time.
- Prompt: the class prompts ``"{init} {name}."`` are tokenised to the full context (77 tokens); the
  embeddings of the ``init`` words become the learnable context (as many vectors as ``init`` has words),
  the start token and everything after the context stay frozen. The text tower runs on the *full* sequence
  (no cutting at the last end-of-text token) and pools at the largest token id (the end-of-text token).
- Both encoders are fp32 PyTorch modules; the image features are computed with no gradient, normalised,
  and ``logits = logit_scale · img @ text.T`` with the normalised class features.
- Per image: the context and the AdamW state are put back to their initial values, then for each step the
  model is called on all the views (image features recomputed each step, as the official ``model(inputs)``
  does), the ``int(N · rho)`` lowest-entropy views are kept (``argsort`` of the entropy, so view 0 only when
  it is among them; the selection of the first step is reused by the later ones, as in the official code),
  the loss is the entropy of their average probability (log-softmax, ``logsumexp`` over the views minus
  ``log K``, clamped at the dtype's smallest value), and AdamW takes one step (PyTorch's defaults, weight
  decay 0.01).
- Prediction: a second full forward on view 0 alone with the tuned prompt.

Known departures, all on purpose: fp32 instead of CUDA autocast (so there is no gradient scaler; a step whose
loss or gradient is not finite is skipped, which is what the scaler does with it); no AugMix (the official
code uses it only for the fine-grained sets); class names are used as given (the official code replaces
``_`` with a space). ``reselect_each_step=True`` re-selects the confident views at every step instead of
reusing the first step's selection (what edgeclip's `TPT` does), to compare the two implementations beyond
one step.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from edgeclip.bench.peers.tpt_views import pil_views
from edgeclip.runtime import bundle as B
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.encoders import TorchImageEncoder
from edgeclip.runtime.methods.frames import iter_frames
from edgeclip.runtime.model import EdgeClip, load
from edgeclip.runtime.prediction import Prediction

__all__ = ["ReferenceTPT", "avg_entropy", "select_confident_samples"]

log = logging.getLogger(__name__)


def select_confident_samples(logits: torch.Tensor, top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``int(N · top)`` rows of ``logits [N, C]`` whose softmax has the lowest entropy, and their indices
    (most confident first), chosen by ``argsort`` of the entropy as the official code does."""
    entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)
    idx = torch.argsort(entropy, descending=False)[: int(entropy.shape[0] * top)]
    return logits[idx], idx


def avg_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of the average probability of the rows of ``outputs [K, C]`` (logits), computed in log space:
    log-softmax per row, ``logsumexp`` over the rows minus ``log K``, clamped at the dtype's smallest value."""
    logp = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg_logp = logp.logsumexp(dim=0) - math.log(logp.shape[0])
    avg_logp = torch.clamp(avg_logp, min=torch.finfo(avg_logp.dtype).min)
    return -(avg_logp * avg_logp.exp()).sum(dim=-1)


def _visual_module(model: EdgeClip) -> nn.Module:
    """The fp32 PyTorch image tower: the torch backend's own module, or one built from the bundle's weights."""
    encoder = model.image_encoder
    if isinstance(encoder, TorchImageEncoder):
        return encoder.visual
    return model._build_visual().to(model.device)


class ReferenceTPT:
    """The official TPT loop, one image at a time, on a bundle's fp32 PyTorch encoders.

    ``model_or_bundle``: a loaded `EdgeClip` (any backend: the image tower is rebuilt in PyTorch when the
    backend is not ``torch``) or a bundle path / `Bundle` (loaded with ``backend="torch"``).
    """

    name = "tpt-reference"

    def __init__(
        self,
        model_or_bundle: EdgeClip | str | Path | B.Bundle,
        class_names: Sequence[str],
        *,
        n_views: int = 64,
        rho: float = 0.1,
        lr: float = 5e-3,
        steps: int = 1,
        init: str = "a photo of a",
        seed: int = 0,
        reselect_each_step: bool = False,
    ) -> None:
        model = model_or_bundle if isinstance(model_or_bundle, EdgeClip) else load(model_or_bundle, backend="torch")
        if n_views < 1 or steps < 0:
            raise ValueError(f"n_views must be >= 1 and steps >= 0, got {n_views} and {steps}")
        if int(n_views * rho) < 1:
            raise ValueError(f"the official selection keeps int(n_views * rho) views: none of {n_views} at rho={rho}")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.n_views = n_views
        self.rho = rho
        self.steps = steps
        self.seed = seed
        self.reselect_each_step = reselect_each_step
        self.generator = torch.Generator().manual_seed(seed)
        self.device = model.device
        self.image_size = model.preprocess_cfg.image_size
        self.scale = float(model.logit_scale)
        self.visual = _visual_module(model).eval().requires_grad_(False)
        self.tower = model.text_tower.requires_grad_(False)

        # Prompts tokenised to the full context; the context is as many vectors as `init` has words.
        n_ctx = len(init.split(" "))
        ids, _ = model.tokenizer.ids([f"{init} {name}." for name in self.class_names])
        init_ids, _ = model.tokenizer.ids([init])
        ids, init_ids = ids.to(self.device), init_ids.to(self.device)
        if ids.shape[1] != self.tower.context_length:
            raise ValueError(f"prompts have {ids.shape[1]} tokens, the text tower {self.tower.context_length}")
        with torch.no_grad():
            embedding = self.tower.embed_tokens(ids).float()
            ctx_init = self.tower.embed_tokens(init_ids)[0, 1 : 1 + n_ctx].float()
        self.eot_index = ids.argmax(dim=-1)  # the end-of-text token has the largest id
        self.token_prefix = embedding[:, :1]
        self.token_suffix = embedding[:, 1 + n_ctx :]
        self.ctx_init_state = ctx_init.detach().clone()
        self.ctx = nn.Parameter(ctx_init.detach().clone())
        self.optimizer = torch.optim.AdamW([self.ctx], lr=lr)
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())
        self.skipped_steps = 0

    # -- the model, as the official ClipTestTimeTuning computes it ------------------------------------
    def reset(self) -> None:
        """Put the context and the optimizer back to their initial state."""
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(self.optim_state)

    def prompts(self) -> torch.Tensor:
        """Full-length token embeddings ``[C, L, W]``: start token, the context, then the frozen rest."""
        ctx = self.ctx.unsqueeze(0).expand(len(self.class_names), -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)

    def text_features(self) -> torch.Tensor:
        """Normalised class features ``[C, D]`` from the full-length sequence (differentiable in the context)."""
        feats = self.tower.forward_full(self.prompts(), self.eot_index)
        return F.normalize(feats, dim=-1)

    def image_features(self, views: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``[N, D]`` of normalised views ``[N, 3, S, S]`` (no gradient)."""
        with torch.no_grad():
            feats = self.visual(views.to(self.device, torch.float32))
        return F.normalize(feats, dim=-1)

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        """``logit_scale · img @ text.T`` for every view and class: ``[N, C]``."""
        return self.scale * torch.matmul(self.image_features(views), self.text_features().t())

    # -- the loop -----------------------------------------------------------------------------------
    def _tune_step(self, views: torch.Tensor, selected: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        output = self.logits(views)
        if selected is None or self.reselect_each_step:
            output, selected = select_confident_samples(output, self.rho)
        else:
            output = output[selected]
        loss = avg_entropy(output)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            log.warning("tpt-reference: non-finite loss, step skipped")
            return float("nan"), selected
        loss.backward()
        if self.ctx.grad is not None and not torch.isfinite(self.ctx.grad).all():
            self.skipped_steps += 1
            log.warning("tpt-reference: non-finite gradient, step skipped")
        else:
            self.optimizer.step()
        return float(loss.detach()), selected

    def adapt_views_logits(self, views: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run the official loop on given views ``[N, 3, S, S]`` (view 0 the plain one) and return the logits
        ``[C]`` of view 0 under the tuned prompt, and what happened (loss and selected views per step)."""
        if views.dim() != 4 or views.shape[0] < 1:
            raise ValueError(f"views must be [N, 3, S, S], got {list(views.shape)}")
        if int(views.shape[0] * self.rho) < 1:
            raise ValueError(f"no view is selected from {views.shape[0]} at rho={self.rho}")
        self.reset()
        selected: torch.Tensor | None = None
        losses, selections = [], []
        for _ in range(self.steps):
            loss, selected = self._tune_step(views, selected)
            losses.append(loss)
            selections.append(selected.tolist())
        with torch.no_grad():
            logits = self.logits(views[:1])[0]
        return logits.detach(), {"loss": losses, "selected": selections}

    def adapt_views(self, views: torch.Tensor) -> torch.Tensor:
        """Run the official loop on given views ``[N, 3, S, S]`` and return view 0's class probabilities ``[C]``."""
        logits, _ = self.adapt_views_logits(views)
        return logits.softmax(dim=-1)

    def views_of(self, frame: torch.Tensor) -> torch.Tensor:
        """TPT's PIL augmentation of one uint8 frame ``[H, W, 3]``: ``[n_views, 3, S, S]`` normalised views."""
        image = Image.fromarray(frame.numpy())
        cfg = self.model.preprocess_cfg
        return pil_views(image, self.n_views, self.image_size, self.generator, mean=cfg.mean, std=cfg.std)

    def predict(self, images: Any) -> Prediction:
        """Adapt on, and predict, each frame of ``images`` (one image, a list, or a uint8 batch ``[B, H, W, 3]``)."""
        probs, labels, infos = [], [], []
        timings = {"views": 0.0, "adapt": 0.0}
        for frame in iter_frames(images):
            t0 = time.perf_counter()
            views = self.views_of(frame)
            t1 = time.perf_counter()
            logits, info = self.adapt_views_logits(views)
            timings["views"] += t1 - t0
            timings["adapt"] += time.perf_counter() - t1
            p = logits.softmax(dim=-1).float().cpu()
            probs.append(p)
            labels.append(int(p.argmax()))
            infos.append(info)
        if not probs:
            raise ValueError("predict needs at least one image")
        return Prediction(torch.tensor(labels, dtype=torch.int64), torch.stack(probs), self.class_names, timings,
                          {"method": self.name, "frames": infos})
