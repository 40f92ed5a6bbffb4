"""CLAP4CLIP — continual learning with probabilistic finetuning (Jha et al., NeurIPS 2024).

A robot meets new classes task after task; CLAP learns each task's classes without forgetting the old ones and
says how sure it is. Both encoders stay frozen: CLAP trains on cached image embeddings (a `FeaturePool`, or
images encoded once per task), and its whole learnt state is small (one attention layer, two D×D adapters per
task, the rehearsal memory as embeddings).

**Model** (per image with embedding ``x`` (view 0) and a few of its own views ``V`` (the attention memory)):

* Class text features ``t_c``: the normalised mean over a template ensemble (``templates``) of the normalised
  text embeddings; the unnormalised mean ``ē_c`` and the per-dimension variance over templates ``v_c`` are kept.
* Visual-guided attention (VGA): one ``nn.TransformerDecoder`` layer (d = D, one head, GELU, feed-forward 4·D,
  dropout 0.1, post-norm, as the official code). Queries are all class text features; in the self-attention a
  class attends only to the classes of its own task (``task_mask``); the cross-attention memory is **the image's
  own views only**. The official code attends over the whole test batch, so a prediction there depends on the
  other images in the batch; here it never does.
* Per task ``k`` a μ adapter ``Linear(D, D)`` and a σ adapter ``softplus(Linear(D, D))·0.999 + 0.001`` on
  ``h = t + VGA(t; V)``. A new task's adapter weights are initialised as the official code does: μ with
  ``EᵀE / D`` and σ with ``VᵀV / D``, E the template means ``ē`` and V the template variances ``v`` of every
  class seen so far (biases keep PyTorch's default initialisation, seeded).
* M Monte-Carlo samples ``r ~ N(μ_k(h), σ_k(h))`` (reparameterised); class feature ``h + r`` (not renormalised);
  logits ``scale · x · (h + r)`` with the bundle's logit scale. The samples' noise is drawn once per call and
  shared by the images of the call, so an image's prediction is a function of that image alone.

**Loss** (per step): cross-entropy over every MC sample and every class seen so far, plus ``kl_weight`` (0.001)
× KL(N(μ, σ) ‖ N(0, I)) (mean over images and classes, summed over dimensions), plus ``beta`` (15) × the
language-aware term of the official code: the MC-mean sample ``r̄_c`` of every class must be closest to its own
hand-crafted template mean, ``CE(ē · r̄ᵀ, identity)`` over the classes of a task. While a task trains, KL and
the language-aware term cover that task's classes; in the fine-tune every task's.

**Continual protocol** (`learn_task`): the new task's data plus the rehearsal memory train the shared attention
and the new task's adapters (older adapters frozen, attention dropout on); then the memory is rebuilt (at most
``memory_per_class`` exemplars per class and ``memory_total`` in all, chosen by ``selector`` — random, entropy,
variance or energy, scored per image, see `edgeclip.runtime.methods.clap_memory`); then, from the second task
on, a class-balanced fine-tune on the memory alone at lr/10 with no warm-up, the attention frozen (and in eval
mode) and every adapter trainable. After the task the state can be written atomically as a head
(``save_to=``), and a learner made from that head (``create_method("clap", model, None, head=path)``) goes on
with the next task: an interrupted run resumes between tasks with nothing lost. Re-running an already learnt
task with the same classes and data is recognised and skipped, so a script can simply be run again.

**Created with classes.** The registry makes a learner with ``create_method("clap", model, [])``. Created with
class names and no head, CLAP is the paper's Continual-CLIP baseline over those classes: zero-shot with the same
template ensemble (one "sample", so ``mc_variance`` is 0); such an instance does not learn tasks.

**Optimiser** as the official code: plain SGD (no momentum, weight decay 0), lr ``lr · batch_size / 20``
(scaled down by ``n / batch_size`` when a task has fewer images than a batch), 30 % linear warm-up from 0 then
cosine to lr·1e-3 (per step). Trained in float32 (the official code casts the adapters and the attention to
fp16 and trains them with plain SGD). The defaults keep the official learning rate (1e-3 · 32/20) but train
for more epochs (``epochs`` 30 instead of 5, ``finetune_epochs`` 5 instead of 2): a micro-world task has a
few hundred images where a CIFAR-100 task has 5 000, so 5 epochs are some 20 steps, too few for the σ adapters
to leave their wide start (σ ≈ 0.69 per dimension) — see `CLAPConfig`.

**Uncertainty** on every prediction (``prediction.info``): ``energy`` = −logsumexp of the MC-averaged logits
(higher: less like any seen class; the detection score of the paper's novel-data experiments), ``mc_variance``
= the variance over the MC samples of the softmax, summed over classes, and ``is_novel`` = energy above the
threshold `calibrate_novelty` set on held-out in-distribution data for a target false-positive rate (None
until calibrated; learning a task clears it, since the energies move). Probabilities are the softmax of the
MC-averaged logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import ClassNameError, InputError
from edgeclip.runtime.classnames import validate_class_names, validate_template
from edgeclip.runtime.methods.base import FitReport, Trainable
from edgeclip.runtime.methods.clap_memory import (
    SELECTORS,
    RehearsalMemory,
    per_class_quota,
    selection_order,
    variance_scores,
)
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.frames import iter_frames
from edgeclip.runtime.methods.prompt_training import finite_step
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.pool_sources import norm_name
from edgeclip.runtime.prediction import Prediction

__all__ = ["CLAP", "DEFAULT_TEMPLATES", "CLAPConfig", "TaskAdapter", "build_vga", "cosine_warmup_lrs",
           "open_learner", "task_mask"]

log = logging.getLogger(__name__)

#: The template ensemble: CLIP-style prompts that read naturally for any class name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "there is a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
)
#: Σ floor and slope of the σ adapter: softplus(·)·(1 − floor) + floor (the official 0.999 and 0.001).
SIGMA_FLOOR = 0.001
_CHUNK = 128  # images per forward pass at prediction


@dataclass(frozen=True)
class CLAPConfig:
    """CLAP4CLIP settings (the official code's unless a comment says otherwise)."""

    # the template ensemble whose mean is each class's text feature (at least two: σ starts from their variance)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    # Monte-Carlo samples of the class features, in training and at prediction (the README: 20)
    mc_samples: int = 20
    # weight of KL(N(μ, σ) ‖ N(0, I)) (the official 0.001)
    kl_weight: float = 0.001
    # weight β of the language-aware term (the README: 15); 0 turns it off
    beta: float = 15.0
    # passes over a task's data + memory (the official 5 for 5 000-image tasks; micro tasks need more steps)
    epochs: int = 30
    # images per step (the official 32)
    batch_size: int = 32
    # base learning rate; the step size is lr · batch_size / 20 (the official rule)
    lr: float = 1e-3
    # SGD momentum (the official code: none)
    momentum: float = 0.0
    # SGD weight decay (the official 0)
    weight_decay: float = 0.0
    # share of a task's steps spent warming up linearly from 0 (the official 30 %)
    warmup_fraction: float = 0.3
    # class-balanced fine-tune on the memory after every task but the first
    finetune: bool = True
    # passes of the fine-tune (the README: 2; more for micro-sized memories)
    finetune_epochs: int = 5
    # exemplars kept per class (the official 20)
    memory_per_class: int = 20
    # bound on all exemplars (CIFAR-100 in the paper: 2000); None = only the per-class count
    memory_total: int | None = 2000
    # exemplar selection: random (the official default), entropy, variance, energy
    selector: str = "random"
    # views per image in the attention's memory: view 0 (plain) + crops; at prediction the crops are made here
    memory_views: int = 4
    # crop area range of the memory views made at prediction (as the feature pools' default views)
    view_scale: tuple[float, float] = (0.5, 1.0)
    # dropout of the attention layer (PyTorch's and the official 0.1)
    dropout: float = 0.1
    # seed of the initialisation, the shuffling, the training noise and the exemplar choice (task k: seed, k)
    seed: int = 0
    # seed of the MC noise at prediction (drawn afresh each call: the same image gives the same prediction)
    mc_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.templates, str) or not isinstance(self.templates, (tuple, list)):
            raise InputError(f"templates must be a list of prompt templates, got {self.templates!r}")
        object.__setattr__(self, "templates", tuple(self.templates))
        if len(self.templates) < 2:
            raise InputError("CLAP needs at least two templates (σ is initialised from their variance)")
        for t in self.templates:
            validate_template(t)
        for name in ("mc_samples", "epochs", "batch_size", "finetune_epochs", "memory_views"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("memory_per_class", self.memory_per_class, minimum=0)
        if self.memory_total is not None:
            check_positive_int("memory_total", self.memory_total, minimum=0)
        for name in ("kl_weight", "beta", "momentum", "weight_decay", "warmup_fraction", "dropout"):
            check_finite(name, getattr(self, name))
        check_finite("lr", self.lr, strict=True)
        if self.warmup_fraction >= 1.0 or self.dropout >= 1.0:
            raise InputError("warmup_fraction and dropout must lie in [0, 1)")
        if not isinstance(self.finetune, bool):
            raise InputError(f"finetune must be True or False, got {self.finetune!r}")
        if self.selector not in SELECTORS:
            raise InputError(f"selector must be one of {SELECTORS}, got {self.selector!r}")
        lo, hi = self.view_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise InputError(f"view_scale must satisfy 0 < lo <= hi <= 1, got {self.view_scale}")
        object.__setattr__(self, "view_scale", (float(lo), float(hi)))
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("mc_seed", self.mc_seed, minimum=0)


# ------------------------------------------------------------------------------------------------------------
# the pieces
# ------------------------------------------------------------------------------------------------------------
def build_vga(dim: int, dropout: float = 0.1) -> nn.TransformerDecoder:
    """The visual-guided attention: one post-norm decoder layer, d = `dim`, one head, GELU, feed-forward 4·dim."""
    layer = nn.TransformerDecoderLayer(d_model=dim, nhead=1, dim_feedforward=4 * dim, dropout=dropout,
                                       activation="gelu", batch_first=True)
    return nn.TransformerDecoder(layer, num_layers=1)


class TaskAdapter(nn.Module):
    """One task's variational adapters: ``mu(h) = Linear(h)``, ``sigma(h) = softplus(Linear(h))·0.999 + 0.001``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(dim, dim)
        self.sigma_fc = nn.Linear(dim, dim)

    def sigma(self, h: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.sigma_fc(h)) * (1.0 - SIGMA_FLOOR) + SIGMA_FLOOR

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(h), self.sigma(h)

    @torch.no_grad()
    def init_from_templates(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """The official start: μ weight ``EᵀE / D`` (E = template means ``[C, D]``), σ weight ``VᵀV / D``."""
        dim = mean.shape[1]
        self.mu.weight.copy_(mean.T @ mean / dim)
        self.sigma_fc.weight.copy_(var.T @ var / dim)


def task_mask(task_sizes: Sequence[int]) -> torch.Tensor:
    """``[C, C]`` bool, True where the query class (row) may **not** attend to the key class (column): classes
    of different tasks."""
    owner = torch.repeat_interleave(torch.arange(len(task_sizes)), torch.as_tensor(list(task_sizes)))
    return owner[:, None] != owner[None, :]


def cosine_warmup_lrs(total: int, lr: float, warmup: int) -> np.ndarray:
    """The official per-step schedule: linear warm-up from 0 (exclusive) to `lr` over `warmup` steps, then cosine
    from `lr` to ``lr·1e-3``."""
    warm = np.linspace(0.0, lr, warmup + 2)[1:-1] if warmup > 0 else np.zeros(0)
    n = total - warmup
    final = lr * 1e-3
    steps = np.arange(n)
    cos = final + 0.5 * (lr - final) * (1 + np.cos(np.pi * steps / max(1, n)))
    return np.concatenate([warm, cos])


def _nest(flat: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value.detach().clone()
    return out


def _unnest(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_unnest(value, name + "."))
        else:
            out[name] = value
    return out


def _digest(*tensors: torch.Tensor, extra: Any = None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(str(list(t.shape)).encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------------------
# the method
# ------------------------------------------------------------------------------------------------------------
class CLAP(Trainable):
    """CLAP4CLIP (see the module docstring). Create it with no classes and call `learn_task` once per task."""

    name = "clap"
    config_class = CLAPConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str] | None = (),
                 config: CLAPConfig | None = None) -> None:
        names = [] if class_names is None else class_names
        if isinstance(names, str) or len(list(names)) > 0:
            super().__init__(model, names, config)
        else:
            # the base refuses an empty class list (every other method needs classes up front); a continual
            # learner starts with none, so the base checks run on a stand-in name that is dropped at once
            super().__init__(model, ["_"], config)
            self.class_names = []
        self._created_names = list(self.class_names)
        self._zs_text: tuple[list[str], torch.Tensor] | None = None
        cfg: CLAPConfig = self.config
        self.dim = int(model.bundle.embed_dim)
        self.scale = float(model.logit_scale)
        self.bias = None if model.logit_bias is None else float(model.logit_bias)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg.seed, 0xA77))
            self.vga = build_vga(self.dim, cfg.dropout)
        self._vga_init = {k: v.detach().clone() for k, v in self.vga.state_dict().items()}
        self.vga.requires_grad_(False).eval()
        self._reset_adapted()

    # -- state -------------------------------------------------------------------------------------------------
    def _reset_adapted(self) -> None:
        self.vga.load_state_dict(self._vga_init)
        self.adapters = nn.ModuleList()
        self.task_sizes: list[int] = []
        self.task_prints: list[str] = []
        self.reports: list[dict[str, Any]] = []
        d = self.dim
        self.text = torch.zeros(0, d)  # normalised ensemble means [C, D]
        self.text_mean = torch.zeros(0, d)  # unnormalised means of the normalised template embeddings [C, D]
        self.text_var = torch.zeros(0, d)  # per-dimension variance over the templates [C, D]
        self.memory = RehearsalMemory.empty(self.config.memory_views, d)
        self.novelty_threshold: float | None = None
        self.novelty_fpr: float | None = None
        self.skipped_steps = 0
        self.class_names = list(self._created_names)

    def _adapted_state(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names), "task_sizes": list(self.task_sizes),
            "task_prints": list(self.task_prints), "reports": json.loads(json.dumps(self.reports)),
            "text": self.text, "text_mean": self.text_mean, "text_var": self.text_var,
            "vga": _nest(self.vga.state_dict()),
            "adapters": {str(i): {"mu_weight": a.mu.weight.detach(), "mu_bias": a.mu.bias.detach(),
                                  "sigma_weight": a.sigma_fc.weight.detach(), "sigma_bias": a.sigma_fc.bias.detach()}
                         for i, a in enumerate(self.adapters)},
            "memory": {"embeds": self.memory.embeds, "valid": self.memory.valid.to(torch.uint8),
                       "labels": self.memory.labels},
            "novelty": {"threshold": self.novelty_threshold, "fpr": self.novelty_fpr},
            "skipped_steps": self.skipped_steps,
        }

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        need = {"class_names", "task_sizes", "text", "text_mean", "text_var", "vga", "adapters", "memory"}
        if not isinstance(state, Mapping) or need - set(state):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise InputError(f"a clap state needs {sorted(need)}, got {got}")
        names = list(state["class_names"])
        sizes = [int(s) for s in state["task_sizes"]]
        d = self.dim
        c = sum(sizes)  # learnt classes; a state with no task may name the classes of the Continual-CLIP baseline
        if (sizes and c != len(names)) or any(s < 1 for s in sizes):
            raise InputError(f"clap state: task sizes {sizes} do not add up to its {len(names)} classes")
        if names:
            validate_class_names(names)
        for key in ("text", "text_mean", "text_var"):
            t = state[key]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (c, d) or not bool(torch.isfinite(t).all()):
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"clap state: {key} must be finite [{c}, {d}], got {got} (another bundle?)")
        adapters = state["adapters"]
        if not isinstance(adapters, Mapping) or sorted(adapters, key=int) != [str(i) for i in range(len(sizes))]:
            raise InputError(f"clap state: one adapter per task expected ({len(sizes)})")
        new = nn.ModuleList()
        for i in range(len(sizes)):
            a = TaskAdapter(d)
            src = adapters[str(i)]
            try:
                with torch.no_grad():
                    a.mu.weight.copy_(src["mu_weight"])
                    a.mu.bias.copy_(src["mu_bias"])
                    a.sigma_fc.weight.copy_(src["sigma_weight"])
                    a.sigma_fc.bias.copy_(src["sigma_bias"])
            except (KeyError, RuntimeError, TypeError) as exc:
                raise InputError(f"clap state: adapter {i} does not fit width {d} ({exc})") from exc
            new.append(a.requires_grad_(False).eval())
        mem = state["memory"]
        emb, valid, labels = mem["embeds"], mem["valid"], mem["labels"]
        if (emb.dim() != 3 or emb.shape[2] != d or valid.shape != emb.shape[:2] or labels.shape != (emb.shape[0],)
                or (len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= c))):
            raise InputError("clap state: the rehearsal memory does not fit its classes or width")
        if emb.shape[1] != self.config.memory_views:
            raise InputError(f"clap state: its memory holds {emb.shape[1]} views per exemplar, this learner's "
                             f"memory_views is {self.config.memory_views}: load it with the same config")
        vga = build_vga(d, self.config.dropout)
        try:
            vga.load_state_dict(_unnest(state["vga"]))
        except (RuntimeError, KeyError, TypeError) as exc:
            raise InputError(f"clap state: the attention layer does not fit width {d} ({exc})") from exc
        self.vga.load_state_dict(vga.state_dict())
        self.class_names = names
        self.task_sizes = sizes
        self.task_prints = [str(p) for p in state.get("task_prints", [""] * len(sizes))]
        self.reports = list(state.get("reports", []))
        self.text = state["text"].float().clone()
        self.text_mean = state["text_mean"].float().clone()
        self.text_var = state["text_var"].float().clone()
        self.adapters = new
        self.memory = RehearsalMemory(emb.float().clone(), valid.bool().clone(), labels.long().clone())
        nov = state.get("novelty") or {}
        self.novelty_threshold = None if nov.get("threshold") is None else float(nov["threshold"])
        self.novelty_fpr = None if nov.get("fpr") is None else float(nov["fpr"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.vga.requires_grad_(False).eval()

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    @property
    def tasks(self) -> list[list[str]]:
        """The class names of every learnt task, in order."""
        out, start = [], 0
        for s in self.task_sizes:
            out.append(self.class_names[start:start + s])
            start += s
        return out

    def _task_slices(self) -> list[slice]:
        out, start = [], 0
        for s in self.task_sizes:
            out.append(slice(start, start + s))
            start += s
        return out

    # -- text ----------------------------------------------------------------------------------------------------
    def template_features(self, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(text [C, D], mean [C, D], var [C, D])``: the normalised ensemble mean, the unnormalised mean and the
        per-dimension variance over the templates of the normalised template embeddings."""
        temps = self.config.templates
        prompts = [t.format(c) for c in class_names for t in temps]
        with torch.no_grad():
            emb = self.model.encode_text(prompts, normalize=True).float().cpu()
        emb = emb.reshape(len(class_names), len(temps), -1)
        mean = emb.mean(1)
        return F.normalize(mean, dim=-1), mean, emb.var(1)

    # -- the forward pass --------------------------------------------------------------------------------------
    def _forward(self, query: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor,
                 eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MC logits ``[M, B, C]`` and the adapters' ``(mu, sigma)`` ``[B, C, D]`` for query embeddings ``[B, D]``
        whose own views ``[B, V, D]`` (``valid [B, V]``) are the attention's memory; `eps` ``[M, C, D]``."""
        b = query.shape[0]
        tgt = self.text.unsqueeze(0).expand(b, -1, -1)
        h = tgt + self.vga(tgt, memory, tgt_mask=task_mask(self.task_sizes),
                           memory_key_padding_mask=~valid)
        mus, sigmas = [], []
        for adapter, s in zip(self.adapters, self._task_slices(), strict=True):
            mu, sigma = adapter(h[:, s])
            mus.append(mu)
            sigmas.append(sigma)
        mu, sigma = torch.cat(mus, 1), torch.cat(sigmas, 1)
        mean_logits = torch.einsum("bd,bcd->bc", query, h + mu)
        noise_logits = torch.einsum("bcd,mcd->mbc", query.unsqueeze(1) * sigma, eps)
        logits = self.scale * (mean_logits.unsqueeze(0) + noise_logits)
        if self.bias is not None:
            logits = logits + self.bias
        return logits, mu, sigma

    def _regulariser(self, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                     tasks: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kl_weight·KL, beta·language-aware term)`` over the classes of `tasks`."""
        cfg = self.config
        kl = mu.new_zeros(())
        lang = mu.new_zeros(())
        slices = self._task_slices()
        for k in tasks:
            s = slices[k]
            m, sd = mu[:, s], sigma[:, s]
            kl = kl + cfg.kl_weight * (-torch.log(sd) + 0.5 * (sd * sd + m * m) - 0.5).sum(-1).mean()
            if cfg.beta > 0:
                r_bar = m + sd * eps[:, s].mean(0)  # the MC-mean sample of every class, per image [B, Ct, D]
                sims = torch.einsum("cd,bkd->bck", self.text_mean[s], r_bar)
                ct = sims.shape[1]
                target = torch.arange(ct).repeat(sims.shape[0])
                lang = lang + cfg.beta * F.cross_entropy(sims.reshape(-1, ct), target)
        return kl, lang

    def _mc_noise(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.config.mc_samples, len(self.class_names), self.dim, generator=generator)

    def mc_logits(self, embeds: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """MC logits ``[M, B, C]`` of image embeddings ``[B, V, D]`` (view 0 classified, the first
        ``memory_views`` views the attention memory) in eval mode, with the prediction's fixed MC noise."""
        with self._lock:
            if not self.task_sizes and self.class_names:
                return self._zero_shot_logits(embeds)
            self._need_tasks()
            embeds, valid = self._fit_views(embeds, valid)
            eps = self._mc_noise(torch.Generator().manual_seed(self.config.mc_seed))
            out = []
            self.vga.eval()
            with torch.no_grad():
                for i in range(0, embeds.shape[0], _CHUNK):
                    e, v = embeds[i:i + _CHUNK], valid[i:i + _CHUNK]
                    out.append(self._forward(e[:, 0], e, v, eps)[0])
            return torch.cat(out, 1)

    def _fit_views(self, embeds: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
            raise InputError(f"embeddings must be a float tensor, got {type(embeds).__name__}")
        if embeds.dim() == 2:
            embeds = embeds.unsqueeze(1)
        if embeds.dim() != 3 or embeds.shape[0] < 1 or embeds.shape[2] != self.dim:
            raise InputError(f"embeddings must be [B, V, {self.dim}] (or [B, {self.dim}]), got {list(embeds.shape)}")
        if not bool(torch.isfinite(embeds).all()):
            raise InputError("the image embeddings contain NaN or Inf")
        if valid is None:
            valid = torch.ones(embeds.shape[:2], dtype=torch.bool)
        v = self.config.memory_views
        embeds, valid = F.normalize(embeds.float().cpu(), dim=-1)[:, :v], valid.bool().cpu()[:, :v]
        if embeds.shape[1] < v:
            pad = v - embeds.shape[1]
            embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], pad, self.dim)], 1)
            valid = torch.cat([valid, valid.new_zeros(valid.shape[0], pad)], 1)
        valid[:, 0] = True
        return embeds, valid

    def _zero_shot_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """Continual-CLIP: ``[1, B, C]`` scaled cosine of view 0 with the template-ensemble text features."""
        embeds, _ = self._fit_views(embeds, None)
        if self._zs_text is None or self._zs_text[0] != self.class_names:
            self._zs_text = (list(self.class_names), self.template_features(self.class_names)[0])
        logits = self.scale * embeds[:, 0] @ self._zs_text[1].T
        if self.bias is not None:
            logits = logits + self.bias
        return logits.unsqueeze(0)

    def _need_tasks(self) -> None:
        if not self.task_sizes:
            raise InputError("clap has learnt no task yet: call learn_task(data, labels, class_names) first, or "
                             "load a head (create_method('clap', model, None, head=PATH))")

    # -- images ---------------------------------------------------------------------------------------------------
    def encode(self, images: Any) -> torch.Tensor:
        """Images → embeddings ``[B, memory_views, D]``: view 0 the encoder's own preprocessing, then crops made
        with a generator seeded afresh per image (so an image's views do not depend on its batch)."""
        from edgeclip.kernels import augment_views

        frames = list(iter_frames(images))
        if not frames:
            raise InputError("no images given")
        cfg = self.config
        pre = self.model.preprocess_cfg
        with torch.no_grad():
            plain = self.model.encode_images([f.numpy() for f in frames], normalize=True).float().cpu()
            out = [plain.unsqueeze(1)]
            if cfg.memory_views > 1:
                crops = []
                for f in frames:
                    g = torch.Generator().manual_seed(_seed(cfg.seed, 0xC0))
                    views, _ = augment_views(f, cfg.memory_views, pre.image_size, scale=cfg.view_scale,
                                             mean=pre.mean, std=pre.std, generator=g)
                    crops.append(views[1:])
                emb = self.model.image_encoder(torch.cat(crops).to(self.device)).float().cpu()
                out.append(F.normalize(emb, dim=-1).reshape(len(frames), cfg.memory_views - 1, -1))
        emb = torch.cat(out, 1)
        if not bool(torch.isfinite(emb).all()):
            raise InputError("the image encoder returned NaN or Inf")
        return emb

    def _as_embeds(self, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A `FeaturePool`, an embedding tensor ``[B, V, D]`` / ``[B, D]`` or images → ``(embeds, valid)``."""
        if hasattr(data, "embeds") and hasattr(data, "check_compatible"):
            data.check_compatible(self.model)
            return data.embeds, None
        if isinstance(data, torch.Tensor) and data.is_floating_point():
            return data, None
        return self.encode(data), None

    # -- prediction ------------------------------------------------------------------------------------------
    def _predict(self, images: Any) -> Prediction:
        t0 = time.perf_counter()
        embeds, valid = self._as_embeds(images)
        t1 = time.perf_counter()
        logits = self.mc_logits(embeds, valid)
        pred = self._prediction(logits, {"image_encoder": t1 - t0, "head": time.perf_counter() - t1})
        self.frames_seen += len(pred.labels)
        return pred

    def _prediction(self, logits: torch.Tensor, timings: dict[str, float]) -> Prediction:
        mean = logits.mean(0)
        probs = mean.softmax(-1)
        energy = -torch.logsumexp(mean, dim=-1)
        var = variance_scores(logits)
        novel = None if self.novelty_threshold is None else energy > self.novelty_threshold
        frames = [{"frame": self.frames_seen + i, "energy": float(energy[i]), "mc_variance": float(var[i]),
                   "is_novel": None if novel is None else bool(novel[i])} for i in range(len(energy))]
        info = {"method": self.name, "energy": energy, "mc_variance": var, "is_novel": novel,
                "novelty_threshold": self.novelty_threshold, "mc_samples": logits.shape[0], "frames": frames}
        return Prediction(probs.argmax(-1), probs, list(self.class_names), timings, info)

    def energy(self, data: Any) -> torch.Tensor:
        """``[B]``: −logsumexp of the MC-averaged logits (higher = less like any seen class)."""
        with self._lock:
            return -torch.logsumexp(self.mc_logits(*self._as_embeds(data)).mean(0), dim=-1)

    def calibrate_novelty(self, data: Any, fpr: float = 0.05) -> float:
        """Set the novelty threshold on held-out in-distribution `data` (a pool, embeddings or images of the
        seen classes) so that at most a share `fpr` of them is flagged novel; returns the threshold."""
        check_finite("fpr", fpr, strict=True)
        if not fpr < 1.0:
            raise InputError(f"fpr must lie in (0, 1), got {fpr}")
        with self._lock:
            e = -torch.logsumexp(self.mc_logits(*self._as_embeds(data)).mean(0), dim=-1)
            k = math.floor(fpr * len(e))
            if k == 0:
                log.warning("calibrate_novelty: %d images are too few for a false-positive rate of %g; the "
                            "threshold is their highest energy", len(e), fpr)
            self.novelty_threshold = float(torch.sort(e, descending=True).values[k])
            self.novelty_fpr = float(fpr)
            return self.novelty_threshold

    # -- training ----------------------------------------------------------------------------------------------
    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        if val is not None:
            log.info("clap: the validation pool is not used for selection (the protocol trains fixed epochs)")
        return self._learn(pool, None, None, save_to=None, progress=progress)

    def learn_task(self, data: Any, labels: Sequence[int] | torch.Tensor | None = None,
                   class_names: Sequence[str] | None = None, *, save_to: str | Path | None = None,
                   progress: bool = False) -> FitReport:
        """Learn one task: its classes are added after those seen so far.

        Args:
            data: a labelled `FeaturePool` (its labels and classes are used unless given), embeddings
                ``[N, V, D]``, or images (a list, or a uint8 batch ``[N, H, W, 3]``).
            labels: each image's class as an index into `class_names` (required for images and embeddings).
            class_names: this task's classes (none seen before).
            save_to: a head path written atomically once the task is learnt (resume from it with
                ``create_method("clap", model, None, head=save_to)``).
            progress: show progress bars.
        """
        with self._lock:
            return self._learn(data, labels, class_names, save_to=save_to, progress=progress)

    def _task_inputs(self, data: Any, labels: Any, class_names: Any) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor, list[str]]:
        is_pool = hasattr(data, "embeds") and hasattr(data, "check_compatible")
        if is_pool:
            data.check_compatible(self.model)
            if labels is None:
                if not data.is_labelled:
                    raise InputError("the task's feature pool is unlabelled: give labels=")
                if class_names is None:
                    labels = data.labels
                else:  # the pool's labels re-indexed into the given class order
                    from edgeclip.runtime.methods.coop import pool_labels_for

                    labels = pool_labels_for(data, validate_class_names(class_names), "the task's pool")
            if class_names is None:
                class_names = data.class_names
        if class_names is None or labels is None:
            raise InputError("learn_task needs labels and class_names (or a labelled FeaturePool)")
        if not isinstance(class_names, str) and len(list(class_names)) == 0:
            raise ClassNameError("an empty task: give at least one class name")
        names = validate_class_names(class_names)
        if is_pool and len(data) == 0:
            raise InputError("an empty task: the pool holds no images")
        if isinstance(data, (list, tuple)) and len(data) == 0:
            raise InputError("an empty task: no images given")
        embeds, valid = self._as_embeds(data)
        embeds, valid = self._fit_views(embeds, valid)
        y = torch.as_tensor(labels)
        if y.dim() != 1 or y.shape[0] != embeds.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise InputError(f"labels must be {embeds.shape[0]} integer class indices, one per image, got "
                             f"{y.dtype} {list(y.shape)}")
        y = y.long()
        bad = (y < 0) | (y >= len(names))
        if bool(bad.any()):
            raise InputError(f"labels must index this task's {len(names)} classes (0..{len(names) - 1}); got "
                             f"{sorted(set(y[bad].tolist()))[:8]} (unknown classes)")
        missing = [names[c] for c in range(len(names)) if not bool((y == c).any())]
        if missing:
            raise InputError(f"class(es) {missing[:8]} have no images in this task")
        return embeds, valid, y, names

    def _learn(self, data: Any, labels: Any, class_names: Any, *, save_to: str | Path | None,
               progress: bool) -> FitReport:
        if self._created_names and not self.task_sizes:
            raise InputError(f"this clap was created for the classes {self._created_names[:8]} and holds no learnt "
                             "state (it predicts as Continual-CLIP, zero-shot with the template ensemble): create "
                             "it with no classes to learn tasks, or load a head")
        embeds, valid, y, names = self._task_inputs(data, labels, class_names)
        fingerprint = _digest(embeds, valid.to(torch.uint8), y, extra=names)
        for k, (done, fp) in enumerate(zip(self.tasks, self.task_prints, strict=True)):
            if done == names and fp == fingerprint:
                log.info("clap: task %d (%s) is already learnt; skipping it", k + 1, ", ".join(names[:4]))
                return self._report_from(self.reports[k], resumed=True)
        seen = {norm_name(c) for c in self.class_names}
        again = [c for c in names if norm_name(c) in seen]
        if again:
            raise ClassNameError(f"the task repeats class(es) {again[:8]} learnt in an earlier task; a task brings "
                                 f"new classes only (seen: {self.class_names[:8]}{'…' if len(seen) > 8 else ''}); "
                                 "the very same task (classes and data) again is recognised and skipped")
        snapshot = self._adapted_state()
        try:
            report = self._train_task(embeds, valid, y, names, fingerprint, progress)
        except BaseException:
            self._load_adapted_state(snapshot)  # an interrupted task leaves the learner as it was before it
            raise
        if save_to is not None:
            path = self.save_head(save_to)
            report.extra["saved_to"] = str(path)
            log.info("clap: task %d saved to %s", self.n_tasks, path)
        return report

    def _report_from(self, info: Mapping[str, Any], *, resumed: bool = False) -> FitReport:
        r = FitReport(self.name, int(info["epochs"]), int(info["steps"]), float(info["seconds"]),
                      int(info["n_train"]), 0, list(info["train_loss"]), [], None, int(info["skipped_steps"]),
                      dict(info.get("extra", {})))
        if resumed:
            r.extra["resumed"] = True
        return r

    def _train_task(self, embeds: torch.Tensor, valid: torch.Tensor, y_local: torch.Tensor, names: list[str],
                    fingerprint: str, progress: bool) -> FitReport:
        cfg = self.config
        t0 = time.perf_counter()
        k = self.n_tasks
        offset = len(self.class_names)
        text, mean, var = self.template_features(names)
        self.class_names = self.class_names + names
        self.task_sizes = [*self.task_sizes, len(names)]
        self.text = torch.cat([self.text, text])
        self.text_mean = torch.cat([self.text_mean, mean])
        self.text_var = torch.cat([self.text_var, var])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(cfg.seed, k, 0xADA))
            adapter = TaskAdapter(self.dim)
        adapter.init_from_templates(self.text_mean, self.text_var)  # every class seen so far, as the official code
        self.adapters.append(adapter)
        self.novelty_threshold = self.novelty_fpr = None
        y = y_local + offset
        # 1. the task: its data and the memory; the attention and the new adapters train, older adapters frozen
        x_emb = torch.cat([embeds, self.memory.embeds])
        x_val = torch.cat([valid, self.memory.valid])
        x_y = torch.cat([y, self.memory.labels])
        self.vga.requires_grad_(True)
        for i, a in enumerate(self.adapters):
            a.requires_grad_(i == k)
        lr = cfg.lr * cfg.batch_size / 20
        main = self._run_epochs(x_emb, x_val, x_y, epochs=cfg.epochs, lr=lr, warmup=True, reg_tasks=[k],
                                attention_train=True, seed=_seed(cfg.seed, k, 1), progress=progress,
                                desc=f"clap task {k + 1}")
        # 2. the memory, rebuilt with the task's exemplars
        self.vga.requires_grad_(False)
        for a in self.adapters:
            a.requires_grad_(False)
        self._update_memory(embeds, valid, y, seed=_seed(cfg.seed, k, 2))
        # 3. the class-balanced fine-tune (from the second task on): attention frozen, every adapter trainable
        fine: dict[str, Any] = {"steps": 0, "losses": [], "skipped": 0}
        if k > 0 and cfg.finetune and len(self.memory):
            for a in self.adapters:
                a.requires_grad_(True)
            fine = self._run_epochs(self.memory.embeds, self.memory.valid, self.memory.labels,
                                    epochs=cfg.finetune_epochs, lr=lr / 10, warmup=False,
                                    reg_tasks=list(range(k + 1)), attention_train=False,
                                    seed=_seed(cfg.seed, k, 3), progress=progress, desc=f"clap fine-tune {k + 1}")
            for a in self.adapters:
                a.requires_grad_(False)
        self.vga.eval()
        seconds = time.perf_counter() - t0
        counts = self.memory.counts(len(self.class_names)).tolist()
        info = {"task": k + 1, "classes": names, "epochs": cfg.epochs, "steps": main["steps"] + fine["steps"],
                "seconds": seconds, "n_train": int(x_emb.shape[0]), "train_loss": main["losses"],
                "skipped_steps": main["skipped"] + fine["skipped"],
                "extra": {"task": k + 1, "classes": names, "n_task_images": int(embeds.shape[0]),
                          "n_memory_used": int(x_emb.shape[0] - embeds.shape[0]), "finetune_loss": fine["losses"],
                          "finetune_steps": fine["steps"], "memory_size": len(self.memory),
                          "memory_per_class": counts, "lr": lr}}
        self.reports.append(info)
        self.task_prints = [*self.task_prints, fingerprint]
        self.skipped_steps += info["skipped_steps"]
        return self._report_from(info)

    def _run_epochs(self, emb: torch.Tensor, valid: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                    warmup: bool, reg_tasks: list[int], attention_train: bool, seed: int, progress: bool,
                    desc: str) -> dict[str, Any]:
        """Plain SGD over (`emb`, `valid`, `y`) with the official schedule; returns steps, epoch losses, skips."""
        cfg = self.config
        n = emb.shape[0]
        bs = cfg.batch_size
        if n < bs:
            lr = lr * n / bs  # the official rule for a dataset smaller than one batch
        steps_per_epoch = math.ceil(n / bs)
        total = epochs * steps_per_epoch
        lrs = cosine_warmup_lrs(total, lr, int(cfg.warmup_fraction * total) if warmup else 0)
        params = [p for p in [*self.vga.parameters(), *self.adapters.parameters()] if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(seed)
        self.vga.train(attention_train)
        losses: list[float] = []
        step = skipped = 0
        from tqdm.auto import tqdm

        with torch.random.fork_rng(devices=[]):  # the attention's dropout draws from the seeded global stream
            torch.manual_seed(seed)
            for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress):
                order = torch.randperm(n, generator=g)
                total_loss, counted = 0.0, 0
                for i in range(0, n, bs):
                    rows = order[i:i + bs]
                    e, v = emb[rows], valid[rows]
                    # the classified feature is a random one of the image's own views (augmentation)
                    n_valid = v.sum(1)
                    pick = (torch.rand(len(rows), generator=g) * n_valid).long().clamp(max=v.shape[1] - 1)
                    query = e[torch.arange(len(rows)), pick]
                    eps = self._mc_noise(g)
                    for group in opt.param_groups:
                        group["lr"] = float(lrs[step])
                    logits, mu, sigma = self._forward(query, e, v, eps)
                    m, b, c = logits.shape
                    ce = F.cross_entropy(logits.reshape(m * b, c), y[rows].repeat(m))
                    kl, lang = self._regulariser(mu, sigma, eps, reg_tasks)
                    loss = ce + kl + lang
                    step += 1
                    if not finite_step(opt, loss):
                        skipped += 1
                        continue
                    total_loss += float(loss.detach()) * len(rows)
                    counted += len(rows)
                losses.append(total_loss / max(1, counted))
        self.vga.eval()
        return {"steps": step, "losses": losses, "skipped": skipped}

    def _update_memory(self, embeds: torch.Tensor, valid: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        """Rebuild the memory: per class at most the quota, from its old exemplars or (new class) the task's data."""
        cfg = self.config
        n_classes = len(self.class_names)
        quota = per_class_quota(n_classes, cfg.memory_per_class, cfg.memory_total)
        if quota == 0:
            log.warning("clap: the memory bound (%s in all, %d per class) leaves no exemplar for %d classes",
                        cfg.memory_total, cfg.memory_per_class, n_classes)
        g = torch.Generator().manual_seed(seed)
        old = self.memory
        parts_e, parts_v, parts_y = [], [], []
        first_new = n_classes - self.task_sizes[-1]
        for c in range(n_classes):
            if c < first_new:
                rows = old.of_class(c)
                ce, cv = old.embeds[rows], old.valid[rows]
            else:
                rows = torch.nonzero(y == c).flatten()
                ce, cv = embeds[rows], valid[rows]
            if len(rows) == 0 or quota == 0:
                continue
            logits = None if cfg.selector == "random" else self.mc_logits(ce, cv)
            order = selection_order(cfg.selector, logits, len(rows), g, keep_order=c < first_new)[:quota]
            parts_e.append(ce[order])
            parts_v.append(cv[order])
            parts_y.append(torch.full((len(order),), c, dtype=torch.int64))
        if parts_e:
            self.memory = RehearsalMemory(torch.cat(parts_e), torch.cat(parts_v), torch.cat(parts_y))
        else:
            self.memory = RehearsalMemory.empty(cfg.memory_views, self.dim)


def open_learner(model: EdgeClip, head: str | Path, **overrides: Any) -> CLAP:
    """The learner saved at `head` when that file exists (a resumed run), else a new one with `overrides`."""
    from edgeclip.runtime.methods.registry import create_method

    path = Path(head).expanduser()
    if path.is_file():
        method = create_method("clap", model, None, head=path, **overrides)
    else:
        method = create_method("clap", model, [], **overrides)
    assert isinstance(method, CLAP)
    return method

