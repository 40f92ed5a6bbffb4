"""Paired accuracy differences with a percentile bootstrap confidence interval over frames.

Two methods run on the same frames; per frame each is right or wrong. The difference of their accuracies (in
points) is estimated with its 95 % percentile bootstrap interval: the frames are resampled with replacement,
the *same* resampled frames for both methods (paired), and the statistic is recomputed on each resample. With
several strata (the shifts of a benchmark) frames are resampled within each stratum, and the statistic of the
whole is the mean over strata of the per-stratum differences, so the interval of a mean over shifts accounts
for every shift's sampling noise. numpy only; a fixed seed makes every interval reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["MEAN", "N_RESAMPLES", "PairedDifference", "paired_difference", "paired_differences"]

N_RESAMPLES = 10_000
MEAN = "mean"
_CHUNK = 2_000  # resamples drawn at a time (bounds memory: chunk × frames indices)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of `a` minus accuracy of `b` on the same frames, in points, with its bootstrap interval."""

    diff: float  # points: 100 · (mean(a) − mean(b))
    lo: float  # lower end of the interval, points
    hi: float  # upper end, points
    n: int  # frames (summed over strata for a mean)
    level: float  # e.g. 0.95

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return self.lo > 0.0 or self.hi < 0.0

    @property
    def verdict(self) -> str:
        """"beats" (interval above zero), "worse" (below) or "no significant difference"."""
        if self.lo > 0.0:
            return "beats"
        if self.hi < 0.0:
            return "worse"
        return "no significant difference"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict}

    def format(self) -> str:
        """``+1.2 [−0.4, +2.9]``: the difference and its interval, in points."""
        return f"{self.diff:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}]"


def _as_frames(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, what: str) -> np.ndarray:
    """The per-frame differences a − b as float64 (−1, 0, +1 for correctness)."""
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if xa.ndim != 1 or xa.shape != xb.shape:
        raise ValueError(f"{what}: paired runs need the same frames, got shapes {xa.shape} and {xb.shape}")
    if xa.size == 0:
        raise ValueError(f"{what}: no frames")
    return xa - xb


def _resampled_means(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `d` over `n_resamples` resamples of its frames with replacement, shape (n_resamples,)."""
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))  # (chunk, frames)
        out[start:stop] = d[idx].mean(axis=1)
    return out


def paired_differences(a: Mapping[str, Sequence[bool]], b: Mapping[str, Sequence[bool]], *,
                       n_resamples: int = N_RESAMPLES, level: float = 0.95, seed: int = 0,
                       ) -> dict[str, PairedDifference]:
    """Per stratum and for the mean over strata (key `MEAN`): accuracy of `a` minus `b` in points, with its
    `level` percentile bootstrap interval.

    Args:
        a, b: per stratum (e.g. shift), per-frame correctness of the two methods on the same frames, in the same
            order (``a[s][i]`` and ``b[s][i]`` are the same frame); the strata of `a` and `b` must match.
        n_resamples: bootstrap resamples (each resamples every stratum's frames with replacement, the same
            frames for both methods).
        level: the interval's coverage; the interval is the ((1 − level)/2, (1 + level)/2) percentiles.
        seed: seeds the resampling, so the same inputs always give the same interval.

    Returns:
        ``{stratum: PairedDifference, ..., "mean": PairedDifference}``; the mean's difference is the mean of the
        per-stratum differences (every stratum weighs the same, as a mean over shifts does).
    """
    if set(a) != set(b) or not a:
        raise ValueError(f"paired runs need the same non-empty strata, got {sorted(a)} and {sorted(b)}")
    if MEAN in a:
        raise ValueError(f"{MEAN!r} is the key of the mean over strata; rename that stratum")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    q = 100.0 * np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    out: dict[str, PairedDifference] = {}
    boots = []
    for stratum in a:
        d = _as_frames(a[stratum], b[stratum], stratum)
        boot = 100.0 * _resampled_means(d, n_resamples, rng)  # (R,)
        boots.append(boot)
        lo, hi = np.percentile(boot, q)
        out[stratum] = PairedDifference(100.0 * float(d.mean()), float(lo), float(hi), int(d.size), level)
    mean_boot = np.mean(boots, axis=0)  # (R,): the same resample of every stratum, averaged over strata
    lo, hi = np.percentile(mean_boot, q)
    out[MEAN] = PairedDifference(float(np.mean([r.diff for r in out.values()])), float(lo), float(hi),
                                 sum(r.n for r in out.values()), level)
    return out


def paired_difference(a: Sequence[bool], b: Sequence[bool], *, n_resamples: int = N_RESAMPLES,
                      level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Accuracy of `a` minus `b` on one stream of frames, in points, with its percentile bootstrap interval
    (`paired_differences` with a single stratum)."""
    return paired_differences({"frames": a}, {"frames": b}, n_resamples=n_resamples, level=level,
                              seed=seed)["frames"]
