"""SHIP — synthesized prompts (Wang et al., ICCV 2023): a CoOp prompt for classes that have no images.

Two stages, both on a labelled `FeaturePool` of the **base** classes (cached, L2-normalised image embeddings;
the pool's augmented views — random resized crops 50–100 % with flips, `ViewPolicy.extra_views` — are samples):

1. **VAE.** An encoder ``Linear(D→2048)+ReLU`` with heads μ, log σ² (``Linear(2048→D)``) maps an image
   feature x to z = μ + σ·ε; a generator ``Linear(D→4096)+ReLU+Linear(4096→W)`` (every Linear N(0, 0.02),
   bias 0) maps z to one bias b that is added to all four learnable context vectors of the prompt
   ``ctx₁..ctx₄ {class}.`` (the context starts at N(0, 0.02)); the prompt goes through the frozen text tower
   and, normalised, is the reconstruction x̂. Loss ``Σ_d (x̂ − x)² + KL(N(μ, σ²) ‖ N(0, I))`` (both summed
   over dimensions, averaged over the batch); AdamW lr 1e-3, batch 256, 50 epochs. W is the text tower's
   width (equal to D in CLIP ViT-B).
2. **Prompt.** Every ``prompt_every`` VAE epochs (and after the last) a fresh CoOp prompt (``"a photo of a"``)
   is trained over base + new classes: each step takes a batch of real base features plus one synthetic
   feature per real one, for a new class drawn uniformly (z ~ N(0, I) through the generator with the new
   class name), cross-entropy on ``logit_scale · cos`` (100). The prompt of the run that is best on the
   validation pool is kept (base accuracy among base classes, new accuracy among new classes, their harmonic
   mean when the validation pool has both; base accuracy alone otherwise); without one, the last run.
   The `FitReport` has the VAE loss per epoch (``train_loss``), the validation score per prompt run
   (``val_accuracy``), the VAE epoch of the kept run (``best_epoch``) and each run in ``extra["prompt_runs"]``.

The new classes are part of the method's class list and named in the config (``new_classes``), so `fit`
keeps the `Trainable` signature and the head's header records which classes were synthesised. The head holds
the learnt prompt context over all classes (the VAE is not needed to predict); prediction is zero-shot with
that context through the exported text encoder, like CoOp.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgeclip.errors import ClassNameError, InputError
from edgeclip.runtime.methods.base import FitReport, Trainable
from edgeclip.runtime.methods.config import check_finite, check_positive_int
from edgeclip.runtime.methods.coop import ContextHead, CoOpConfig, optim_settings, pool_labels_for
from edgeclip.runtime.methods.prompt_training import finite_step, train_context
from edgeclip.runtime.methods.pseudolabel import harmonic_mean
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.pool_sources import norm_name
from edgeclip.runtime.prompt import PromptContext

__all__ = ["SHIP", "SHIPConfig", "ShipVAE", "base_new_accuracy", "biased_prompts", "vae_loss"]

log = logging.getLogger(__name__)


def _prompt_default() -> CoOpConfig:
    # the official prompt stage: "a photo of a", plain SGD 2e-3 with a cosine schedule, batch 256 real features
    return CoOpConfig(init="a photo of a", epochs=50, batch_size=256, lr=2e-3, momentum=0.0, weight_decay=0.0,
                      warmup_epochs=0)


@dataclass(frozen=True)
class SHIPConfig:
    """SHIP's settings: the VAE stage (the paper's), then the CoOp prompt stage (``prompt``, a `CoOpConfig`)."""

    # classes among the method's classes that have no images (synthesised); the others are the base classes
    new_classes: tuple[str, ...] = ()
    # learnable context vectors of the generator's prompt (SHIP: 4, random start)
    vae_n_ctx: int = 4
    # standard deviation of that context's random start
    vae_ctx_std: float = 0.02
    # hidden width of the encoder (SHIP: 2048)
    encoder_hidden: int = 2048
    # hidden width of the generator (SHIP: 4096)
    generator_hidden: int = 4096
    # standard deviation of every Linear weight of the VAE at creation (biases start at 0)
    weight_std: float = 0.02
    # passes of the VAE over the training pool (SHIP: 50)
    vae_epochs: int = 50
    # samples (pool views) per VAE step (SHIP: 256)
    vae_batch_size: int = 256
    # AdamW learning rate of the encoder, generator and context (SHIP: 1e-3)
    vae_lr: float = 1e-3
    # AdamW weight decay (torch's default, as in SHIP)
    vae_weight_decay: float = 0.01
    # weight of the KL term (SHIP: 1)
    kl_weight: float = 1.0
    # VAE epochs between two prompt runs (SHIP: 10); a run also follows the last epoch
    prompt_every: int = 10
    # logit scale of the prompt stage's cross-entropy (SHIP: 100)
    logit_scale: float = 100.0
    # synthetic features per real one in a prompt step (SHIP: 1)
    synthetic_per_real: int = 1
    # the prompt stage: context start, epochs, batch size (real features) and SGD settings
    prompt: CoOpConfig = field(default_factory=_prompt_default)
    # seed of the VAE's start, its noise, the shuffling and the synthetic draws
    vae_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.new_classes, str) or not all(isinstance(c, str) for c in self.new_classes):
            raise InputError(f"new_classes must be a tuple of class names, got {self.new_classes!r}")
        object.__setattr__(self, "new_classes", tuple(self.new_classes))
        for name in ("vae_n_ctx", "encoder_hidden", "generator_hidden", "vae_epochs", "vae_batch_size",
                     "prompt_every", "synthetic_per_real"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("vae_seed", self.vae_seed, minimum=0)
        for name in ("vae_ctx_std", "weight_std", "vae_lr", "logit_scale"):
            check_finite(name, getattr(self, name), strict=True)
        check_finite("vae_weight_decay", self.vae_weight_decay)
        check_finite("kl_weight", self.kl_weight)
        if not isinstance(self.prompt, CoOpConfig):
            raise InputError(f"prompt must be a CoOpConfig, got {type(self.prompt).__name__}")


class ShipVAE(nn.Module):
    """The encoder (x → μ, log σ²) and the generator (z → one prompt bias ``[W]``)."""

    def __init__(self, dim: int, width: int, encoder_hidden: int = 2048, generator_hidden: int = 4096,
                 std: float = 0.02, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.encoder = nn.Sequential(nn.Linear(dim, encoder_hidden), nn.ReLU())
        self.mean = nn.Linear(encoder_hidden, dim)
        self.log_var = nn.Linear(encoder_hidden, dim)
        self.generator = nn.Sequential(nn.Linear(dim, generator_hidden), nn.ReLU(), nn.Linear(generator_hidden, width))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                    m.bias.zero_()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² ``[B, D]`` of image features ``[B, D]``."""
        h = self.encoder(x)
        return self.mean(h), self.log_var(h)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(bias [B, W], μ, log σ²)`` with z = μ + σ·eps."""
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * eps
        return self.generator(z), mu, log_var


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, reconstruction, KL)``: squared error and KL to N(0, I), each summed over dimensions and
    averaged over the batch; loss = reconstruction + kl_weight · KL."""
    rec = (recon - x).pow(2).sum(dim=1).mean()
    kl = (-0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp())).sum(dim=1).mean()
    return rec + kl_weight * kl, rec, kl


