"""Pseudo-label prompt tuning — FPL, IFPL, GRIP (Menghini et al., NeurIPS 2023).

A textual prompt (``n_ctx`` = 16 context vectors shared by all classes, random N(0, 0.02) start, in front of
the class name) is trained with CoOp's loop (`edgeclip.runtime.methods.prompt_training`) on pseudo-labels of an
unlabeled `FeaturePool` (cached image embeddings: a round costs text-tower work only).

* **Pseudo-labels.** The labeller scores every unlabeled image (its plain view) against the classes that get
  pseudo-labels; per class a top-K leaderboard of the most confident images, no threshold. Each image goes to
  at most one class: (image, class) pairs are taken by descending confidence and a pair is skipped when its
  image is already labelled or its class is full (`assign_top_k`). The official code can give one image several
  labels; edgeclip does not. With K·C ≤ |U| every class gets exactly K.
* **Strategies.** FPL: one round, K = ``k`` (16), labels from zero-shot CLIP ("a photo of a {}."). IFPL:
  ``rounds`` (10) rounds, K = ``k``, round t > 1 relabels the pool with the prompt of round t − 1. GRIP: the
  same, with K growing: round t (1-based) uses K_t = min(⌊t·|U|/(R·C)⌋, ⌊|U|/C⌋), R = ``rounds`` (10), so
  K₁ = ⌊|U|/(10·C)⌋ and the last round labels all of U (`k_schedule`).
* **Re-initialisation.** Every round starts from the initial context (the paper); ``warm_start=True`` starts
  from the previous round's (what the official code does, by aliasing).
* **Paradigms.** UL: mean CE on the pseudo-labels. SSL (a labelled pool too): one sample one vote — the mean CE
  over the batch's labelled and pseudo-labelled samples together, i.e. in expectation proportional to
  CE_L + (|P|/|L|)·CE_P (the official FPL ratio; its IFPL/GRIP use |L|/|P|, which edgeclip does not follow).
  TRZSL: the labelled pool holds the seen classes (``seen``, default the labelled pool's classes), the
  unseen classes get the pseudo-labels (the labeller scores the unseen classes only), loss CE_seen +
  (|seen|/|unseen|)·CE_unseen with |·| the image counts (as the official code), each CE the batch mean of its
  samples; the selection metric is the harmonic mean of seen and unseen accuracy. As in the paper the unlabeled
  pool should hold images of the unseen classes only: every image gets an unseen label in GRIP's last round
  (K = |U|/|unseen|), so seen-class images in the pool become wrong pseudo-labels.
* **Selection.** Per round the epoch with the best validation score is kept: on ``val`` (a labelled pool)
  when given, else on ``val_fraction`` of each class's pseudo-labels held out of that round's training (and, in
  TRZSL, of the seen labelled images). The final prompt is the last round's.
* **Resume.** With a ``work_dir`` each finished round is written atomically as ``round-NNN.safetensors``
  (the context, that round's report, and a fingerprint of config, classes, bundle and pools); an interrupted
  fit with the same inputs resumes after the last finished round and ends with the same prompt.

``fit(unlabeled, *, val=None, progress=False, labeled=None, work_dir=None)`` keeps `Trainable.fit`'s
signature (the extra arguments are keyword-only); the seen classes are config (a head records them).

Where edgeclip departs from the official code (BatsResearch/menghini-neurips23-code): one label per image (see
above); the prompt re-initialised every round unless ``warm_start``; one SSL balance rule for every strategy;
the warm-up starts at lr/10, not 0; each round keeps its best validation epoch (the official code keeps the last
and leaves validation unused); pseudo-labels are held out for validation whenever a class has enough (the
official code: 20 % when K >= 10); 10 epochs per round by default instead of 150, since the features are cached
and the micro world needs fewer (``epochs`` and ``lr`` can be re-chosen, see `edgeclip.bench.pseudolabel_eval`).
Only the textual prompt is implemented (visual-token prompts need a differentiable image encoder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.errors import BundleError, ClassNameError, InputError
from edgeclip.runtime.classnames import validate_template
from edgeclip.runtime.identity import bundle_identity
from edgeclip.runtime.methods.base import FitReport
from edgeclip.runtime.methods.config import check_finite, check_positive_int, config_to_dict
from edgeclip.runtime.methods.coop import CoOp, optim_settings, pool_labels_for
from edgeclip.runtime.methods.prompt_training import train_context
from edgeclip.runtime.methods.zeroshot import image_logits
from edgeclip.runtime.model import DEFAULT_TEMPLATE, EdgeClip
from edgeclip.runtime.pool_sources import norm_name
from edgeclip.runtime.safetensors_io import atomic_save, read

__all__ = ["PARADIGMS", "STRATEGIES", "PseudoLabel", "PseudoLabelConfig", "assign_top_k", "harmonic_mean",
           "k_schedule"]

log = logging.getLogger(__name__)

STRATEGIES = ("fpl", "ifpl", "grip")
PARADIGMS = ("ul", "ssl", "trzsl")
CHECKPOINT_FORMAT = "edgeclip.pseudolabel.round"


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Pseudo-label prompt tuning settings (the paper's optimiser; fewer epochs, since the features are cached)."""

    # fpl (one round, K = k), ifpl (rounds rounds, K = k), grip (rounds rounds, K grows to |U|/C)
    strategy: str = "grip"
    # ul (no labels), ssl (a few labels per class + pseudo-labels), trzsl (labelled seen, pseudo-labelled unseen)
    paradigm: str = "ul"
    # rounds of pseudo-labelling and training; None = the strategy's (fpl 1, ifpl and grip 10)
    rounds: int | None = None
    # pseudo-labels per class of fpl and ifpl (the paper: 16); grip computes its own K per round
    k: int = 16
    # start every round from the previous round's context instead of the initial one (the paper re-initialises)
    warm_start: bool = False
    # TRZSL's seen classes (they have labels); None = the labelled pool's classes; the rest are unseen
    seen: tuple[str, ...] | None = None
    # the zero-shot labeller's prompt, "{}" where the class name goes
    template: str = DEFAULT_TEMPLATE
    # words whose token embeddings start the context; None = random N(0, init_std) (the paper)
    init: str | None = None
    # context length for a random start (the paper: 16)
    n_ctx: int = 16
    # standard deviation of a random start (the paper: 0.02)
    init_std: float = 0.02
    # passes over a round's training samples (the paper: 150; features are cached, so fewer suffice)
    epochs: int = 10
    # samples (pool views) per step (the paper: 16)
    batch_size: int = 16
    # SGD learning rate after warm-up (the paper: 0.1)
    lr: float = 0.1
    # SGD momentum (the paper: 0.9)
    momentum: float = 0.9
    # SGD weight decay (the paper's config: 0.1)
    weight_decay: float = 0.1
    # linear warm-up epochs from lr/10 to lr (the first epoch never runs at lr 0)
    warmup_epochs: int = 1
    # share of each class's pseudo-labels (and of TRZSL's seen images) held out for selection when val is None
    val_fraction: float = 0.2
    # seed of the random start, the shuffling and the held-out split (round t uses seed + t)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.paradigm not in PARADIGMS:
            raise InputError(f"paradigm must be one of {PARADIGMS}, got {self.paradigm!r}")
        if self.rounds is not None:
            check_positive_int("rounds", self.rounds)
            if self.strategy == "fpl" and self.rounds != 1:
                raise InputError(f"fpl trains one round, got rounds={self.rounds} (use ifpl or grip for more)")
        check_positive_int("k", self.k)
        if not isinstance(self.warm_start, bool):
            raise InputError(f"warm_start must be True or False, got {self.warm_start!r}")
        if self.seen is not None:
            if isinstance(self.seen, str) or not all(isinstance(s, str) for s in self.seen):
                raise InputError(f"seen must be a list of class names, got {self.seen!r}")
            object.__setattr__(self, "seen", tuple(self.seen))
        validate_template(self.template)
        if self.init is not None and (not isinstance(self.init, str) or not self.init.strip()):
            raise InputError(f"init must be words or None (a random start), got {self.init!r}")
        check_positive_int("n_ctx", self.n_ctx)
        check_finite("init_std", self.init_std, strict=True)
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_finite("lr", self.lr, strict=True)
        check_finite("momentum", self.momentum)
        check_finite("weight_decay", self.weight_decay)
        check_positive_int("warmup_epochs", self.warmup_epochs, minimum=0)
        check_finite("val_fraction", self.val_fraction)
        if not self.val_fraction < 1.0:
            raise InputError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        check_positive_int("seed", self.seed, minimum=0)

    @property
    def n_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (1 if self.strategy == "fpl" else 10)


