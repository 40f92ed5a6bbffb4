"""TPT's per-frame work done the usual way, as the baselines of `edgeclip bench kernels`.

Written from a description of TPT's official code (no code copied):

- `pil_views`: the augmentation loop on a PIL image. View 0 is CLIP's preprocessing (resize the shorter
  side to ``size`` with bicubic filtering, centre-crop ``size × size``); each other view is torchvision's
  ``RandomResizedCrop(size)`` (bilinear, in PIL) followed by ``RandomHorizontalFlip()``; every view then goes
  through ``ToTensor`` and ``Normalize`` with CLIP's mean and std, and the views are stacked.
- `tv2_views`: the same views from a uint8 tensor (CPU or CUDA) with ``torchvision.transforms.v2.functional``,
  one view at a time, on given crop boxes (so the output can be compared with `augment_views` on the same
  boxes).
- `torch_similarity_selection`: normalise both embeddings, matrix product, scale, softmax, entropy per view,
  the lowest-entropy views, and the log of their mean probability, as plain PyTorch calls.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as F2

from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD

__all__ = ["TorchSelection", "pil_views", "torch_similarity_selection", "tv2_views"]


@functools.lru_cache(maxsize=8)
def _pipelines(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[T.Compose, T.Compose, T.Compose]:
    """TPT's three transforms: the plain view, the random augmentation, and tensor conversion + normalisation."""
    base = T.Compose([T.Resize(size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size)])
    augment = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    return base, augment, to_tensor


def _box_rows(boxes: torch.Tensor) -> list[list[int]]:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5 or boxes.shape[0] < 1:
        raise ValueError("boxes must be an integer tensor [N, 5] of (top, left, height, width, flip)")
    return boxes.detach().to("cpu", torch.int64).tolist()


def pil_views(
    image: Image.Image,
    n_views: int = 64,
    size: int = 224,
    generator: torch.Generator | None = None,
    *,
    boxes: torch.Tensor | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """TPT's augmentation loop on a PIL image -> normalised views ``[N, 3, size, size]`` float32.

    The random crops and flips come from torch's global generator, as torchvision's transforms draw them;
    with ``generator`` the loop runs on a forked global generator seeded from it, so a seeded generator gives
    the same views every time and the global random state is left alone. With ``boxes`` (``[N, 5]``
    ``top, left, height, width, flip`` as `augment_views` returns them) nothing is drawn: each view is PIL's
    crop-and-resize of that box (bicubic for view 0, bilinear for the others), flipped when the box says so;
    ``n_views`` is then ignored. That mode exists to compare PIL's output with the other implementations.
    """
    if n_views < 1 or size < 1:
        raise ValueError(f"n_views and size must be >= 1, got {n_views} and {size}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    base, augment, to_tensor = _pipelines(int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if boxes is not None:
        views = []
        for i, (top, left, height, width, flip) in enumerate(_box_rows(boxes)):
            mode = InterpolationMode.BICUBIC if i == 0 else InterpolationMode.BILINEAR
            view = TF.resized_crop(image, top, left, height, width, [size, size], interpolation=mode)
            views.append(to_tensor(TF.hflip(view) if flip else view))
        return torch.stack(views)
    views = [to_tensor(base(image))]
    rng: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = torch.random.fork_rng(devices=[])
    with rng:
        if generator is not None:
            torch.default_generator.manual_seed(seed)
        views.extend(to_tensor(augment(image)) for _ in range(n_views - 1))
    return torch.stack(views)


def tv2_views(
    frame: torch.Tensor,
    boxes: torch.Tensor,
    size: int = 224,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """The views of ``boxes`` from a uint8 frame ``[3, H, W]`` (any device) with torchvision's v2 functional
    API, one view at a time -> ``[N, 3, size, size]`` float32 on the frame's device.

    Per view: ``resized_crop`` with antialiasing (bicubic for view 0, bilinear for the others) on the uint8
    tensor and a horizontal flip when the box's flip flag is set; then ``to_dtype(float32, scale=True)`` and
    ``normalize`` once on the stacked views. Resampling on uint8 rounds each view to whole pixel values
    before the conversion.
    """
    if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[0] != 3:
        got = f"{frame.dtype} {list(frame.shape)}" if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"tv2_views needs a uint8 frame [3, H, W], got {got}")
    mean_l, std_l = [float(m) for m in mean], [float(s) for s in std]
    views = []
    for i, (top, left, height, width, flip) in enumerate(_box_rows(boxes)):
        mode = InterpolationMode.BICUBIC if i == 0 else InterpolationMode.BILINEAR
        view = F2.resized_crop(frame, top, left, height, width, [size, size], interpolation=mode, antialias=True)
        views.append(F2.horizontal_flip(view) if flip else view)
    # the conversion and normalisation are done once for the whole stack: the fastest way to use the API
    return F2.normalize(F2.to_dtype(torch.stack(views), torch.float32, scale=True), mean_l, std_l)


class TorchSelection(NamedTuple):
    """What `torch_similarity_selection` computes, named as in `edgeclip.kernels.Confident` (plus the logits)."""

    logits: torch.Tensor  # [N, C] scale * cosine similarity
    probs: torch.Tensor  # [N, C] softmax of every view
    entropy: torch.Tensor  # [N] entropy of each view's softmax (nats)
    index: torch.Tensor  # [K] the K = max(1, int(rho * N)) lowest-entropy views, most confident first
    log_mean_prob: torch.Tensor  # [C] log of the mean probability over the selected views


def torch_similarity_selection(
    image: torch.Tensor, text: torch.Tensor, scale: float = 100.0, rho: float = 0.1
) -> TorchSelection:
    """Image embeddings ``[N, D]`` and class embeddings ``[C, D]`` -> `TorchSelection`, as plain PyTorch ops.

    ``F.normalize`` both, ``scale * image @ text.T``, softmax and log-softmax per view, entropy per view,
    ``topk`` of the lowest entropies (``max(1, int(rho * N))`` views), and ``log mean p`` over those views
    via ``logsumexp`` of their log-probabilities minus ``log K``.
    """
    image_n = F.normalize(image, dim=-1)
    text_n = F.normalize(text, dim=-1)
    logits = scale * image_n @ text_n.t()
    probs = logits.softmax(dim=1)
    logp = logits.log_softmax(dim=1)
    entropy = -(probs * logp).sum(dim=1)
    k = max(1, int(logits.shape[0] * rho))
    index = torch.topk(entropy, k, largest=False).indices
    chosen = logits[index]
    chosen_logp = chosen - chosen.logsumexp(dim=-1, keepdim=True)
    log_mean_prob = chosen_logp.logsumexp(dim=0) - math.log(k)
    return TorchSelection(logits, probs, entropy, index, log_mean_prob)