def biased_prompts(prompt: PromptContext, class_names: Sequence[str], labels: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings ``[B, L, W]`` of ``(ctx₁+b)…(ctx_n+b) {class}.`` for each sample's class ``labels[i]``
    (into `class_names`) and bias ``bias[i]`` (one vector added to every context vector), and EOT positions."""
    tokens, eot = prompt.build(class_names)
    labels = labels.to(tokens.device)
    seq = tokens[labels]
    n = prompt.n_ctx
    seq = torch.cat([seq[:, :1], seq[:, 1 : 1 + n] + bias.to(seq.dtype).unsqueeze(1), seq[:, 1 + n :]], dim=1)
    return seq, eot[labels]


def base_new_accuracy(logits: torch.Tensor, labels: torch.Tensor, base: Sequence[int],
                      new: Sequence[int]) -> dict[str, float | None]:
    """The base-to-new protocol on logits ``[N, C]`` over all classes: ``base`` accuracy of the base-class rows
    among the base classes only, ``new`` accuracy of the new-class rows among the new classes only, and
    their harmonic mean ``H`` (None for a side with no rows)."""
    out: dict[str, float | None] = {"base": None, "new": None, "H": None}
    for key, cols in (("base", list(base)), ("new", list(new))):
        idx = torch.tensor(cols, dtype=torch.int64)
        rows = torch.isin(labels, idx)
        if cols and bool(rows.any()):
            pred = idx[logits[rows][:, idx].argmax(dim=1).cpu()]
            out[key] = float((pred == labels[rows].cpu()).float().mean())
    b, n = out["base"], out["new"]
    if b is not None and n is not None:
        out["H"] = harmonic_mean(b, n)
    return out


class SHIP(ContextHead, Trainable):
    """CoOp prompt over base + new classes, trained with synthetic new-class features (module docstring)."""

    name = "ship"
    config_class = SHIPConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: SHIPConfig | None = None) -> None:
        super().__init__(model, class_names, config)
        cfg = self.config
        index = {norm_name(c): i for i, c in enumerate(self.class_names)}
        seen: set[str] = set()
        for c in cfg.new_classes:
            key = norm_name(c)
            if key not in index:
                raise ClassNameError(f"new class {c!r} is not among the method's classes; the class list must hold "
                                     "the base classes and the new ones")
            if key in seen:
                raise ClassNameError(f"new class {c!r} is listed twice")
            seen.add(key)
        self.new_index = sorted(index[norm_name(c)] for c in cfg.new_classes)
        self.base_index = [i for i in range(len(self.class_names)) if i not in set(self.new_index)]
        if not self.base_index:
            raise ClassNameError("every class is listed as new: SHIP needs base classes with images")
        self.tower = model.text_tower
        self.tower.requires_grad_(False)
        self._generator: tuple[ShipVAE, PromptContext] | None = None
        p = cfg.prompt
        if p.init is None:
            g = torch.Generator().manual_seed(p.seed)
            init: str | torch.Tensor = torch.randn(p.n_ctx, self.tower.width, generator=g) * p.init_std
        else:
            init = p.init
        self.prompt = model.prompt_context(init)
        self.shared_prefix = self.tower.supports_shared_prefix()
        self.fitted = False
        self._text: torch.Tensor | None = None

    @property
    def base_classes(self) -> list[str]:
        return [self.class_names[i] for i in self.base_index]

    @property
    def new_classes(self) -> list[str]:
        return [self.class_names[i] for i in self.new_index]

    # -- text ----------------------------------------------------------------------------------------------
    def _train_text(self) -> torch.Tensor:
        """Normalised class text ``[C, D]`` under the prompt context, with gradient to the context."""
        if self.shared_prefix:
            prefix, rest, eot = self.prompt.build_split(self.class_names)
            out = self.tower.forward_shared_prefix(prefix, rest, eot)
        else:
            tokens, eot = self.prompt.build(self.class_names)
            out = self.tower(tokens, eot)
        return F.normalize(out.float(), dim=-1)

    # -- fit -----------------------------------------------------------------------------------------------
    def _check_pool(self, pool: Any) -> torch.Tensor:
        pool.check_compatible(self.model)
        labels = pool_labels_for(pool, self.class_names)
        new = torch.tensor(self.new_index, dtype=torch.int64)
        bad = sorted({self.class_names[i] for i in labels[torch.isin(labels, new)].tolist()})
        if bad:
            raise ClassNameError(f"the training pool has images of {bad[:8]}, which are listed as new classes "
                                 "(new classes have no images; list them as base classes)")
        missing = [self.class_names[i] for i in self.base_index if not bool((labels == i).any())]
        if missing:
            raise InputError(f"base classes {missing[:8]} have no images in the training pool; give images or "
                             "list them in new_classes")
        if not self.new_index:
            raise InputError("SHIP needs at least one new class (config new_classes); with none, train coop")
        return labels

    def synthesize(self, vae: ShipVAE, vae_prompt: PromptContext, n: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` synthetic features ``[n, D]`` (normalised) and their classes ``[n]`` (indices into the class list),
        each class drawn uniformly from the new classes, z ~ N(0, I) through the generator (no gradient)."""
        new = torch.tensor(self.new_index, dtype=torch.int64)
        classes = new[torch.randint(len(new), (n,), generator=generator)]
        z = torch.randn(n, vae.dim, generator=generator).to(self.device)
        with torch.no_grad():
            bias = vae.generator(z)
            seq, eot = biased_prompts(vae_prompt, self.class_names, classes, bias)
            feats = F.normalize(self.tower(seq, eot).float(), dim=-1)
        return feats, classes

    def prompt_logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The prompt stage's logits ``logit_scale · cos(image, text)`` ``[B, C]`` over all classes (gradient to
        the context)."""
        return self.config.logit_scale * F.normalize(image_embeds, dim=-1) @ self._train_text().T

    def _score(self, val_x: torch.Tensor, val_y: torch.Tensor) -> dict[str, float | None]:
        with torch.no_grad():
            logits = val_x.to(self.device) @ self._train_text().T
        scores = base_new_accuracy(logits, val_y, self.base_index, self.new_index)
        scores["score"] = scores["H"] if scores["H"] is not None else scores["base"]
        return scores

    def _train_prompt(self, x: torch.Tensor, y: torch.Tensor, synth: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                      report: FitReport, progress: bool) -> list[float]:
        """One fresh prompt run on real features `x`, `y` plus `synth(k)` synthetic ones per batch of k real
        ones (`train_context` with `prompt_logits`, the config's logit scale); the per-epoch losses."""
        cfg = self.config
        self.prompt.reset()

        def augment(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fake_x, fake_y = synth(len(yb) * cfg.synthetic_per_real)
            return torch.cat([xb, fake_x]), torch.cat([yb, fake_y.to(yb.device)])

        run = FitReport(self.name, cfg.prompt.epochs, 0, 0.0, len(y), 0)
        report.steps += train_context(self, x, y, optim_settings(cfg.prompt), run, augment=augment,
                                      logits_fn=self.prompt_logits, progress=progress, desc="ship prompt",
                                      leave=False)
        report.skipped_steps += run.skipped_steps
        return run.train_loss

    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        cfg = self.config
        labels = self._check_pool(pool)
        x = F.normalize(pool.embeds.reshape(-1, pool.dim).float(), dim=-1)  # every view is a sample
        y = labels.repeat_interleave(pool.n_views)
        val_x = val_y = None
        if val is not None:
            val.check_compatible(self.model)
            val_y = pool_labels_for(val, self.class_names, "the validation pool")
            val_x = F.normalize(val.plain.float(), dim=-1)
        g = torch.Generator().manual_seed(cfg.vae_seed)
        vae = ShipVAE(pool.dim, self.tower.width, cfg.encoder_hidden, cfg.generator_hidden, cfg.weight_std,
                      generator=g).to(self.device)
        vae_prompt = self.model.prompt_context(torch.randn(cfg.vae_n_ctx, self.tower.width, generator=g)
                                               * cfg.vae_ctx_std)
        optimizer = torch.optim.AdamW([*vae.parameters(), vae_prompt.ctx], lr=cfg.vae_lr,
                                      weight_decay=cfg.vae_weight_decay)
        report = FitReport(self.name, cfg.vae_epochs, 0, 0.0, len(pool), 0 if val is None else len(val))
        runs: list[dict[str, Any]] = []
        best: tuple[float, int, torch.Tensor] | None = None
        last_ctx: torch.Tensor | None = None
        t0 = time.perf_counter()
        from tqdm.auto import tqdm

        def synth(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.synthesize(vae, vae_prompt, n, g)

        bar = tqdm(range(cfg.vae_epochs), desc="ship vae", unit="epoch", disable=not progress)
        for epoch in bar:
            vae.train()
            order = torch.randperm(len(y), generator=g)
            losses = []
            for start in range(0, len(y), cfg.vae_batch_size):
                idx = order[start : start + cfg.vae_batch_size]
                xb = x[idx].to(self.device)
                eps = torch.randn(xb.shape, generator=g).to(self.device)
                bias, mu, log_var = vae(xb, eps)
                seq, eot = biased_prompts(vae_prompt, self.class_names, y[idx], bias)
                recon = F.normalize(self.tower(seq, eot).float(), dim=-1)
                loss, _, _ = vae_loss(recon, xb, mu, log_var, cfg.kl_weight)
                report.steps += 1
                if not finite_step(optimizer, loss):
                    report.skipped_steps += 1
                    continue
                losses.append(float(loss.detach()))
            report.train_loss.append(sum(losses) / max(1, len(losses)))
            bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}")
            if (epoch + 1) % cfg.prompt_every and epoch + 1 != cfg.vae_epochs:
                continue
            vae.eval()
            prompt_losses = self._train_prompt(x, y, synth, report, progress)
            run: dict[str, Any] = {"vae_epoch": epoch, "prompt_loss": prompt_losses}
            last_ctx = self.prompt.ctx.detach().clone()
            if val_x is not None and val_y is not None:
                scores = self._score(val_x, val_y)
                run.update({f"val_{k}": v for k, v in scores.items()})
                report.val_accuracy.append(float(scores["score"] or 0.0))
                bar.set_postfix(loss=f"{report.train_loss[-1]:.3f}", val=f"{report.val_accuracy[-1]:.3f}")
                if best is None or report.val_accuracy[-1] > best[0]:
                    best = (report.val_accuracy[-1], epoch, last_ctx)
            log.info("ship: prompt run after VAE epoch %d: %s", epoch + 1, run)
            runs.append(run)
        if best is not None:
            report.best_epoch, kept = best[1], best[2]
        else:
            report.best_epoch, kept = runs[-1]["vae_epoch"], last_ctx
        with torch.no_grad():
            self.prompt.ctx.copy_(kept)
        report.seconds = time.perf_counter() - t0
        report.extra.update({
            "prompt_runs": runs,
            "kept_run": [r["vae_epoch"] for r in runs].index(report.best_epoch),
            "selected_on": "validation" if best is not None else "last run (no validation pool)",
            "base_classes": self.base_classes, "new_classes": self.new_classes,
            "train_accuracy": self._score(F.normalize(pool.plain.float(), dim=-1), labels)["base"],
        })
        self.fitted = True
        self._text = None
        self._generator = (vae.eval(), vae_prompt)
        return report

    def synthetic_features(self, n_per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """`n_per_class` synthetic features of every new class from the last `fit`'s generator (not kept in a
        head: only a fitted instance has it): ``([n·C_new, D] normalised, [n·C_new] class indices)``. To check
        how close the synthesised features come to real images of the new classes."""
        check_positive_int("n_per_class", n_per_class)
        if self._generator is None:
            raise InputError("synthetic_features needs the generator of a fit in this process (heads do not keep it)")
        vae, vae_prompt = self._generator
        g = torch.Generator().manual_seed(seed)
        classes = torch.tensor(self.new_index, dtype=torch.int64).repeat_interleave(n_per_class)
        z = torch.randn(len(classes), vae.dim, generator=g).to(self.device)
        with torch.no_grad():
            seq, eot = biased_prompts(vae_prompt, self.class_names, classes, vae.generator(z))
            return F.normalize(self.tower(seq, eot).float(), dim=-1), classes
