"""The contract every method keeps: `Method` (predict, reset, state), `Trainable` (fit, heads), `ViewMethod`.

* `Method`: ``predict(images) -> Prediction``, ``reset()``, ``state_dict()`` / ``load_state_dict()``, one frozen
  config (``method.config``). Zero-shot, TPT, PromptSync, ZERO, online prototypes and CoOp are all Methods.
* `Trainable(Method)`: adds ``fit(pool) -> FitReport`` on a `FeaturePool` and saves / loads what it learnt as
  a **head** (`edgeclip.runtime.head`).
* `ViewMethod(Method)`: the test-time methods that take N views of every frame, encode them in one batch with
  the exported image encoder and adapt on their embeddings (``adapt``), episodic or online.

**Threads.** Every method is safe to share between threads: ``predict``, ``reset``, ``state_dict``,
``load_state_dict`` and ``fit`` take the instance's lock, so calls on one instance run one at a time and each
sees the state the previous one left (a frame's adapt-predict-reset is never interleaved with another's).
For parallel throughput give each thread its own instance; instances share the loaded model.

**State.** ``state_dict()`` is ``{"adapted": ..., "stream": ...}`` (see `edgeclip.runtime.methods.state`):
``reset()`` returns ``adapted`` to what it was at creation; restoring a state dict restores both, so the next
prediction is the one the original would have made.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from edgeclip.errors import InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.methods.config import MODES, check_mode, check_positive_int
from edgeclip.runtime.methods.frames import iter_frames, kernel_views
from edgeclip.runtime.methods.guard import CollapseGuard
from edgeclip.runtime.methods.state import clone_state, generator_state, load_generator_state
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.prediction import Prediction

__all__ = ["FitReport", "FrameResult", "Method", "Trainable", "ViewMethod"]


class Method(ABC):
    """Base of every method: a model, class names, a frozen config, a lock (see the module docstring).

    Subclasses set ``name`` (the registry name), ``config_class`` and, for constructor arguments that are not
    configuration (data such as prototypes), list them in ``resources``; they implement ``_predict`` and,
    when they adapt, ``_adapted_state`` / ``_load_adapted_state`` / ``_reset_adapted``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type]
    #: keyword arguments of the constructor that are data, not configuration (the registry passes them through)
    resources: ClassVar[tuple[str, ...]] = ()
    __test__ = False  # not a pytest class

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: Any = None) -> None:
        if not isinstance(model, EdgeClip):
            raise InputError(f"{self.name} needs a model from edgeclip.load(), got {type(model).__name__}")
        cfg = self.config_class() if config is None else config
        if not isinstance(cfg, self.config_class):
            raise InputError(f"{self.name} takes a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.config = cfg
        self.frames_seen = 0
        self._lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def stateful(self) -> bool:
        """True when a prediction depends on the frames before it (online adaptation); a `Session` keeps such a
        method on one worker so its frames stay in order."""
        return False

    # -- the public, locked API ------------------------------------------------------------------------------
    def predict(self, images: Any) -> Prediction:
        """Labels and probabilities for one image, a list of images, or a uint8 batch ``[B, H, W, 3]``."""
        with self._lock:
            return self._predict(images)

    def reset(self) -> None:
        """Forget everything adapted so far (the state goes back to what it was at creation)."""
        with self._lock:
            self._reset_adapted()
            self._reset_stream()

    def state_dict(self) -> dict[str, Any]:
        """A snapshot ``{"adapted": ..., "stream": ...}`` of nested dicts of tensors and JSON values."""
        with self._lock:
            return clone_state({"adapted": self._adapted_state(), "stream": self._stream_state()})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` snapshot of a method of the same kind, config and classes."""
        if not isinstance(state, dict) or set(state) != {"adapted", "stream"}:
            raise InputError("a method state must be the dict state_dict() returns, with 'adapted' and 'stream'")
        with self._lock:
            self._load_adapted_state(clone_state(state["adapted"]))
            self._load_stream_state(clone_state(state["stream"]))

    # -- what subclasses implement ---------------------------------------------------------------------------
    @abstractmethod
    def _predict(self, images: Any) -> Prediction:
        """Predict (and adapt, for adaptive methods); called under the lock."""

    def _adapted_state(self) -> dict[str, Any]:
        return {}

    def _load_adapted_state(self, state: dict[str, Any]) -> None:
        if state:
            raise InputError(f"{self.name} has no adapted state, got keys {sorted(state)}")

    def _reset_adapted(self) -> None:
        return None

    def _stream_state(self) -> dict[str, Any]:
        return {"frames_seen": self.frames_seen}

    def _load_stream_state(self, state: dict[str, Any]) -> None:
        self.frames_seen = int(state.get("frames_seen", 0))

    def _reset_stream(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.class_names)} classes, {self.config!r})"


@dataclass
class FitReport:
    """What `Trainable.fit` did: per-epoch losses and accuracies, the epoch it kept, and how long it took."""

    method: str
    epochs: int
    steps: int
    seconds: float
    n_train: int
    n_val: int
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    skipped_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "epochs": self.epochs, "steps": self.steps, "seconds": self.seconds,
                "n_train": self.n_train, "n_val": self.n_val, "train_loss": list(self.train_loss),
                "val_accuracy": list(self.val_accuracy), "best_epoch": self.best_epoch,
                "skipped_steps": self.skipped_steps, "extra": dict(self.extra)}


class Trainable(Method):
    """A method that learns from a `FeaturePool` (``fit``) and keeps what it learnt in a head file."""

    def fit(self, pool: Any, *, val: Any = None, progress: bool = False) -> FitReport:
        """Train on `pool` (labelled `FeaturePool`); select on `val` when given. Returns a `FitReport`."""
        with self._lock:
            return self._fit(pool, val=val, progress=progress)

    @abstractmethod
    def _fit(self, pool: Any, *, val: Any, progress: bool) -> FitReport:
        """Train; called under the lock."""

    def save_head(self, path: str | Path) -> Path:
        """Write the learnt state as a head (one safetensors file, atomically); returns the path."""
        from edgeclip.runtime.head import save_head

        with self._lock:
            return save_head(self, path)

    def load_head(self, path: str | Path) -> None:
        """Load a head saved by `save_head` for this method, bundle and class list (else `BundleError`)."""
        from edgeclip.runtime.head import read_head

        head = read_head(path)
        with self._lock:
            head.apply_to(self)


class FrameResult:
    """One frame's class probabilities ``[C]``, its label (the argmax unless the method decides otherwise),
    and what the method reports about it."""

    __slots__ = ("info", "label", "probs")

    def __init__(self, probs: torch.Tensor, info: dict[str, Any] | None = None, label: int | None = None) -> None:
        self.probs = probs
        self.info = info or {}
        self.label = int(probs.argmax()) if label is None else int(label)


class ViewMethod(Method):
    """Test-time adaptation on the views of each frame (see the module docstring).

    Subclasses implement ``adapt(view_embeds [N, D]) -> FrameResult`` (view 0 the plain CLIP view) and the
    adapted-state hooks. In ``episodic`` mode the adapted state is reset after every frame; in ``online`` mode it
    is carried from frame to frame and a `CollapseGuard` resets it when one class takes over the predictions.
    The config has ``views`` (`ViewConfig`), ``mode`` and ``guard`` (`GuardConfig`).
    """

    modes: ClassVar[tuple[str, ...]] = MODES

    def __init__(self, model: EdgeClip, class_names: Sequence[str], config: Any = None) -> None:
        super().__init__(model, class_names, config)
        check_mode(self.config.mode, self.modes)
        views = self.config.views
        self.generator = torch.Generator().manual_seed(views.seed)
        self.views = views.view_fn or kernel_views(model.preprocess_cfg)
        self.scale = float(model.logit_scale)
        self.guard = CollapseGuard(self.config.guard.window, self.config.guard.max_share)
        self.skipped_steps = 0
        self._n_views_now: int | None = None

    @property
    def stateful(self) -> bool:
        return self.mode == "online"

    @property
    def n_views(self) -> int:
        """Views per frame: the config's, or the count `predict(..., n_views=)` asked for during that call."""
        return self.config.views.n_views if self._n_views_now is None else self._n_views_now

    def predict(self, images: Any, *, n_views: int | None = None) -> Prediction:
        """As `Method.predict`; `n_views` overrides the config's view count for this call only (a `Session`
        under a latency budget uses it). Each frame's info says how many views it used (``"views"``)."""
        if n_views is not None:
            check_positive_int("n_views", n_views)
        with self._lock:
            self._n_views_now = n_views
            try:
                return self._predict(images)
            finally:
                self._n_views_now = None

    @property
    def rho(self) -> float:
        return self.config.views.rho

    @property
    def mode(self) -> str:
        return self.config.mode

    def embed_views(self, frame: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The frame's N views through the image encoder in one batch: embeddings ``[N, D]`` (no gradient).

        On a CUDA model the uint8 frame goes to the device first, so the views are made there (Triton) and
        only the frame crosses the bus."""
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            frame = frame.to(self.device, non_blocking=True)
        views = self.views(frame, self.n_views, self.generator).to(self.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            emb = self.model.image_encoder(views).float()
        t2 = time.perf_counter()
        return emb, {"views": t1 - t0, "image_encoder": t2 - t1}

    @abstractmethod
    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        """Adapt on one frame's view embeddings ``[N, D]`` and predict its plain view (view 0)."""

    def _predict(self, images: Any) -> Prediction:
        probs, labels, infos = [], [], []
        timings: dict[str, float] = {}
        for frame in iter_frames(images):
            embeds, t = self.embed_views(frame)
            t0 = time.perf_counter()
            result = self.adapt(embeds)
            result.info["frame"] = self.frames_seen
            result.info["views"] = self.n_views
            self.frames_seen += 1
            if self.mode == "episodic":
                self._reset_adapted()
            elif self.guard.observe(result.label):
                result.info["collapse_reset"] = True
                self._reset_adapted()
            t["adapt"] = time.perf_counter() - t0
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
            probs.append(result.probs.detach().float().cpu())
            labels.append(result.label)
            infos.append(result.info)
        if not probs:
            raise InputError("predict needs at least one image")
        return Prediction(torch.tensor(labels, dtype=torch.int64), torch.stack(probs), self.class_names, timings,
                          {"method": self.name, "frames": infos})

    def _stream_state(self) -> dict[str, Any]:
        return {"frames_seen": self.frames_seen, "rng": generator_state(self.generator),
                "guard": self.guard.state_dict(), "skipped_steps": self.skipped_steps}

    def _load_stream_state(self, state: dict[str, Any]) -> None:
        missing = {"frames_seen", "rng", "guard", "skipped_steps"} - set(state)
        if missing:
            raise InputError(f"{self.name} stream state lacks {sorted(missing)}")
        self.frames_seen = int(state["frames_seen"])
        load_generator_state(self.generator, state["rng"])
        self.guard.load_state_dict(state["guard"])
        self.skipped_steps = int(state["skipped_steps"])

    def _reset_stream(self) -> None:
        self.guard.clear()
