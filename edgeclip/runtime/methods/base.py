"""What every test-time adaptation method shares: views of a frame, their embeddings, the predict loop."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from edgeclip.errors import InputError
from edgeclip.runtime.classnames import validate_class_names
from edgeclip.runtime.methods.frames import ViewFn, iter_frames, kernel_views
from edgeclip.runtime.methods.guard import CollapseGuard
from edgeclip.runtime.model import EdgeClip
from edgeclip.runtime.prediction import Prediction

__all__ = ["FrameResult", "TestTimeMethod"]


class FrameResult:
    """One frame's class probabilities ``[C]``, its label when it is not their argmax, and what the method
    wants to report about it."""

    __slots__ = ("info", "label", "probs")

    def __init__(self, probs: torch.Tensor, info: dict[str, Any] | None = None, label: int | None = None) -> None:
        self.probs = probs
        self.info = info or {}
        self.label = int(probs.argmax()) if label is None else int(label)


class TestTimeMethod(ABC):
    """Base class: `predict(images)` adapts on every frame (episodic by default) and returns a Prediction.

    Subclasses implement `adapt(views_embeds) -> FrameResult`, given the embeddings ``[N, D]`` of the N views
    of one frame (view 0 is the plain CLIP view), all computed by the image encoder in one batch, and
    `reset()`. In ``episodic`` mode the state is reset after every frame; in ``online`` mode it is carried
    from frame to frame and a `CollapseGuard` resets it when one class takes over the predictions.
    """

    modes: tuple[str, ...] = ("episodic", "online")

    name = "base"
    __test__ = False  # not a pytest class

    def __init__(
        self,
        model: EdgeClip,
        class_names: Sequence[str],
        *,
        n_views: int = 64,
        rho: float = 0.1,
        seed: int = 0,
        views: ViewFn | None = None,
        mode: str = "episodic",
        guard: CollapseGuard | None = None,
    ) -> None:
        if mode not in self.modes:
            raise InputError(f"{self.name} runs in one of the modes {self.modes}, not {mode!r}")
        if n_views < 1:
            raise InputError(f"n_views must be >= 1, got {n_views}")
        if not 0.0 < rho <= 1.0:
            raise InputError(f"rho must lie in (0, 1], got {rho}")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.n_views = n_views
        self.rho = rho
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.views = views or kernel_views(model.preprocess_cfg)
        self.scale = float(model.logit_scale)
        self.mode = mode
        self.guard = guard if guard is not None else CollapseGuard()
        self.frames_seen = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    def embed_views(self, frame: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The frame's N views through the image encoder in one batch: embeddings ``[N, D]`` (no gradient)."""
        t0 = time.perf_counter()
        views = self.views(frame, self.n_views, self.generator).to(self.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            emb = self.model.image_encoder(views).float()
        t2 = time.perf_counter()
        return emb, {"views": t1 - t0, "image_encoder": t2 - t1}

    @abstractmethod
    def adapt(self, embeds: torch.Tensor) -> FrameResult:
        """Adapt on one frame's view embeddings ``[N, D]`` and predict its plain view."""

    def reset(self) -> None:
        """Forget everything adapted so far (a method without state, like ZERO, keeps this default)."""
        return None

    def predict(self, images: Any) -> Prediction:
        """Adapt on each frame of `images` (one image, a list, or a uint8 batch ``[B, H, W, 3]``) and predict it."""
        probs, labels, infos = [], [], []
        timings: dict[str, float] = {}
        for frame in iter_frames(images):
            embeds, t = self.embed_views(frame)
            t0 = time.perf_counter()
            result = self.adapt(embeds)
            self.frames_seen += 1
            if self.mode == "episodic":
                self.reset()
            elif self.guard.observe(result.label):
                result.info["collapse_reset"] = True
                self.reset()
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
