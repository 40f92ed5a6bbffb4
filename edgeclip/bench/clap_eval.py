"""`edgeclip bench clap`: class-incremental CLAP4CLIP against Continual-CLIP and a linear head on the micro world.

**Protocol.** The procedural classes — the 16 colour × shape classes, or with ``classes="size-colour-shape"``
the 32 size × colour × shape classes (`edgeclip.data.shapes.CLASS_SETS`: the same scenes with the size made part
of the class, for a longer stream that can show forgetting) — are learnt in `tasks` tasks of `classes_per_task`
(4 × 4 by default), in a class order drawn per seed (`ORDER_SEED`, seed). All images are rendered under one domain shift
where zero-shot is far from perfect (on the clean domain it is at 99.5 %): ``--shift auto`` (the default) takes,
of `CANDIDATE_SHIFTS`, the one where Continual-CLIP is least accurate on the **validation** stream
(`edgeclip.data.streams.validation`), never on the test stream. Training images: `per_class` images of each class
from the proxy stream ``make_batch(seed=TRAIN_SEED + seed)`` (disjoint from the held-out and validation streams);
test images: `n_test` images of the held-out stream (`edgeclip.data.streams.held_out`, the same images for every
seed). Every image is encoded once into a feature pool with ``memory_views − 1`` extra views (CLAP's attention
memory is an image's own views). After each task every method is evaluated on the test images of all classes
seen so far, predicting over all of them (class-incremental: no task identity at test time).

**Methods.**

* ``clap``: `edgeclip.runtime.methods.clap.CLAP` with its defaults (``CLAPConfig``; overrides recorded in the
  report), ``seed`` and ``mc_seed`` set to the run's seed.
* ``continual-clip``: CLAP created *with* the seen classes and no head: zero-shot with the same template ensemble,
  no training.
* ``linear``: `LinearHead`, a deterministic baseline without the probabilistic parts: logits
  ``scale · x · Wᵀ + b`` on the frozen image embedding ``x``, a new task's rows of ``W`` initialised with the
  classes' template-ensemble text features (``b`` = 0; at the start of a task it predicts as Continual-CLIP), the
  older rows frozen while a task trains; the same rehearsal memory (random exemplars, the same quota per class),
  the same class-balanced fine-tune on the memory after every task but the first (lr/10, every row trainable),
  the same epochs, batch, warm-up + cosine schedule and random-view augmentation as CLAP; SGD with momentum 0.9,
  its lr chosen from `LINEAR_LRS` on the validation stream (`tune_linear`: its own training seed
  `TUNE_TRAIN_SEED` and run seed `TUNE_RUN_SEED`, so no evaluation seed or test image is used in tuning).

**Metrics** (per method and seed; pure functions below; accuracies in %):

* `average_incremental_accuracy` (AIA): the mean over tasks of the accuracy after that task (on the test images of
  every class seen so far). ``last``: the accuracy after the last task (all classes).
* `backward_transfer` (BWT): the mean over the old tasks j < T of ``R[T−1, j] − R[j, j]``, where ``R[t, j]`` is
  the accuracy on the test images of task j's classes after learning task t (negative = forgetting);
  `forgetting`: the mean over old tasks of the largest drop ``max_{t<T−1} R[t, j] − R[T−1, j]``.
* `expected_calibration_error` (ECE, 0–1): 15 equal-width confidence bins, on the final model over all classes.
* `novelty_auroc` and `fpr_at_95_tpr` (%): after each task t but the last, seen-class test images (in
  distribution) against the test images of the classes of later tasks (novel); the score is the energy
  ``−logsumexp(logits)`` for every method (CLAP: of the MC-averaged logits, ``prediction.info["energy"]``); the
  mean over those tasks.

Means and spreads are over seeds (a seed changes the class order, the training images, CLAP's initialisation and
MC noise). Last accuracy differences CLAP − baseline get paired 95 % bootstrap intervals (`edgeclip.bench.paired`)
per seed and over all seeds (the test images are the same in every seed, so the frames are resampled and each
frame's correctness is its mean over seeds). Run::

    edgeclip bench clap --out docs/results
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeclip.bench.common import model_label, torch_threads
from edgeclip.bench.paired import MEAN, paired_difference, paired_differences
from edgeclip.bench.report import machine_info, write_report
from edgeclip.data import shapes
from edgeclip.data.streams import EVAL_SEED, VALIDATION_SEED, held_out, validation
from edgeclip.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CANDIDATE_SHIFTS", "LINEAR_LRS", "METHODS", "METRICS", "ORDER_SEED", "REPORT_NAME", "TRAIN_SEED",
           "TUNE_RUN_SEED", "TUNE_TRAIN_SEED", "LinearHead", "add_arguments", "average_incremental_accuracy",
           "backward_transfer", "bench_clap", "choose_shift", "class_order", "expected_calibration_error",
           "forgetting", "fpr_at_95_tpr", "novelty_auroc", "plot_accuracy", "run", "tune_linear"]

REPORT_NAME = "clap-micro"
#: the shifts ``--shift auto`` chooses from (zero-shot near 60 % on the test stream; clean is at 99.5 %)
CANDIDATE_SHIFTS = ("low_contrast", "gaussian_noise")
#: training images of run seed s: the proxy stream ``TRAIN_SEED + s`` (disjoint from 10 000 and 30 000)
TRAIN_SEED = 22_000
#: training images of the linear head's lr choice (with the validation stream as its test images)
TUNE_TRAIN_SEED = 23_000
#: the run seed (class order, initialisation) of the lr choice: not one of the default evaluation seeds 0–4
TUNE_RUN_SEED = 1_000
#: the class order of run seed s: ``SeedSequence([ORDER_SEED, s])``
ORDER_SEED = 22_500
#: validation images for the shift choice and the linear head's lr
N_VAL = 512
#: the linear head's learning-rate grid (SGD, momentum 0.9)
LINEAR_LRS = (0.001, 0.003, 0.01, 0.03)
METHODS = ("clap", "continual-clip", "linear")
METRICS = ("aia", "last", "bwt", "forgetting", "bwt_known", "ece", "auroc", "fpr95")
_METRIC_LABELS = {"aia": "AIA %", "last": "last %", "bwt": "BWT pts", "forgetting": "forgetting pts",
                  "bwt_known": "BWT known-classes pts", "ece": "ECE", "auroc": "novelty AUROC %",
                  "fpr95": "FPR95 %"}


# ------------------------------------------------------------------------------------------------------------
# metrics (pure functions)
# ------------------------------------------------------------------------------------------------------------
def _matrix(acc: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    r = np.asarray(acc, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 1:
        raise ValueError(f"an accuracy matrix is square [T, T] (R[t, j]: task j after task t), got {r.shape}")
    if not np.isfinite(r[np.tril_indices(r.shape[0])]).all():
        raise ValueError("the accuracy matrix needs finite values on and below its diagonal")
    return r


def average_incremental_accuracy(acc_after: Sequence[float] | np.ndarray) -> float:
    """The mean over tasks of the accuracy after learning that task (on every class seen so far)."""
    a = np.asarray(acc_after, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"need one finite accuracy per task, got {a!r}")
    return float(a.mean())


def backward_transfer(acc: Sequence[Sequence[float]] | np.ndarray) -> float:
    """BWT: the mean over old tasks j < T−1 of ``R[T−1, j] − R[j, j]`` (``R[t, j]``: accuracy on task j's
    classes after learning task t; entries above the diagonal are ignored). Negative = forgetting; NaN for one
    task."""
    r = _matrix(acc)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([r[t - 1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(acc: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Average forgetting: the mean over old tasks j < T−1 of ``max_{j<=t<T−1} R[t, j] − R[T−1, j]`` (the drop
    from the best accuracy the task ever had to the final one); ``bwt_known``: BWT with an old task's test images
  predicted among the classes known when it was learnt (no new competitor classes: 0 for Continual-CLIP by
  construction, so what remains is what a method learnt and then lost); NaN for one task."""
    r = _matrix(acc)
    t = r.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([r[j:t - 1, j].max() - r[t - 1, j] for j in range(t - 1)]))


