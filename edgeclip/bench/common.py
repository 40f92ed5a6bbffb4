"""What every benchmark shares: the bundles it runs, the threads it runs them on, synthetic class names, and the
one out-of-memory guard.

- Bundles: `resolve_bundle` ("micro", a directory or a `Bundle`), `random_weight_bundle` (an open_clip
  architecture with random weights, exported once into a cache folder and reused while it verifies: random
  weights time the same as trained ones, so nothing is downloaded), `model_label` (the name a report shows).
- Threads: `torch_threads`, PyTorch's intra-op thread count for the duration of a block.
- Labels: `class_names` (C distinct 1–4-word names, seeded) and `prompts` ("a photo of a {name}.").
- Out of memory: `is_oom` says whether an exception is an out-of-memory failure (host or CUDA, PyTorch or ONNX
  Runtime); `guard_oom` runs a case once and turns such a failure into a recorded error; `retry_oom` runs a
  batched case and, after an out-of-memory failure, frees what it can and tries once more at `smaller_batch`
  (as timm's benchmark does), recording both the batch asked for and the batch that ran.
"""

from __future__ import annotations

import gc
import logging
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from edgeclip.errors import BundleError
from edgeclip.runtime import bundle as B

log = logging.getLogger(__name__)

__all__ = [
    "TEMPLATE",
    "Guarded",
    "cache_name",
    "class_names",
    "cuda_sync",
    "guard_oom",
    "is_oom",
    "model_label",
    "progress_bar",
    "prompts",
    "random_weight_bundle",
    "resolve_bundle",
    "retry_oom",
    "smaller_batch",
    "torch_threads",
]

T = TypeVar("T")

TEMPLATE = "a photo of a {}."


# -- bundles ----------------------------------------------------------------------------------------------
def resolve_bundle(bundle: str | Path | B.Bundle) -> B.Bundle:
    """An opened, verified bundle: `bundle` itself, the embedded micro CLIP for "micro", else the directory."""
    if isinstance(bundle, B.Bundle):
        return bundle
    if isinstance(bundle, str) and bundle == "micro":
        import edgeclip

        bundle = edgeclip.default_bundle()
    return B.open_bundle(bundle, verify=True)


def model_label(bundle: B.Bundle) -> str:
    """The name a report shows for `bundle`: its architecture ("ViT-B-32 (random weights)"), else its folder."""
    src = bundle.manifest.get("source")
    name = src.get("architecture") if isinstance(src, dict) else None
    if name and isinstance(src, dict) and src.get("weights") == "random":
        name = f"{name} (random weights)"
    return str(name or bundle.path.name)