def k_schedule(strategy: str, n_unlabeled: int, n_classes: int, rounds: int, k: int = 16) -> list[int]:
    """Pseudo-labels per class in each round: fpl ``[k]``, ifpl ``[k] * rounds``, grip
    ``[min(⌊t·|U|/(rounds·C)⌋, ⌊|U|/C⌋) for t = 1..rounds]``."""
    if strategy == "fpl":
        return [k]
    if strategy == "ifpl":
        return [k] * rounds
    if strategy != "grip":
        raise InputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    cap = n_unlabeled // n_classes
    return [min(t * n_unlabeled // (rounds * n_classes), cap) for t in range(1, rounds + 1)]


def assign_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Pseudo-labels ``[N]`` (class index, -1 = none) from confidences ``[N, C]``: per class the K most confident
    images, each image in at most one class (pairs taken by descending confidence; ties by image, then class)."""
    n, c = scores.shape
    flat = scores.detach().float().cpu().numpy().reshape(-1)
    order = np.lexsort((np.arange(n * c), -flat))  # descending confidence, stable
    labels = np.full(n, -1, dtype=np.int64)
    room = np.full(c, k, dtype=np.int64)
    left = min(n, k * c)
    for pair in order:
        if left == 0:
            break
        i, j = divmod(int(pair), c)
        if labels[i] >= 0 or room[j] == 0:
            continue
        labels[i] = j
        room[j] -= 1
        left -= 1
    return torch.from_numpy(labels)


def harmonic_mean(a: float, b: float) -> float:
    """The harmonic mean of two accuracies (0 when either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _pool_print(pool: Any) -> Any:
    if pool is None:
        return None
    return {"items": hashlib.sha256(json.dumps(pool.items).encode()).hexdigest(), "embeds": _digest(pool.embeds),
            "labels": _digest(pool.labels), "classes": pool.class_names}


class PseudoLabel(CoOp):
    """Pseudo-label prompt tuning (see the module docstring); predicts like CoOp with its learnt context."""

    name = "pseudolabel"
    config_class = PseudoLabelConfig

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: PseudoLabelConfig | None = None) -> None:
        super().__init__(model, class_names, config)  # type: ignore[arg-type]
        cfg = self.config
        index = {norm_name(c): i for i, c in enumerate(self.class_names)}
        if cfg.seen is not None:
            unknown = [s for s in cfg.seen if norm_name(s) not in index]
            if unknown:
                raise ClassNameError(f"seen classes {unknown[:8]} are not among the method's classes")
        self._zs_text: torch.Tensor | None = None

    # -- labelling -----------------------------------------------------------------------------------------
    def zero_shot_text(self) -> torch.Tensor:
        """The labeller's class text embeddings ``[C, D]`` under ``config.template`` (normalised, cached)."""
        if self._zs_text is None:
            prompts = [self.config.template.format(c) for c in self.class_names]
            self._zs_text = F.normalize(self.model.encode_text(prompts).float(), dim=-1)
        return self._zs_text

    def confidences(self, embeds: torch.Tensor, classes: Sequence[int], *, zero_shot: bool) -> torch.Tensor:
        """Softmax over `classes` ``[N, len(classes)]`` of image embeddings ``[N, D]``, by zero-shot CLIP or by the
        current context."""
        text = self.zero_shot_text() if zero_shot else self.text_embeds()
        rows = torch.as_tensor(list(classes), dtype=torch.int64)
        with torch.no_grad():
            logits = image_logits(self.model, embeds.to(self.device), text[rows].to(self.device))
        return logits.softmax(dim=-1).cpu()

    def _seen_unseen(self, labeled: Any) -> tuple[list[int], list[int]]:
        index = {norm_name(c): i for i, c in enumerate(self.class_names)}
        if self.config.seen is not None:
            seen = sorted({index[norm_name(s)] for s in self.config.seen})
        else:
            seen = sorted({index[norm_name(c)] for c in labeled.class_names if norm_name(c) in index})
        unseen = [i for i in range(len(self.class_names)) if i not in set(seen)]
        if not unseen:
            raise ClassNameError("trzsl needs unseen classes (classes without labels), but every class is seen")
        if not seen:
            raise ClassNameError("trzsl needs seen classes with labels")
        return seen, unseen

    # -- fit -----------------------------------------------------------------------------------------------
    def fit(self, pool: Any, *, val: Any = None, progress: bool = False, labeled: Any = None,
            work_dir: str | Path | None = None) -> FitReport:
        """Train on the unlabeled `pool` (its labels, if any, are never used for training; they only measure the
        pseudo-labels). `labeled`: the labelled pool of ssl / trzsl. `val`: a labelled validation pool (default:
        held-out pseudo-labels). `work_dir`: where finished rounds are checkpointed and resumed from."""
        with self._lock:
            return self._fit_rounds(pool, val=val, progress=progress, labeled=labeled, work_dir=work_dir)

    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        return self._fit_rounds(pool, val=val, progress=progress, labeled=None, work_dir=None)

    def _fingerprint(self, pool: Any, labeled: Any, val: Any) -> str:
        key = {"config": config_to_dict(self.config), "classes": self.class_names,
               "bundle": bundle_identity(self.model.bundle)["files"], "unlabeled": _pool_print(pool),
               "labeled": _pool_print(labeled), "val": _pool_print(val)}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _check_inputs(self, pool: Any, labeled: Any, val: Any) -> tuple[list[int], list[int]]:
        """Check the pools against the model, the classes and the paradigm; ``(seen, pseudo-labelled classes)``."""
        cfg = self.config
        if pool is None or not hasattr(pool, "embeds"):
            raise InputError(f"pseudolabel fits on an unlabeled FeaturePool, got {type(pool).__name__}")
        pool.check_compatible(self.model)
        if len(pool) == 0:
            raise InputError("the unlabeled pool holds no images")
        seen: list[int] = []
        classes = list(range(len(self.class_names)))
        if cfg.paradigm == "ul":
            if labeled is not None:
                raise InputError("paradigm ul trains on pseudo-labels only; pass labeled= with paradigm ssl or trzsl")
        else:
            if labeled is None:
                raise InputError(f"paradigm {cfg.paradigm} needs a labelled pool (labeled=)")
            labeled.check_compatible(self.model)
            lab_y = pool_labels_for(labeled, self.class_names, "the labelled pool")
            if cfg.paradigm == "trzsl":
                seen, classes = self._seen_unseen(labeled)
                stray = sorted({self.class_names[int(c)] for c in lab_y.unique() if int(c) not in set(seen)})
                if stray:
                    raise ClassNameError(f"the labelled pool has images of {stray[:8]}, which are not seen classes "
                                         f"(seen: {[self.class_names[i] for i in seen][:8]})")
        if val is not None:
            val.check_compatible(self.model)
            pool_labels_for(val, self.class_names, "the validation pool")
        return seen, classes

    def _fit_rounds(self, pool: Any, *, val: Any, progress: bool, labeled: Any,
                    work_dir: str | Path | None) -> FitReport:
        cfg = self.config
        seen, pl_classes = self._check_inputs(pool, labeled, val)
        val_y = None if val is None else pool_labels_for(val, self.class_names, "the validation pool")
        n_u, n_c = len(pool), len(pl_classes)
        ks = k_schedule(cfg.strategy, n_u, n_c, cfg.n_rounds, cfg.k)
        if ks[0] < 1:
            raise InputError(f"grip's first round gets ⌊{n_u}/({cfg.n_rounds}·{n_c})⌋ = 0 pseudo-labels per class: "
                             f"the unlabeled pool needs at least {cfg.n_rounds * n_c} images for {n_c} classes")
        truth = self._truth(pool)
        # TRZSL: a share of the seen labelled images held out for selection (fixed over the rounds)
        lab_train, lab_val = labeled, None
        if cfg.paradigm == "trzsl" and val is None and cfg.val_fraction > 0 and len(labeled) > 1:
            try:
                lab_train, lab_val = labeled.split(cfg.val_fraction, seed=cfg.seed)
            except InputError:
                lab_train, lab_val = labeled, None
        report = FitReport(self.name, cfg.epochs, 0, 0.0, n_u, 0)
        report.extra.update({"strategy": cfg.strategy, "paradigm": cfg.paradigm, "rounds": [],
                             "k_schedule": ks, "warm_start": cfg.warm_start})
        fingerprint = self._fingerprint(pool, labeled, val)
        work = Path(work_dir).expanduser() if work_dir is not None else None
        self._reset_adapted()
        start = self._resume(work, fingerprint, len(ks), report) if work is not None else 0
        t0 = time.perf_counter()
        before = self._per_class(pool.plain, truth, zero_shot=True) if truth is not None else None
        from tqdm.auto import tqdm

        bar = tqdm(range(len(ks)), desc=f"{cfg.strategy} rounds", unit="round", disable=not progress,
                   initial=start)
        for t in range(start, len(ks)):
            round_t0 = time.perf_counter()
            conf = self.confidences(pool.plain, pl_classes, zero_shot=(t == 0 or cfg.strategy == "fpl"))
            picked = assign_top_k(conf, ks[t])
            counts = torch.bincount(picked[picked >= 0], minlength=n_c)
            empty = [self.class_names[pl_classes[j]] for j in range(n_c) if counts[j] == 0]
            if empty:
                raise InputError(f"round {t + 1}: class(es) {empty[:8]} got no pseudo-label (the unlabeled pool has "
                                 f"{n_u} images for {n_c} classes at K = {ks[t]}); give more unlabeled images")
            rows = torch.nonzero(picked >= 0).flatten()
            labels = torch.as_tensor(pl_classes, dtype=torch.int64)[picked[rows]]
            info: dict[str, Any] = {"round": t + 1, "k": ks[t], "n_pseudo": len(rows),
                                    "min_per_class": int(counts.min()), "max_per_class": int(counts.max())}
            if truth is not None:
                info["pseudo_label_accuracy"] = float((labels == truth[rows]).float().mean())
            # hold out a share of each class's pseudo-labels for selection
            g = np.random.default_rng([cfg.seed, t])
            held = np.zeros(len(rows), dtype=bool)
            if val is None and cfg.val_fraction > 0:
                for c in labels.unique().tolist():
                    where = np.flatnonzero(labels.numpy() == c)
                    n_held = int(cfg.val_fraction * len(where))
                    if n_held and n_held < len(where):
                        held[g.permutation(where)[:n_held]] = True
            held_t = torch.from_numpy(held)
            train_rows, train_labels = rows[~held_t], labels[~held_t]
            evaluate = self._evaluator(val, val_y, pool, rows[held_t], labels[held_t], lab_val, seen)
            x, y, group = self._samples(pool, train_rows, train_labels, lab_train)
            loss_fn = self._loss(y, group)
            if not cfg.warm_start:
                self.prompt.reset()
            sub = FitReport(self.name, cfg.epochs, 0, 0.0, len(train_rows), 0)
            self._text = None
            opt = replace(optim_settings(cfg), seed=cfg.seed + t)
            step = train_context(self, x, y, opt, sub, loss_fn=loss_fn, evaluate=evaluate, progress=progress,
                                 desc=f"round {t + 1}", leave=False)
            self._text = None
            info.update({"n_train": len(train_rows), "n_labeled": 0 if lab_train is None else len(lab_train),
                         "n_val": int(held.sum()) if val is None else len(val), "steps": step,
                         "train_loss": sub.train_loss, "val_accuracy": sub.val_accuracy,
                         "best_epoch": sub.best_epoch, "skipped_steps": sub.skipped_steps,
                         "seconds": time.perf_counter() - round_t0})
            self._add_round(report, info)
            if work is not None:
                self._checkpoint(work, fingerprint, t, info)
            bar.update(1)
            bar.set_postfix(k=ks[t], loss=f"{sub.train_loss[-1]:.3f}",
                            val=f"{max(sub.val_accuracy):.3f}" if sub.val_accuracy else "-")
        bar.close()
        report.seconds = time.perf_counter() - t0
        report.n_val = report.extra["rounds"][-1]["n_val"]
        self.fitted = True
        self._text = None
        if truth is not None and before is not None:
            report.extra["per_class"] = {"classes": self.class_names, "zero_shot": before,
                                         "tuned": self._per_class(pool.plain, truth, zero_shot=False),
                                         "on": "the unlabeled pool's own labels (never used for training)"}
        return report

    # -- pieces of a round ---------------------------------------------------------------------------------
    def _truth(self, pool: Any) -> torch.Tensor | None:
        """The unlabeled pool's own labels in this method's class order, when it carries them (for reports)."""
        if not pool.is_labelled:
            return None
        try:
            return pool_labels_for(pool, self.class_names)
        except (ClassNameError, InputError):
            return None

    def _per_class(self, embeds: torch.Tensor, truth: torch.Tensor, *, zero_shot: bool) -> list[float | None]:
        """Per-class accuracy ``[C]`` (None for a class without images) of zero-shot CLIP or the current context."""
        conf = self.confidences(embeds, range(len(self.class_names)), zero_shot=zero_shot)
        pred = conf.argmax(dim=1)
        out: list[float | None] = []
        for c in range(len(self.class_names)):
            m = truth == c
            out.append(float((pred[m] == c).float().mean()) if bool(m.any()) else None)
        return out

    def _samples(self, pool: Any, rows: torch.Tensor, labels: torch.Tensor,
                 labeled: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training samples (every view of every picked image) ``[N, D]``, labels ``[N]``, group ``[N]`` (0
        labelled, 1 pseudo-labelled)."""
        v = pool.n_views
        x = pool.embeds[rows].reshape(-1, pool.dim)
        y = labels.repeat_interleave(v)
        group = torch.ones(len(y), dtype=torch.int64)
        if labeled is not None:
            ly = pool_labels_for(labeled, self.class_names, "the labelled pool").repeat_interleave(labeled.n_views)
            x = torch.cat([labeled.embeds.reshape(-1, labeled.dim), x])
            y = torch.cat([ly, y])
            group = torch.cat([torch.zeros(len(ly), dtype=torch.int64), group])
        return x, y, group

    def _loss(self, y: torch.Tensor, group: torch.Tensor) -> Any:
        """UL and SSL: the mean CE of the batch; TRZSL: CE_seen + (|seen|/|unseen|)·CE_unseen."""
        if self.config.paradigm != "trzsl":
            return None
        n_seen, n_unseen = int((group == 0).sum()), int((group == 1).sum())
        ratio = n_seen / max(1, n_unseen)

        def loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(logits, y[idx].to(logits.device), reduction="none")
            g = group[idx].to(logits.device)
            out = logits.new_zeros(())
            if bool((g == 0).any()):
                out = out + ce[g == 0].mean()
            if bool((g == 1).any()):
                out = out + ratio * ce[g == 1].mean()
            return out

        return loss

    def _evaluator(self, val: Any, val_y: Any, pool: Any, held_rows: torch.Tensor, held_labels: torch.Tensor,
                   lab_val: Any, seen: list[int]) -> Any:
        """The per-epoch selection score: accuracy on `val`, else on the held-out pseudo-labels (TRZSL: the
        harmonic mean of seen and unseen accuracy); None when there is nothing to score on."""
        if val is not None:
            ex, ey = val.plain, val_y
        else:
            parts = [(pool.plain[held_rows], held_labels)] if len(held_rows) else []
            if lab_val is not None:
                parts.append((lab_val.plain, pool_labels_for(lab_val, self.class_names, "the labelled pool")))
            if not parts:
                return None
            ex = torch.cat([p[0] for p in parts])
            ey = torch.cat([p[1] for p in parts])
        seen_mask = torch.isin(ey, torch.as_tensor(seen, dtype=torch.int64)) if seen else None

        def score() -> float:
            with torch.no_grad():
                pred = image_logits(self.model, ex.to(self.device), self._train_text().detach()).argmax(dim=1).cpu()
            right = (pred == ey).float()
            if seen_mask is not None and bool(seen_mask.any()) and bool((~seen_mask).any()):
                return harmonic_mean(float(right[seen_mask].mean()), float(right[~seen_mask].mean()))
            return float(right.mean())

        return score

    def _add_round(self, report: FitReport, info: dict[str, Any]) -> None:
        offset = len(report.train_loss)
        report.train_loss.extend(info["train_loss"])
        report.val_accuracy.extend(info["val_accuracy"])
        report.best_epoch = None if info["best_epoch"] is None else offset + int(info["best_epoch"])
        report.steps += int(info["steps"])
        report.skipped_steps += int(info["skipped_steps"])
        report.epochs = len(report.train_loss)
        report.extra["rounds"].append(info)

    # -- checkpoints ---------------------------------------------------------------------------------------
    @staticmethod
    def _round_file(work: Path, t: int) -> Path:
        return work / f"round-{t + 1:03d}.safetensors"

    def _checkpoint(self, work: Path, fingerprint: str, t: int, info: dict[str, Any]) -> None:
        header = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "round": str(t + 1),
                  "info": json.dumps(info)}
        atomic_save({"ctx": self.prompt.ctx.detach().cpu().contiguous()}, self._round_file(work, t), header)

    def _resume(self, work: Path, fingerprint: str, n_rounds: int, report: FitReport) -> int:
        """Load the finished rounds of an earlier fit with the same inputs; returns the first round to run."""
        done = 0
        ctx = None
        for t in range(n_rounds):
            path = self._round_file(work, t)
            if not path.is_file():
                break
            try:
                header, tensors = read(path, "round checkpoint")
            except BundleError as exc:
                log.warning("ignoring an unreadable round checkpoint (%s)", exc)
                break
            if header.get("format") != CHECKPOINT_FORMAT or header.get("fingerprint") != fingerprint:
                log.warning("%s belongs to another fit (other settings or data); starting from round %d", path,
                            t + 1)
                break
            ctx = tensors["ctx"]
            info = json.loads(header["info"])
            info["resumed"] = True
            self._add_round(report, info)
            done = t + 1
        if ctx is not None:
            with torch.no_grad():
                self.prompt.ctx.copy_(ctx)
            self._text = None
            log.info("resuming after round %d of %d from %s", done, n_rounds, work)
        return done
