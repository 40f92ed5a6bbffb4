"""`augment_views_triton` (one Triton kernel: crop, antialiased resize, flip, normalise, cast) against two
oracles: torchvision's ``resized_crop(..., antialias=True)`` on the float frame followed by ``flip`` and the
normalisation, and the 1-D weights of `view_boxes.resample_weights` applied separably in float64.

Without CUDA the kernel runs in Triton's CPU interpreter (conftest sets ``TRITON_INTERPRET=1``), which is
slow, so these frames and outputs are small; the ``gpu`` tests run the compiled kernel at full size.
Errors are measured in ``[0, 1]`` pixel units: the kernel's output is un-normalised (``v * std + mean``)
before it is compared.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from edgeclip.errors import InputError
from edgeclip.kernels.view_boxes import FILTERS, resample_weights, sample_boxes

pytestmark = pytest.mark.triton

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# the bounds, in [0, 1] pixel units
MEAN_BOUND = 1.0 / 255.0
MAX_BOUND = 16.0 / 255.0
# what each dtype actually achieves: float32 agrees with torch to rounding; float16 / bfloat16 to half an ulp
# of the normalised value (|v| < 4), times std
TIGHT_MAX = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}

_INTERP = {FILTERS["bilinear"]: InterpolationMode.BILINEAR, FILTERS["bicubic"]: InterpolationMode.BICUBIC}


def _kernel():
    from edgeclip.kernels.cuda import augment_views as mod

    return mod


def _noisy_frame(height: int, width: int, seed: int) -> torch.Tensor:
    """Uniform noise over a smooth gradient: the worst case for resampling, plus some structure."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.int64)
    yy = torch.linspace(0, 255, height).view(-1, 1, 1)
    xx = torch.linspace(0, 255, width).view(1, -1, 1)
    return ((noise + yy + xx) % 256).to(torch.uint8).contiguous()