def cache_name(model_name: str) -> str:
    """The folder name of `model_name`'s random-weight bundle in a cache ("ViT-B-32" -> "ViT-B-32-random.bundle")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") + "-random.bundle"


def random_weight_bundle(model_name: str, cache_dir: str | Path, *, progress: bool = False) -> B.Bundle:
    """The random-weight bundle of open_clip `model_name`, exported once to ``cache_dir/<cache_name>`` and reused
    while it verifies (ViT-B-32: about 40 s and 600 MB the first time)."""
    import edgeclip

    path = Path(cache_dir).expanduser() / cache_name(model_name)
    if (path / "manifest.json").is_file():
        try:
            return B.open_bundle(path, verify=True)
        except BundleError as exc:
            log.warning("cached bundle %s is unusable (%s); exporting again", path, exc)
    log.info("exporting random-weight %s to %s", model_name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edgeclip.export_bundle(path, model_name, overwrite=True, progress=progress)
    return B.open_bundle(path, verify=True)


# -- threads, sync, progress --------------------------------------------------------------------------------
@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op thread count set to `threads` inside the block (None: left as it is)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cuda_sync(device: str) -> Callable[[], Any] | None:
    """`torch.cuda.synchronize` when `device` is a CUDA device (call it before reading a clock), else None."""
    return torch.cuda.synchronize if device.startswith("cuda") else None


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, disabled (but still callable) when `enabled` is false."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)


# -- labels -----------------------------------------------------------------------------------------------
_ADJECTIVES = ("red", "small", "wooden", "striped", "electric", "rusty", "wild", "spotted", "folding",
               "golden", "plastic", "mountain", "garden", "sea", "paper", "black", "steel", "wet")
_NOUNS = ("dog", "kite", "bicycle", "teapot", "forklift", "heron", "lamp", "pallet", "tractor", "owl",
          "chair", "drone", "cone", "hose", "valve", "crate", "ladder", "fox", "truck", "robot", "mug",
          "helmet", "beetle", "boat", "sign", "camera", "gear", "snake", "door", "tulip")


def class_names(n: int, seed: int = 0) -> list[str]:
    """`n` distinct class names of 1–4 words (cycling 1, 2, 3, 4; a word count whose names are used up
    passes its turn to a longer one), the same for the same `seed`."""
    if n < 1:
        raise ValueError(f"need at least one class name, got n={n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    misses = 0
    while len(out) < n:
        words = (len(out) + misses // 64) % 4 + 1
        name = " ".join([*rng.sample(_ADJECTIVES, words - 1), rng.choice(_NOUNS)])
        if name in seen:
            misses += 1  # after 64 repeats in a row, move on to the next word count
            continue
        misses = 0
        seen.add(name)
        out.append(name)
    return out


def prompts(n: int, seed: int = 0) -> list[str]:
    """`n` zero-shot prompts: "a photo of a {name}." over `class_names(n, seed)`."""
    return [TEMPLATE.format(c) for c in class_names(n, seed)]


# -- out of memory ----------------------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure (host or CUDA, PyTorch or ONNX Runtime)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "failed to allocate" in msg


def smaller_batch(batch: int) -> int:
    """The batch to retry at after running out of memory at `batch`: half of it (0 when there is nothing
    smaller than 1 to try)."""
    return batch // 2


@dataclass
class Guarded(Generic[T]):
    """What a guarded case gave: its value, or the out-of-memory failures that stopped it.

    ``ok`` says whether the case ran; ``batch`` is the batch that ran (None for an unbatched case or when every
    attempt failed) and ``requested_batch`` the one asked for; ``oom`` holds one message per out-of-memory attempt,
    in order (a retried case that then ran has one).
    """

    value: T | None
    ok: bool
    requested_batch: int | None = None
    batch: int | None = None
    oom: list[str] = field(default_factory=list)

    @property
    def retried(self) -> bool:
        """Whether the value comes from a smaller batch than the one asked for."""
        return self.ok and self.batch != self.requested_batch

    @property
    def error(self) -> str | None:
        """None when the case ran, else "out of memory: ..." naming every failed attempt."""
        return None if self.ok else "out of memory: " + "; ".join(self.oom)

    def record(self) -> dict[str, Any]:
        """The fields a report row carries about the guard: ``requested_batch``, ``oom_retry`` (the failure
        before the smaller batch that ran; None when nothing failed) and ``error``."""
        retry = "; ".join(self.oom) if self.ok and self.oom else None
        return {"requested_batch": self.requested_batch, "oom_retry": retry, "error": self.error}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def guard_oom(fn: Callable[[], T], what: str) -> Guarded[T]:
    """Run `fn()` once; an out-of-memory failure is logged and recorded (``Guarded.error``) instead of raised.
    Any other exception is a bug, not a measurement, and propagates."""
    try:
        return Guarded(fn(), ok=True)
    except Exception as exc:
        if not is_oom(exc):
            raise
        log.warning("%s: out of memory (%s)", what, exc)
        _free_memory()
        return Guarded(None, ok=False, oom=[str(exc) or type(exc).__name__])


def retry_oom(fn: Callable[[int], T], batch: int, what: str) -> Guarded[T]:
    """Run `fn(batch)`; after an out-of-memory failure free memory and try once more at `smaller_batch(batch)`.

    The result records the batch asked for, the batch that ran and the failures before it; when the retry fails
    too (or there is no smaller batch) ``Guarded.error`` names both attempts. Any other exception propagates.
    """
    first = guard_oom(lambda: fn(batch), f"{what} at batch {batch}")
    if first.ok:
        return Guarded(first.value, ok=True, requested_batch=batch, batch=batch)
    failures = [f"batch {batch}: {first.oom[0]}"]
    retry = smaller_batch(batch)
    if retry < 1:
        return Guarded(None, ok=False, requested_batch=batch, oom=failures)
    log.warning("%s: retrying once at batch %d after running out of memory at batch %d", what, retry, batch)
    second = guard_oom(lambda: fn(retry), f"{what} at batch {retry}")
    if not second.ok:
        return Guarded(None, ok=False, requested_batch=batch, oom=[*failures, f"batch {retry}: {second.oom[0]}"])
    return Guarded(second.value, ok=True, requested_batch=batch, batch=retry, oom=failures)
