"""augment_views on the CPU: parity with torchvision v2 on the same boxes, box sampling, bad input."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from edgeclip.errors import InputError
from edgeclip.kernels import augment_views
from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD, view_filters
from edgeclip.kernels.cpu_views import native_available, resample_views
from edgeclip.kernels.view_boxes import center_box, sample_boxes

MAE_BOUND = 1.0 / 255.0
MAX_BOUND = 16.0 / 255.0


def oracle(frame: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision v2 per view on the same boxes: resized_crop (antialias) + flip + normalise."""
    x = frame.permute(2, 0, 1).to(torch.float32) / 255.0
    views = []
    for i, (top, left, h, w, flip) in enumerate(boxes.tolist()):
        mode = TF.InterpolationMode.BICUBIC if i == 0 else TF.InterpolationMode.BILINEAR
        v = TF.resized_crop(x, top, left, h, w, [size, size], interpolation=mode, antialias=True)
        views.append(v.flip(-1) if flip else v)
    return TF.normalize(torch.stack(views), list(CLIP_MEAN), list(CLIP_STD))


def pixel_error(views: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean and max absolute difference in [0, 1] pixel units (normalisation undone)."""
    d = (views.float() - ref) * torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return d.abs().mean().item(), d.abs().max().item()


def noisy_frame(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)


def smooth_noisy_frame(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 7, generator=g), size=(h, w), mode="bilinear")[0]
    x = (base + 0.08 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


IMPLS = ["torch", pytest.param("native", marks=pytest.mark.skipif(not native_available(), reason="no C compiler"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("h", "w", "size", "n"),
    [(37, 91, 24, 9), (91, 37, 17, 6), (5, 3, 16, 4), (1, 1, 8, 3), (240, 321, 33, 12), (2, 200, 11, 5)],
)
@pytest.mark.parametrize("kind", ["uniform_noise", "smooth_plus_noise"])
def test_parity_with_torchvision(impl: str, h: int, w: int, size: int, n: int, kind: str) -> None:
    frame = noisy_frame(h, w, seed=h * w) if kind == "uniform_noise" else smooth_noisy_frame(h, w, seed=h + w)
    boxes = sample_boxes(h, w, n, generator=torch.Generator().manual_seed(n))
    views = resample_views(frame, boxes, view_filters(n), size, CLIP_MEAN, CLIP_STD, impl=impl)
    mae, mx = pixel_error(views, oracle(frame, boxes, size))
    # the bounds are 1/255 and 16/255; both paths apply torch's own taps, so they sit far below
    assert mae <= MAE_BOUND and mx <= MAX_BOUND
    assert mae < 1e-5 and mx < 1e-4, (mae, mx)


@pytest.mark.parametrize("impl", IMPLS)
def test_full_hd_frame_both_dtypes(impl: str) -> None:
    frame = noisy_frame(1080, 1920, seed=7)
    gen = torch.Generator().manual_seed(3)
    boxes = sample_boxes(1080, 1920, 8, generator=gen)
    ref = oracle(frame, boxes, 224)
    for dtype, bound in ((torch.float32, 1e-4), (torch.float16, 4e-3)):
        views = resample_views(frame, boxes, view_filters(8), 224, CLIP_MEAN, CLIP_STD, dtype=dtype, impl=impl)
        assert views.dtype == dtype and views.shape == (8, 3, 224, 224)
        mae, mx = pixel_error(views, ref)
        assert mae <= MAE_BOUND and mx <= MAX_BOUND
        assert mx < bound, (dtype, mx)


@pytest.mark.skipif(not native_available(), reason="no C compiler")
def test_native_matches_torch_reference() -> None:
    frame = smooth_noisy_frame(120, 173, seed=1)
    boxes = sample_boxes(120, 173, 16, generator=torch.Generator().manual_seed(0))
    a = resample_views(frame, boxes, view_filters(16), 40, CLIP_MEAN, CLIP_STD, impl="native")
    b = resample_views(frame, boxes, view_filters(16), 40, CLIP_MEAN, CLIP_STD, impl="torch")
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_view_zero_is_clip_preprocessing() -> None:
    """View 0 reads the centred square of the shorter side, bicubic: what EdgeClip.preprocess computes
    (resize shorter side, then centre crop) up to the crop-then-resize rounding."""
    from edgeclip.runtime.images import PreprocessConfig, preprocess

    frame = smooth_noisy_frame(300, 451, seed=5)
    views, boxes = augment_views(frame, 4, 64, generator=torch.Generator().manual_seed(0))
    assert boxes[0].tolist() == [0, 76, 300, 300, 0]
    assert center_box(300, 451) == (0, 76, 300, 300)
    ref = preprocess([frame.numpy()], PreprocessConfig(image_size=64))
    mae, _ = pixel_error(views[:1], ref)
    assert mae < 0.02


def test_boxes_follow_random_resized_crop() -> None:
    h, w, n = 480, 640, 4000
    boxes = sample_boxes(h, w, n, generator=torch.Generator().manual_seed(0))
    assert boxes.dtype == torch.int64 and boxes.shape == (n, 5)
    top, left, bh, bw, flip = boxes[1:].unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + bh <= h) & (left + bw <= w)).all())
    area = (bh * bw).double() / (h * w)
    aspect = bw.double() / bh.double()
    assert area.min().item() >= 0.07 and area.max().item() <= 1.0
    # torchvision's own sampler on the same frame: the same distribution (rejections included)
    import torchvision.transforms as T

    torch.manual_seed(0)
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                        for _ in range(n)], dtype=torch.float64)
    ref_area = ref[:, 2] * ref[:, 3] / (h * w)
    assert abs(area.mean().item() - ref_area.mean().item()) < 0.02
    assert abs(area.std().item() - ref_area.std().item()) < 0.02
    assert abs(torch.log(ref[:, 3] / ref[:, 2]).mean().item() - torch.log(aspect).mean().item()) < 0.02
    assert aspect.min().item() >= 0.74 and aspect.max().item() <= 1.35
    assert abs(flip.double().mean().item() - 0.5) < 0.03
    assert boxes[0, 4].item() == 0


def test_boxes_fallback_when_nothing_fits() -> None:
    # a 1×200 strip cannot hold a box with aspect within 3/4..4/3 and area >= 8 %: centre-crop fallback
    boxes = sample_boxes(1, 200, 5, generator=torch.Generator().manual_seed(0))
    assert boxes[1:, 2].eq(1).all() and boxes[1:, 3].eq(1).all()
    assert boxes[1:, 1].eq(99).all()


def test_same_generator_same_views_and_boxes_reproduce() -> None:
    frame = noisy_frame(64, 80, seed=2)
    v1, b1 = augment_views(frame, 8, 32, generator=torch.Generator().manual_seed(11))
    v2, b2 = augment_views(frame, 8, 32, generator=torch.Generator().manual_seed(11))
    v3, _ = augment_views(frame, boxes=b1, size=32)
    assert torch.equal(b1, b2) and torch.equal(v1, v2) and torch.equal(v1, v3)
    _, b4 = augment_views(frame, 8, 32, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(b1, b4)


def test_numpy_frame_and_options() -> None:
    frame = noisy_frame(50, 70, seed=3)
    views, boxes = augment_views(frame.numpy(), 5, 20, flip_p=0.0, scale=(1.0, 1.0), ratio=(1.4, 1.4),
                                 dtype=torch.bfloat16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert views.shape == (5, 3, 20, 20) and views.dtype == torch.bfloat16
    assert boxes[:, 4].eq(0).all()
    assert views.float().min() >= -1.01 and views.float().max() <= 1.01  # (x - .5) / .5 of pixels in [0, 1]
    assert torch.isfinite(views.float()).all()


@pytest.mark.parametrize(
    ("frame", "kwargs", "match"),
    [
        (torch.zeros(10, 10, 3), {}, "uint8"),
        (torch.zeros(10, 10, dtype=torch.uint8), {}, "H×W×3"),
        (torch.zeros(0, 10, 3, dtype=torch.uint8), {}, "at least 1×1"),
        ([[1, 2, 3]], {}, "uint8 tensor or array"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"n_views": 0}, "n_views"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"size": 0}, "size"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"scale": (0.5, 0.2)}, "scale"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"ratio": (0.0, 1.0)}, "ratio"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"flip_p": 1.5}, "flip_p"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"dtype": torch.int32}, "float32"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"std": (1.0, 0.0, 1.0)}, "std"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"impl": "cuda"}, "impl"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"boxes": torch.tensor([[0, 0, 11, 5, 0]])}, "does not fit"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"boxes": torch.tensor([[0, 0, 5, 5, 2]])}, "does not fit"),
        (torch.zeros(10, 10, 3, dtype=torch.uint8), {"boxes": torch.zeros(3, 4, dtype=torch.int64)}, r"\[N, 5\]"),
    ],
)
def test_bad_input(frame: object, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        augment_views(frame, **kwargs)


def test_triton_on_cpu_needs_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InputError, match="CUDA"):
        augment_views(torch.zeros(8, 8, 3, dtype=torch.uint8), 2, 4, impl="triton")


def test_extreme_frames_stay_finite() -> None:
    black = torch.zeros(9, 9, 3, dtype=torch.uint8)
    white = torch.full((9, 9, 3), 255, dtype=torch.uint8)
    for frame, value in ((black, 0.0), (white, 1.0)):
        views, _ = augment_views(frame, 6, 16)
        expected = (value - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
        torch.testing.assert_close(views, expected.view(1, 3, 1, 1).expand_as(views), atol=1e-5, rtol=0)