def _oracle(frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision on the float frame in [0, 1], view by view: [N, 3, size, size] float32, not normalised."""
    img = frame.cpu().permute(2, 0, 1).float() / 255.0
    views = []
    for (top, left, h, w, flip), code in zip(boxes.tolist(), filters.tolist(), strict=True):
        v = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=_INTERP[code], antialias=True)
        views.append(v.flip(-1) if flip else v)
    return torch.stack(views)


def _weights_oracle(frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int) -> torch.Tensor:
    """The contract of view_boxes: separable float64 resampling with resample_weights' taps."""
    height, width = frame.shape[:2]
    img = frame.cpu().permute(2, 0, 1).double() / 255.0
    iy, wy = resample_weights(boxes[:, 0], boxes[:, 2], size, height, filters)
    ix, wx = resample_weights(boxes[:, 1], boxes[:, 3], size, width, filters)
    views = []
    for n in range(boxes.shape[0]):
        rows = img[:, iy[n], :]  # [3, size, Ty, W]
        cols = rows[..., ix[n]]  # [3, size, Ty, size, Tx]
        v = torch.einsum("cytxu,yt,xu->cyx", cols, wy[n], wx[n])
        views.append(v.flip(-1) if int(boxes[n, 4]) else v)
    return torch.stack(views).float()


def _run(
    frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int, dtype: torch.dtype
) -> torch.Tensor:
    out = _kernel().augment_views_triton(frame.to(DEVICE), boxes, filters, size, MEAN, STD, dtype)
    assert out.shape == (boxes.shape[0], 3, size, size)
    assert out.dtype == dtype and out.device.type == DEVICE.type and out.is_contiguous()
    return out


def _unnormalise(out: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return out.cpu().float() * std + mean


def _assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    err = (_unnormalise(out) - ref).abs()
    assert torch.isfinite(err).all()
    mean_err, max_err = err.mean().item(), err.max().item()
    assert mean_err <= MEAN_BOUND, f"mean abs error {mean_err:.3g} > 1/255"
    assert max_err <= MAX_BOUND, f"max abs error {max_err:.3g} > 16/255"
    assert max_err <= TIGHT_MAX[dtype], f"max abs error {max_err:.3g} > {TIGHT_MAX[dtype]:g} for {dtype}"


@pytest.mark.parametrize(
    ("height", "width", "size", "n_views", "seed", "dtype"),
    [
        (37, 53, 16, 8, 0, torch.float32),
        (37, 53, 16, 8, 0, torch.float16),
        (64, 48, 24, 5, 1, torch.float32),
        (17, 120, 16, 5, 2, torch.float32),
        (17, 120, 16, 5, 2, torch.float16),
        (9, 9, 16, 6, 3, torch.float32),
        (9, 9, 16, 6, 3, torch.float16),
    ],
)
def test_sampled_boxes_match_torchvision(
    height: int, width: int, size: int, n_views: int, seed: int, dtype: torch.dtype
) -> None:
    frame = _noisy_frame(height, width, seed)
    g = torch.Generator().manual_seed(100 + seed)
    # a wide area range gives small boxes (upsampling) as well as near-full-frame ones (downsampling)
    boxes = sample_boxes(height, width, n_views, scale=(0.01, 1.0), generator=g)
    filters = torch.arange(n_views, dtype=torch.int64) % 2
    _assert_close(_run(frame, boxes, filters, size, dtype), _oracle(frame, boxes, filters, size), dtype)


def _edge_boxes(height: int, width: int, size: int) -> torch.Tensor:
    rows = [
        (0, 0, height, width, 0),  # the whole frame
        (0, 0, height, width, 1),  # the whole frame, flipped
        (0, 7, height, 1, 0),  # one pixel wide, full height
        (5, 0, 1, width, 1),  # one pixel high, full width, flipped
        (height - 1, width - 1, 1, 1, 0),  # the bottom-right pixel
        (0, 0, size, size, 0),  # same size as the output: identity
        (height - size, width - size, size, size, 1),  # identity, flipped, at the far corner
        (4, 9, 3, 5, 1),  # upsampled about 5x
        (2, 3, size + 1, size - 1, 0),  # scale just above / below one
        (0, width - 2, height, 2, 0),  # tall and thin at the right edge
    ]
    return torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize("code", [FILTERS["bilinear"], FILTERS["bicubic"]])
def test_edge_case_boxes_match_torchvision(code: int) -> None:
    height, width, size = 23, 31, 16
    frame = _noisy_frame(height, width, 7)
    boxes = _edge_boxes(height, width, size)
    filters = torch.full((boxes.shape[0],), code, dtype=torch.int64)
    out = _run(frame, boxes, filters, size, torch.float32)
    _assert_close(out, _oracle(frame, boxes, filters, size), torch.float32)
    # a box of the output's size is copied unchanged, mirrored when flipped
    crop = frame[:size, :size].permute(2, 0, 1).float() / 255.0
    assert torch.allclose(_unnormalise(out[5:6])[0], crop, atol=1e-6)
    far = frame[height - size :, width - size :].permute(2, 0, 1).float() / 255.0
    assert torch.allclose(_unnormalise(out[6:7])[0], far.flip(-1), atol=1e-6)


def test_matches_resample_weights() -> None:
    """The kernel's taps are the ones view_boxes documents, for both filters, up and down."""
    height, width, size = 29, 41, 16
    frame = _noisy_frame(height, width, 11)
    boxes = torch.cat([sample_boxes(height, width, 4, scale=(0.02, 1.0), generator=torch.Generator().manual_seed(5)),
                       _edge_boxes(height, width, size)[[1, 2, 7]]])  # fmt: skip
    filters = torch.tensor([1, 0, 1, 0, 1, 0, 1], dtype=torch.int64)
    out = _run(frame, boxes, filters, size, torch.float32)
    _assert_close(out, _weights_oracle(frame, boxes, filters, size), torch.float32)


@pytest.mark.parametrize("code", [FILTERS["bilinear"], FILTERS["bicubic"]])
def test_strong_downsampling_many_taps(code: int) -> None:
    """A full-frame box shrunk 12.5x across and ~4x down (bicubic: 50 column taps in 13 chunks, 15 row taps),
    next to a tiny box in the same batch (each tile takes its own loop bounds)."""
    height, width, size = 30, 100, 8
    frame = _noisy_frame(height, width, 13)
    boxes = torch.tensor([[0, 0, height, width, 1], [10, 20, 2, 3, 0]], dtype=torch.int64)
    filters = torch.full((2,), code, dtype=torch.int64)
    out = _run(frame, boxes, filters, size, torch.float32)
    _assert_close(out, _oracle(frame, boxes, filters, size), torch.float32)


def test_bicubic_overshoot_is_not_clamped() -> None:
    """torchvision does not clamp float images after bicubic resampling; neither does the kernel."""
    frame = torch.zeros(12, 12, 3, dtype=torch.uint8)
    frame[:, 6:] = 255  # a hard vertical edge
    boxes = torch.tensor([[3, 3, 6, 6, 0], [0, 0, 12, 12, 1]], dtype=torch.int64)
    filters = torch.tensor([FILTERS["bicubic"], FILTERS["bicubic"]])
    ref = _oracle(frame, boxes, filters, 24)
    assert ref.min() < -0.01 and ref.max() > 1.01  # the oracle overshoots ...
    out = _unnormalise(_run(frame, boxes, filters, 24, torch.float32))
    assert out.min() < -0.01 and out.max() > 1.01  # ... and so does the kernel, by the same amount
    assert (out - ref).abs().max() <= TIGHT_MAX[torch.float32]


def test_bfloat16_output() -> None:
    frame = _noisy_frame(20, 26, 17)
    boxes = sample_boxes(20, 26, 5, scale=(0.05, 1.0), generator=torch.Generator().manual_seed(17))
    filters = torch.tensor([1, 0, 0, 1, 0], dtype=torch.int64)
    out = _run(frame, boxes, filters, 16, torch.bfloat16)
    _assert_close(out, _oracle(frame, boxes, filters, 16), torch.bfloat16)


def _call(**overrides: object) -> torch.Tensor:
    args: dict[str, object] = {
        "frame": torch.zeros(10, 12, 3, dtype=torch.uint8, device=DEVICE),
        "boxes": torch.tensor([[0, 0, 10, 12, 0], [2, 3, 4, 5, 1]], dtype=torch.int64),
        "filters": torch.tensor([0, 1], dtype=torch.int64),
        "size": 8,
        "mean": MEAN,
        "std": STD,
        "dtype": torch.float32,
    }
    args.update(overrides)
    return _kernel().augment_views_triton(**args)  # type: ignore[arg-type]


_FRAME = torch.zeros(10, 12, 3, dtype=torch.uint8, device=DEVICE)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"frame": _FRAME.float()}, "uint8"),
        ({"frame": _FRAME.permute(2, 0, 1).contiguous()}, r"\[H, W, 3\]"),
        ({"frame": _FRAME[..., :1]}, r"\[H, W, 3\]"),
        ({"frame": torch.zeros(12, 10, 3, dtype=torch.uint8, device=DEVICE).transpose(0, 1)}, "contiguous"),
        ({"frame": _FRAME.cpu().numpy()}, "uint8 tensor"),
        ({"boxes": torch.tensor([[0, 0, 10, 12, 0], [2, 3, 4, 5, 1]], dtype=torch.int32)}, "int64"),
        ({"boxes": torch.tensor([[0, 0, 10, 12], [2, 3, 4, 5]])}, r"\[N, 5\]"),
        ({"boxes": torch.zeros(0, 5, dtype=torch.int64), "filters": torch.zeros(0, dtype=torch.int64)}, "N = 0"),
        ({"filters": torch.tensor([0, 1, 0])}, "filters"),
        ({"filters": torch.tensor([0.0, 1.0])}, "filters"),
        ({"filters": torch.tensor([0, 2])}, "filters"),
        ({"boxes": torch.tensor([[0, 0, 11, 12, 0], [2, 3, 4, 5, 1]])}, "leaves the 10×12 frame"),
        ({"boxes": torch.tensor([[0, 0, 10, 12, 0], [-1, 3, 4, 5, 1]])}, "box 1"),
        ({"boxes": torch.tensor([[0, 0, 10, 12, 0], [2, 8, 4, 5, 1]])}, "box 1"),
        ({"boxes": torch.tensor([[0, 0, 0, 12, 0], [2, 3, 4, 5, 1]])}, "box 0"),
        ({"boxes": torch.tensor([[0, 0, 10, 12, 2], [2, 3, 4, 5, 1]])}, "flip"),
        ({"size": 0}, "size"),
        ({"size": 8.0}, "size"),
        ({"dtype": torch.float64}, "dtype"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.5, 0.0, 0.5)}, "std"),
        ({"std": (0.5, float("nan"), 0.5)}, "std"),
    ],
)
def test_bad_inputs_raise(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        _call(**overrides)


def test_cpu_frame_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kernel(), "_INTERPRETED", False)
    with pytest.raises(InputError, match="CUDA"):
        _call(frame=torch.zeros(10, 12, 3, dtype=torch.uint8))