def expected_calibration_error(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                               n_bins: int = 15) -> float:
    """ECE (0–1): ``Σ_b (n_b / n)·|accuracy_b − mean confidence_b|`` over `n_bins` equal-width bins of the
    confidence (bin b holds ``(b/n_bins, (b+1)/n_bins]``; a confidence of 0 falls in the first)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != ok.shape or conf.size == 0:
        raise ValueError(f"need one confidence and one correctness per frame, got {conf.shape} and {ok.shape}")
    if not np.isfinite(conf).all() or conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidences must lie in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            ece += inside.mean() * abs(ok[inside].mean() - conf[inside].mean())
    return float(ece)


def _scores(id_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(id_scores, dtype=np.float64).ravel()
    b = np.asarray(ood_scores, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("novelty detection needs in-distribution and novel frames")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("novelty scores must be finite")
    return a, b


def novelty_auroc(id_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray) -> float:
    """AUROC (%) of detecting novel frames by a score that is higher for novel ones: the probability that a
    novel frame scores above an in-distribution one, ties counting half (Mann–Whitney)."""
    a, b = _scores(id_scores, ood_scores)
    s = np.concatenate([a, b])
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inverse]
    u = ranks[a.size:].sum() - b.size * (b.size + 1) / 2.0
    return float(100.0 * u / (a.size * b.size))


def fpr_at_95_tpr(id_scores: Sequence[float] | np.ndarray, ood_scores: Sequence[float] | np.ndarray,
                  tpr: float = 0.95) -> float:
    """FPR95 (%): the share of novel frames still accepted as in-distribution at the threshold that accepts
    `tpr` of the in-distribution frames (a frame is accepted when its score, higher = more novel, is at most the
    threshold ``τ`` = the ⌈tpr·n⌉-th smallest in-distribution score)."""
    a, b = _scores(id_scores, ood_scores)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    tau = np.sort(a)[math.ceil(tpr * a.size) - 1]
    return float(100.0 * (b <= tau).mean())


# ------------------------------------------------------------------------------------------------------------
# the deterministic baseline
# ------------------------------------------------------------------------------------------------------------
class LinearHead:
    """A plain fine-tuned linear head on frozen image embeddings, trained task by task (a bench baseline).

    Logits ``scale · x · Wᵀ + b`` (``scale`` the bundle's logit scale, ``x`` the normalised view). A task's
    classes get rows of ``W`` initialised with their template-ensemble text features and zero bias; while a task
    trains on its images plus the rehearsal memory, older rows stay frozen; then the memory is rebuilt (random
    exemplars, ``per_class_quota`` per class, as CLAP's); from the second task on, a fine-tune on the memory alone
    (class-balanced: the same count per class) at lr/10 with every row trainable. SGD with `momentum`, the
    warm-up + cosine schedule of CLAP (`cosine_warmup_lrs`), each step classifying a random one of an image's
    views. Everything but the learning rate and the momentum is taken from `config` (a `CLAPConfig`).
    """

    def __init__(self, model: Any, config: Any, *, lr: float, momentum: float = 0.9, seed: int = 0) -> None:
        from edgeclip.runtime.methods.clap_memory import RehearsalMemory
        from edgeclip.runtime.methods.registry import create_method

        self.model = model
        self.config = config
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.seed = int(seed)
        self.scale = float(model.logit_scale)
        self.dim = int(model.bundle.embed_dim)
        self.weight = torch.zeros(0, self.dim)
        self.bias = torch.zeros(0)
        self.class_names: list[str] = []
        self.memory = RehearsalMemory.empty(config.memory_views, self.dim)
        self._text = create_method("clap", model, ["_"], templates=config.templates)

    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """``[B, C]`` logits of view 0 of ``embeds [B, V, D]`` (or ``[B, D]``) over every class seen so far."""
        x = embeds[:, 0] if embeds.dim() == 3 else embeds
        with torch.no_grad():
            return self.scale * F.normalize(x.float(), dim=-1) @ self.weight.T + self.bias

    def learn_task(self, embeds: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> None:
        """Add `class_names` (``labels`` index them) and train on ``embeds [N, V, D]`` plus the memory."""
        from edgeclip.runtime.methods.clap_memory import RehearsalMemory, per_class_quota

        cfg = self.config
        first_new = len(self.class_names)
        text = self._text.template_features(list(class_names))[0]
        self.weight = torch.cat([self.weight, text])
        self.bias = torch.cat([self.bias, torch.zeros(len(class_names))])
        self.class_names = [*self.class_names, *class_names]
        y = labels.long() + first_new
        x_emb = torch.cat([embeds, self.memory.embeds])
        x_y = torch.cat([y, self.memory.labels])
        lr = self.lr
        self._train(x_emb, x_y, epochs=cfg.epochs, lr=lr, warmup=True, first_trainable=first_new,
                    seed=self.seed * 1000 + first_new)
        quota = per_class_quota(len(self.class_names), cfg.memory_per_class, cfg.memory_total)
        g = torch.Generator().manual_seed(self.seed * 1000 + first_new + 1)
        parts_e, parts_y = [], []
        for c in range(len(self.class_names)):
            if c < first_new:
                rows = torch.nonzero(self.memory.labels == c).flatten()[:quota]
                parts_e.append(self.memory.embeds[rows])
            else:
                rows = torch.nonzero(y == c).flatten()
                rows = rows[torch.randperm(len(rows), generator=g)][:quota]
                parts_e.append(embeds[rows])
            parts_y.append(torch.full((len(rows),), c, dtype=torch.int64))
        emb = torch.cat(parts_e)
        self.memory = RehearsalMemory(emb, torch.ones(emb.shape[:2], dtype=torch.bool), torch.cat(parts_y))
        if first_new > 0 and cfg.finetune and len(self.memory):
            self._train(self.memory.embeds, self.memory.labels, epochs=cfg.finetune_epochs, lr=lr / 10,
                        warmup=False, first_trainable=0, seed=self.seed * 1000 + first_new + 2)

    def _train(self, emb: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, warmup: bool,
               first_trainable: int, seed: int) -> None:
        from edgeclip.runtime.methods.clap import cosine_warmup_lrs

        cfg = self.config
        n, bs = emb.shape[0], cfg.batch_size
        total = epochs * math.ceil(n / bs)
        lrs = cosine_warmup_lrs(total, lr, int(cfg.warmup_fraction * total) if warmup else 0)
        w = self.weight.clone().requires_grad_(True)
        b = self.bias.clone().requires_grad_(True)
        opt = torch.optim.SGD([w, b], lr=lr, momentum=self.momentum)
        g = torch.Generator().manual_seed(seed)
        n_views = emb.shape[1]
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                rows = order[i:i + bs]
                pick = torch.randint(0, n_views, (len(rows),), generator=g)
                x = F.normalize(emb[rows, pick].float(), dim=-1)
                for group in opt.param_groups:
                    group["lr"] = float(lrs[step])
                step += 1
                loss = F.cross_entropy(self.scale * x @ w.T + b, y[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if first_trainable:  # the older tasks' rows stay frozen while a task trains
                    w.grad[:first_trainable] = 0
                    b.grad[:first_trainable] = 0
                opt.step()
        self.weight, self.bias = w.detach(), b.detach()


# ------------------------------------------------------------------------------------------------------------
# the protocol
# ------------------------------------------------------------------------------------------------------------
def _pool(model: Any, batch: Any, views: int, view_seed: int) -> tuple[torch.Tensor, np.ndarray]:
    from edgeclip.runtime.feature_pool import ViewPolicy, build_feature_pool

    pool = build_feature_pool(model, list(batch.images), class_names=list(batch.class_names),
                              labels=batch.labels.tolist(), views=ViewPolicy(extra_views=views - 1,
                                                                             view_seed=view_seed), cache=False)
    return pool.embeds, np.asarray(batch.labels)


def _train_batch(shift: str, per_class: int, seed: int, classes: str = "colour-shape") -> Any:
    """`per_class` images of each class of the class set `classes`, in random order, from the proxy stream
    `seed`."""
    n_classes = len(shapes.class_names(classes))
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))
    return shapes.make_batch(len(labels), seed=seed, shift=shift, labels=labels, classes=classes)


def class_order(seed: int, n_classes: int = 16) -> list[int]:
    """The class order of run `seed` (indices into `shapes.class_names()`)."""
    return np.random.default_rng(np.random.SeedSequence([ORDER_SEED, seed])).permutation(n_classes).tolist()


def _evaluate(probs: torch.Tensor, energy: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
    probs = probs.float()
    conf, pred = probs.max(1)
    return {"correct": pred.numpy() == y, "confidence": conf.numpy(), "energy": energy.float().numpy()}


def _outputs(name: str, learner: Any, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities [B, C], energy [B], MC variance [B]: zeros for a deterministic method) over the seen
    classes, in their learnt order."""
    if name == "linear":
        logits = learner.logits(embeds)
        return logits.softmax(-1), -torch.logsumexp(logits, dim=-1), torch.zeros(len(logits))
    pred = learner.predict(embeds)
    return pred.probs, pred.info["energy"], pred.info["mc_variance"]


def _run_seed(model: Any, seed: int, *, shift: str, per_class: int, tasks: int, classes_per_task: int,
              test: tuple[torch.Tensor, np.ndarray], clap_settings: Mapping[str, Any], linear_lr: float,
              methods: Sequence[str] = METHODS, train_seed: int | None = None,
              classes: str = "colour-shape") -> dict[str, Any]:
    """One run of the protocol: per method the accuracy matrix, the accuracy after each task, the final
    per-frame correctness and confidence, the novelty metrics after each task but the last, and the times."""
    from edgeclip.runtime.methods.clap import CLAP
    from edgeclip.runtime.methods.registry import create_method

    names = shapes.class_names(classes)
    order = class_order(seed, len(names))[: tasks * classes_per_task]
    groups = [order[i * classes_per_task:(i + 1) * classes_per_task] for i in range(tasks)]
    settings = {**clap_settings, "seed": seed, "mc_seed": seed}
    clap = create_method("clap", model, [], **settings)
    assert isinstance(clap, CLAP)
    cfg = clap.config
    train_emb, train_y = _pool(model, _train_batch(shift, per_class, TRAIN_SEED + seed if train_seed is None
                                                    else train_seed, classes), cfg.memory_views, view_seed=seed)
    test_emb, test_y = test
    learners: dict[str, Any] = {}
    if "clap" in methods:
        learners["clap"] = clap
    if "linear" in methods:
        learners["linear"] = LinearHead(model, cfg, lr=linear_lr, seed=seed)
    out: dict[str, Any] = {m: {"matrix": np.full((tasks, tasks), np.nan), "known": np.full((tasks, tasks), np.nan),
                               "acc_after": [], "auroc": [], "fpr95": [], "auroc_variance": [], "seconds": 0.0}
                           for m in methods}
    seen: list[int] = []
    for t, group in enumerate(groups):
        rows = np.flatnonzero(np.isin(train_y, group))
        local = torch.as_tensor([group.index(int(c)) for c in train_y[rows]])
        task_names = [names[c] for c in group]
        seen = [*seen, *group]
        for m in methods:
            t0 = time.perf_counter()
            if m in ("clap", "linear"):
                learners[m].learn_task(train_emb[rows], local, task_names)
            else:
                learners[m] = create_method("clap", model, [names[c] for c in seen], templates=cfg.templates)
            out[m]["seconds"] += time.perf_counter() - t0
        id_rows = np.flatnonzero(np.isin(test_y, seen))
        future = [c for g in groups[t + 1:] for c in g]
        ood_rows = np.flatnonzero(np.isin(test_y, future))
        y_seen = np.asarray([seen.index(int(c)) for c in test_y[id_rows]])
        for m in methods:
            probs, energy, variance = _outputs(m, learners[m], test_emb[id_rows])
            ev = _evaluate(probs, energy, y_seen)
            out[m]["acc_after"].append(100.0 * float(ev["correct"].mean()))
            for j, g in enumerate(groups[: t + 1]):
                in_g = np.isin(test_y[id_rows], g)
                out[m]["matrix"][t, j] = 100.0 * float(ev["correct"][in_g].mean())
                # among the classes known when task j was learnt (the first (j + 1)·k columns): no new competitors
                known = probs[in_g][:, : (j + 1) * classes_per_task].argmax(1).numpy()
                out[m]["known"][t, j] = 100.0 * float((known == y_seen[in_g]).mean())
            if len(ood_rows):
                _, ood_energy, ood_variance = _outputs(m, learners[m], test_emb[ood_rows])
                out[m]["auroc"].append(novelty_auroc(ev["energy"], ood_energy.float().numpy()))
                out[m]["fpr95"].append(fpr_at_95_tpr(ev["energy"], ood_energy.float().numpy()))
                if m == "clap":
                    out[m]["auroc_variance"].append(novelty_auroc(variance.float().numpy(),
                                                                  ood_variance.float().numpy()))
            if t == tasks - 1:
                correct = np.full(len(test_y), np.nan)
                correct[id_rows] = ev["correct"]
                out[m]["final_correct"] = correct  # NaN: a frame of a class this run never learnt
                out[m]["ece"] = expected_calibration_error(ev["confidence"], ev["correct"])
    for m in methods:
        r = out[m]
        r["aia"] = average_incremental_accuracy(r["acc_after"])
        r["last"] = r["acc_after"][-1]
        r["bwt"] = backward_transfer(r["matrix"])
        r["forgetting"] = forgetting(r["matrix"])
        r["bwt_known"] = backward_transfer(r["known"])
        r["auroc_variance"] = float(np.mean(r["auroc_variance"])) if r["auroc_variance"] else float("nan")
        r["auroc_per_task"], r["fpr95_per_task"] = r["auroc"], r["fpr95"]
        r["auroc"] = float(np.mean(r["auroc"])) if r["auroc"] else float("nan")
        r["fpr95"] = float(np.mean(r["fpr95"])) if r["fpr95"] else float("nan")
    out["order"] = [names[c] for c in order]
    out["config"] = dataclasses.asdict(cfg)
    return out


def choose_shift(model: Any, candidates: Sequence[str] = CANDIDATE_SHIFTS, n_val: int = N_VAL,
                 classes: str = "colour-shape") -> tuple[str, dict[str, float]]:
    """The candidate shift where Continual-CLIP (the template ensemble over all the classes) is least accurate on
    the validation stream, and every candidate's validation accuracy (%)."""
    from edgeclip.runtime.methods.registry import create_method

    names = shapes.class_names(classes)
    zs = create_method("clap", model, names)
    accs = {}
    for shift in candidates:
        emb, y = _pool(model, validation(shift, n_val, classes), 1, 0)
        accs[shift] = 100.0 * float((zs.predict(emb).labels.numpy() == y).mean())
    return min(accs, key=lambda s: accs[s]), accs


def tune_linear(model: Any, shift: str, *, per_class: int, tasks: int, classes_per_task: int,
                clap_settings: Mapping[str, Any], lrs: Sequence[float] = LINEAR_LRS, n_val: int = N_VAL,
                classes: str = "colour-shape") -> dict[str, Any]:
    """The linear head's lr: the grid's best last accuracy on the validation stream (one run with run seed
    `TUNE_RUN_SEED`'s class order, training images from `TUNE_TRAIN_SEED`); returns the grid rows and the
    choice."""
    from edgeclip.runtime.methods.registry import create_method

    cfg = create_method("clap", model, [], **clap_settings).config
    val = _pool(model, validation(shift, n_val, classes), cfg.memory_views, 0)
    rows = []
    for lr in lrs:
        res = _run_seed(model, TUNE_RUN_SEED, shift=shift, per_class=per_class, tasks=tasks,
                        classes_per_task=classes_per_task, test=val, clap_settings=clap_settings, linear_lr=lr,
                        methods=("linear",), train_seed=TUNE_TRAIN_SEED, classes=classes)["linear"]
        rows.append({"lr": lr, "val_last": res["last"], "val_aia": res["aia"], "val_bwt": res["bwt"]})
        log.info("linear head lr %g: validation last %.1f %%", lr, res["last"])
    best = max(rows, key=lambda r: (r["val_last"], -r["lr"]))
    return {"rows": rows, "choice": best["lr"], "val_seed": VALIDATION_SEED, "train_seed": TUNE_TRAIN_SEED,
            "run_seed": TUNE_RUN_SEED, "n_val": n_val}


def _summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
            "min": float(np.min(v)), "max": float(np.max(v)), "values": v.tolist()}


def _fmt(s: Mapping[str, float], digits: int = 1) -> str:
    if not np.isfinite(s["mean"]):
        return "–"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _forgetting_note(summary: Mapping[str, Any]) -> str:
    """Whether forgetting shows: the linear head's BWT, and its BWT among the classes known when each task was
    learnt (no new competitors: what was learnt and then lost)."""
    lin, cl, zs = summary["linear"]["bwt"], summary["clap"]["bwt"], summary["continual-clip"]["bwt"]
    kn_lin, kn_cl = summary["linear"]["bwt_known"], summary["clap"]["bwt_known"]
    f_lin = summary["linear"]["forgetting"]
    if lin["mean"] > -0.5:
        verdict = "forgetting is NOT visible: the linear head's BWT is ≈ 0"
    elif kn_lin["mean"] <= -2.0:
        verdict = (f"forgetting is visible, and {-kn_lin['mean']:.1f} points of it remain with no new competitor "
                   "classes (the head itself drifted)")
    else:
        verdict = ("the drop on old tasks is visible, but with no new competitor classes it is "
                   f"{kn_lin['mean']:+.1f} points (BWT known-classes above −2): it comes from the classes added "
                   "later taking old-class images, not from the head losing what it had learnt")
    return (f"Forgetting ({len(lin['values'])} seeds): BWT linear {lin['mean']:+.1f} ± {lin['std']:.1f} points "
            f"(forgetting {f_lin['mean']:.1f} ± {f_lin['std']:.1f}), clap {cl['mean']:+.1f} ± {cl['std']:.1f}, "
            f"continual-clip {zs['mean']:+.1f} ± {zs['std']:.1f} (it learns nothing: its BWT is only the cost of "
            "choosing among more classes at the end). BWT known-classes (an old task's images predicted among the "
            f"classes known when it was learnt; 0 for continual-clip by construction): linear "
            f"{kn_lin['mean']:+.1f} ± {kn_lin['std']:.1f}, clap {kn_cl['mean']:+.1f} ± {kn_cl['std']:.1f}. "
            f"Verdict: {verdict}. The dataset was not extended.")


def bench_clap(bundle: Any = "micro", *, seeds: Sequence[int] = (0, 1, 2, 3, 4), shift: str = "auto",
               per_class: int = 50, n_test: int = 1024, tasks: int = 4, classes_per_task: int = 4,
               clap_settings: Mapping[str, Any] | None = None, linear_lr: float | None = None,
               threads: int | None = 1, classes: str = "colour-shape") -> dict[str, Any]:
    """Class-incremental CLAP vs Continual-CLIP vs `LinearHead` (see the module docstring): per method mean and
    spread over `seeds` of AIA, last accuracy, BWT, forgetting, ECE, novelty AUROC and FPR95, the accuracy after
    every task, paired last-accuracy differences with 95 % bootstrap intervals; a `write_report` dict.

    `shift` ``"auto"`` chooses among `CANDIDATE_SHIFTS` on the validation stream; `linear_lr` None chooses the
    linear head's lr on the validation stream (`tune_linear`)."""
    import edgeclip
    from edgeclip.runtime.methods.registry import create_method

    names = shapes.class_names(classes)
    if tasks < 1 or classes_per_task < 1 or tasks * classes_per_task > len(names):
        raise InputError(f"{tasks} tasks of {classes_per_task} classes do not fit the {len(names)} classes")
    if per_class < 1 or n_test < 1 or not seeds:
        raise InputError("per_class, n_test and the seed list must be positive / non-empty")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise InputError(f"seeds must be distinct non-negative integers, got {list(seeds)}")
    clap_settings = dict(clap_settings or {})
    model = edgeclip.load(None if bundle == "micro" else bundle, backend="onnxruntime")
    t0 = time.perf_counter()
    with torch_threads(threads):
        val_acc: dict[str, float] | None = None
        if shift == "auto":
            shift, val_acc = choose_shift(model, classes=classes)
            log.info("shift chosen on the validation stream: %s (%s)", shift, val_acc)
        tuning = None
        if linear_lr is None:
            tuning = tune_linear(model, shift, per_class=per_class, tasks=tasks, classes_per_task=classes_per_task,
                                 clap_settings=clap_settings, classes=classes)
            linear_lr = float(tuning["choice"])
        cfg = create_method("clap", model, [], **clap_settings).config
        test = _pool(model, held_out(shift, n_test, classes), cfg.memory_views, view_seed=0)
        runs = {}
        for s in seeds:
            log.info("seed %d", s)
            runs[s] = _run_seed(model, s, shift=shift, per_class=per_class, tasks=tasks,
                                classes_per_task=classes_per_task, test=test, clap_settings=clap_settings,
                                linear_lr=linear_lr, classes=classes)
    seconds = time.perf_counter() - t0
    summary = {m: {k: _summary([runs[s][m][k] for s in seeds]) for k in METRICS} for m in METHODS}
    rows = [{"method": m, **{_METRIC_LABELS[k]: _fmt(summary[m][k], 3 if k == "ece" else 1) for k in METRICS}}
            for m in METHODS]
    spread_rows = [{"method": m, **{_METRIC_LABELS[k]: f"{summary[m][k]['min']:.{3 if k == 'ece' else 1}f} – "
                                                       f"{summary[m][k]['max']:.{3 if k == 'ece' else 1}f}"
                                    for k in METRICS}} for m in METHODS]
    curves = {m: np.asarray([runs[s][m]["acc_after"] for s in seeds]) for m in METHODS}
    task_cols = [f"after task {t + 1}" for t in range(tasks)]
    curve_rows = [{"method": m, **{c: f"{curves[m][:, t].mean():.1f} ± "
                                      f"{(curves[m][:, t].std(ddof=1) if len(seeds) > 1 else 0.0):.1f}"
                                   for t, c in enumerate(task_cols)}} for m in METHODS]
    per_seed_rows = [{"method": m, "seed": s, **{k: runs[s][m][k] for k in METRICS},
                      "seconds": runs[s][m]["seconds"]} for s in seeds for m in METHODS]
    diffs = []
    for base in ("continual-clip", "linear"):
        a = {f"seed {s}": runs[s]["clap"]["final_correct"] for s in seeds}
        b = {f"seed {s}": runs[s][base]["final_correct"] for s in seeds}
        keep = {k: np.isfinite(v) for k, v in a.items()}
        per = paired_differences({k: v[keep[k]] for k, v in a.items()}, {k: v[keep[k]] for k, v in b.items()})
        fa, fb = np.vstack(list(a.values())), np.vstack(list(b.values()))
        present = np.isfinite(fa).any(0)
        with np.errstate(invalid="ignore"):
            pooled = paired_difference(np.nanmean(fa[:, present], 0), np.nanmean(fb[:, present], 0))
        diffs.append({"comparison": f"clap − {base}", **{k: per[k].format() for k in a},
                      "all seeds": pooled.format(), "verdict": pooled.verdict,
                      "detail": {**{k: v.to_dict() for k, v in per.items() if k != MEAN},
                                 "all seeds": pooled.to_dict()}})
    matrices = {m: {str(s): runs[s][m]["matrix"].tolist() for s in seeds} for m in METHODS}
    known_matrices = {m: {str(s): runs[s][m]["known"].tolist() for s in seeds} for m in METHODS}
    novelty_per_task = {m: {str(s): {"auroc": runs[s][m]["auroc_per_task"], "fpr95": runs[s][m]["fpr95_per_task"]}
                            for s in seeds} for m in METHODS}
    clap_variance_auroc = _summary([runs[s]["clap"]["auroc_variance"] for s in seeds]) if tasks > 1 else None
    cfg_dict = dataclasses.asdict(cfg)
    config = {"model": model_label(model.bundle), "classes": classes, "n_classes": len(names), "shift": shift,
              "validation_zero_shot": val_acc,
              "n_val": N_VAL, "val_seed": VALIDATION_SEED, "seeds": list(seeds), "tasks": tasks,
              "classes_per_task": classes_per_task, "per_class": per_class, "n_test": n_test,
              "eval_seed": EVAL_SEED, "train_seed": TRAIN_SEED, "order_seed": ORDER_SEED,
              "clap_overrides": clap_settings, "clap": cfg_dict, "linear_lr": linear_lr,
              "linear_momentum": 0.9, "linear_tuning": tuning, "novelty_score": "energy = -logsumexp(logits)",
              "ece_bins": 15, "threads": threads}
    shift_why = (f"shift {shift}: chosen among {list(CANDIDATE_SHIFTS)} as the one where Continual-CLIP is least "
                 f"accurate on the validation stream (seed {VALIDATION_SEED}, {N_VAL} images: "
                 + ", ".join(f"{k} {v:.1f} %" for k, v in val_acc.items()) + ")"
                 if val_acc else f"shift {shift}: given on the command line")
    notes = [f"Class-incremental: {tasks} tasks of {classes_per_task} classes (class order drawn per seed), "
             f"{per_class} training images per class (proxy stream seed {TRAIN_SEED} + seed), tested after every "
             f"task on the held-out images (seed {EVAL_SEED}, {n_test} images of all {len(names)} classes) of every "
             f"class seen so far, predicting over all of them. {shift_why}. Seeds {list(seeds)}; mean ± std over seeds "
             f"(min–max in the second table). {seconds:.0f} s in all.",
             f"clap: CLAPConfig defaults{' with ' + str(clap_settings) if clap_settings else ''} (epochs "
             f"{cfg.epochs}, fine-tune {cfg.finetune_epochs}, MC samples {cfg.mc_samples}, memory "
             f"{cfg.memory_per_class}/class, selector {cfg.selector}, {cfg.memory_views} views per image as the "
             "attention memory). "
             "continual-clip: zero-shot with the same template ensemble over the seen classes, no training.",
             f"linear: deterministic head scale·x·Wᵀ + b, rows initialised from the template-ensemble text features, "
             f"older rows frozen while a task trains, the same memory and class-balanced fine-tune (lr/10) as CLAP, "
             f"same epochs / batch / schedule / view augmentation; SGD momentum 0.9, lr {linear_lr:g}"
             + (f" chosen on the validation stream from {list(LINEAR_LRS)} (training seed {TUNE_TRAIN_SEED}, "
                  f"run seed {TUNE_RUN_SEED})"
                if tuning else " (given)") + ".",
             "AIA: mean over tasks of the accuracy after that task; last: after the last task; BWT: mean over old "
             "tasks of acc(final) − acc(just after learning it), on that task's classes; forgetting: mean over old "
             "tasks of the largest drop from its best accuracy; BWT known-classes: BWT with an old task's images "
             "predicted among the classes known when it was learnt (no new competitors; 0 for continual-clip); "
             "ECE: 15 equal-width bins, final model, all classes "
             "(0–1); novelty AUROC / FPR95: after every task but the last, test images of the seen classes vs those "
             "of the later tasks' classes, score = energy −logsumexp(logits) for every method (CLAP: of the "
             "MC-averaged logits), FPR95 = novel images accepted at the threshold accepting 95 % of seen-class "
             "images; mean over those tasks.",
             "Paired last-accuracy differences: points, 95 % percentile bootstrap over test images (10 000 "
             "resamples), per seed; 'all seeds': the test images are the same in every seed, so each image's "
             "correctness is averaged over seeds and images are resampled. 'beats' only where the interval "
             "excludes zero.",
             _forgetting_note(summary)]
    if tasks * classes_per_task == len(names):
        notes.append("continual-clip has no spread in last accuracy and ECE: it does not train, and after the last "
                     "task it scores the same test images over the same classes whatever the order; its spread "
                     "elsewhere comes from the class order alone.")
    if clap_variance_auroc is not None:
        notes.append(f"CLAP's MC variance as the novelty score instead of the energy: AUROC "
                     f"{_fmt(clap_variance_auroc)} % (the same seen vs later-task images).")
    tables = [{"title": "Spread over seeds (min – max)", "columns": ["method", *_METRIC_LABELS.values()],
               "rows": spread_rows},
              {"title": "Accuracy (%) on the seen classes after each task (mean ± std over seeds)",
               "columns": ["method", *task_cols], "rows": curve_rows},
              {"title": "Last accuracy: CLAP − baseline (points, paired 95 % CI)",
               "columns": ["comparison", *[f"seed {s}" for s in seeds], "all seeds", "verdict"],
               "rows": [{k: v for k, v in d.items() if k != "detail"} for d in diffs]},
              {"title": "Per seed", "columns": ["method", "seed", *METRICS, "seconds"], "rows": per_seed_rows}]
    if val_acc:
        tables.append({"title": "Shift choice: Continual-CLIP accuracy (%) on the validation stream",
                       "columns": ["shift", "accuracy"],
                       "rows": [{"shift": k, "accuracy": v} for k, v in val_acc.items()]})
    if tuning:
        tables.append({"title": "Linear head lr on the validation stream (one run)",
                       "columns": ["lr", "val_last", "val_aia", "val_bwt"], "rows": tuning["rows"]})
    return {"title": f"Class-incremental CLAP4CLIP vs Continual-CLIP and a linear head on {model_label(model.bundle)}"
                     f" ({len(names)} classes, {shift})",
            "bench": "clap", "config": config, "columns": ["method", *_METRIC_LABELS.values()], "rows": rows,
            "tables": tables, "summary": summary, "curves": {m: c.tolist() for m, c in curves.items()},
            "matrices": matrices, "known_class_matrices": known_matrices, "novelty_per_task": novelty_per_task,
            "clap_variance_auroc": clap_variance_auroc, "differences": diffs,
            "orders": {str(s): runs[s]["order"] for s in seeds},
            "seconds": seconds, "notes": notes, "machine": machine_info(threads)}


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    """Accuracy on the seen classes after each task, per method: the mean over seeds with a min–max band."""
    from edgeclip.bench.figures import check_matplotlib, save_figure

    check_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for m, curve in results["curves"].items():
        c = np.asarray(curve, dtype=float)
        x = np.arange(1, c.shape[1] + 1)
        line = ax.plot(x, c.mean(0), marker="o", label=m)[0]
        ax.fill_between(x, c.min(0), c.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    cfg = results["config"]
    ax.set_xticks(np.arange(1, cfg["tasks"] + 1))
    ax.set_xlabel(f"task learnt ({cfg['classes_per_task']} new classes each)")
    ax.set_ylabel("accuracy on the seen classes (%)")
    ax.set_title(f"class-incremental, {cfg['shift']}: mean over {len(cfg['seeds'])} seeds (band: min–max)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def _clap_overrides(text: str | None) -> dict[str, Any]:
    """``KEY=VALUE,...`` → CLAPConfig overrides (ints, floats or words)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--clap takes KEY=VALUE pairs, got {item!r}")
        v: Any = value.strip()
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                continue
        out[key.strip()] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `edgeclip bench clap`."""
    p.add_argument("--bundle", default="micro", help="bundle directory (default: the embedded micro CLIP)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated run seeds (default 0,1,2,3,4)")
    p.add_argument("--shift", default="auto", help=f"the domain shift, or auto: the one of {list(CANDIDATE_SHIFTS)} "
                   "where zero-shot is least accurate on the validation stream (default auto)")
    p.add_argument("--per-class", type=int, default=50, help="training images per class (default 50)")
    p.add_argument("--n-test", type=int, default=1024, help="held-out test images, all classes (default 1024)")
    p.add_argument("--classes", choices=shapes.CLASS_SETS, default="colour-shape", help="the class set: colour × "
                   "shape (16, default) or size × colour × shape (32: a longer stream, e.g. --tasks 8)")
    p.add_argument("--tasks", type=int, default=4, help="tasks (default 4)")
    p.add_argument("--classes-per-task", type=int, default=4, help="classes per task (default 4)")
    p.add_argument("--clap", default="", metavar="KEY=VALUE,...",
                   help="CLAPConfig overrides, e.g. epochs=10,mc_samples=10 (default: none, the method's defaults)")
    p.add_argument("--linear-lr", type=float, default=None,
                   help="the linear head's lr (default: chosen on the validation stream)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for the JSON, Markdown and PNG")
    p.add_argument("--name", default=REPORT_NAME, help=f"report file stem (default {REPORT_NAME})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `edgeclip bench clap` with parsed `args`: write the reports and the plot, return the results."""
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise InputError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from exc
    results = bench_clap(args.bundle, seeds=seeds, shift=args.shift, per_class=args.per_class, n_test=args.n_test,
                         tasks=args.tasks, classes_per_task=args.classes_per_task,
                         clap_settings=_clap_overrides(args.clap), linear_lr=args.linear_lr, threads=args.threads,
                         classes=args.classes)
    for path in write_report(results, args.out, args.name).values():
        log.info("wrote %s", path)
    log.info("wrote %s", plot_accuracy(results, args.out / f"{args.name}.png"))
    return results