# --- the compiled kernel on a real GPU, at full size -------------------------------------------------------


def _cuda_case(height: int, width: int, n_views: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frame = _noisy_frame(height, width, seed)
    g = torch.Generator().manual_seed(seed)
    boxes = sample_boxes(height, width, n_views, generator=g)
    filters = torch.randint(0, 2, (n_views,), generator=g, dtype=torch.int64)
    filters[0] = FILTERS["bicubic"]
    return frame, boxes, filters


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_1080p_64_views(dtype: torch.dtype) -> None:
    frame, boxes, filters = _cuda_case(1080, 1920, 64, 21)
    out = _kernel().augment_views_triton(frame.cuda(), boxes, filters, 224, MEAN, STD, dtype)
    assert out.shape == (64, 3, 224, 224) and out.dtype == dtype and out.is_cuda
    _assert_close(out, _oracle(frame, boxes, filters, 224), dtype)


@pytest.mark.gpu
def test_cuda_4k_full_frame_bicubic() -> None:
    """A 4K frame: full-frame boxes need ~40 bicubic taps per dimension."""
    frame, boxes, _ = _cuda_case(2160, 3840, 8, 22)
    boxes[1] = torch.tensor([0, 0, 2160, 3840, 1])
    filters = torch.full((8,), FILTERS["bicubic"], dtype=torch.int64)
    out = _kernel().augment_views_triton(frame.cuda(), boxes, filters, 224, MEAN, STD, torch.float16)
    _assert_close(out, _oracle(frame, boxes, filters, 224), torch.float16)


@pytest.mark.gpu
def test_cuda_boxes_on_device_and_no_recompile() -> None:
    mod = _kernel()
    frame, boxes, filters = _cuda_case(1080, 1920, 16, 23)
    _, boxes2, filters2 = _cuda_case(1080, 1920, 16, 24)
    a = mod.augment_views_triton(frame.cuda(), boxes, filters, 224, MEAN, STD, torch.float32)
    b = mod.augment_views_triton(frame.cuda(), boxes.cuda(), filters.cuda(), 224, MEAN, STD, torch.float32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    def n_compiled() -> int:
        caches = getattr(mod._augment_views_kernel, "device_caches", None)
        if caches is None:
            pytest.skip("this Triton has no device_caches to count compiled kernels")
        return sum(len(entry[0]) for entry in caches.values())

    before = n_compiled()
    c = mod.augment_views_triton(frame.cuda(), boxes2, filters2, 224, MEAN, STD, torch.float32)
    assert n_compiled() == before  # other boxes, same kernel
    _assert_close(c, _oracle(frame, boxes2, filters2, 224), torch.float32)
