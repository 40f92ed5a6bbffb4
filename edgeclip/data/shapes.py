"""A procedural image–caption dataset: coloured shapes on patterned backgrounds, with domain shifts.

Every class is a colour × shape pair ("red circle", ..., 16 in all). A scene also has a size, a position,
a rotation and a background (plain, striped or dotted, in one of several light colours); the captions
mention some of these attributes, so a contrastive model trained on them has to pick the class words out
of varied sentences. One caption template is exactly ``"a photo of a {class name}."``, the prompt used
for zero-shot classification.

Rendering is vectorised numpy: the shapes come from signed-distance tables (computed once, looked up per
pixel), which also give anti-aliased edges and outlines. 256 images of 64 × 64 take about 30 ms on a
2-core CPU.

A domain shift (:class:`Shift`) is a pair: render options (drawn while the scene is rendered: outline-only
shapes, a textured background) and a post-process on the uint8 images (noise, blur, low contrast,
inversion). ``make_batch(..., shift=name)`` applies both; the same seed gives the same scenes under every
shift, so clean and shifted batches are paired image by image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclip.errors import InputError

__all__ = [
    "BACKGROUND_COLOURS",
    "BACKGROUND_STYLES",
    "CLASS_SETS",
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "SHIFTS",
    "SIZES",
    "RenderOptions",
    "ShapesBatch",
    "ShapesDataset",
    "Shift",
    "caption_templates",
    "class_names",
    "make_batch",
    "save_image_folder",
]

# --------------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------------

#: Shape colours (class words). No colour here is the inverse of another, so ``invert`` confuses classes
#: without swapping any two of them.
COLOURS: tuple[str, ...] = ("red", "green", "blue", "black")
#: Shapes (class words).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Size words with the shape's radius range as a fraction of the image side.
SIZES: tuple[str, ...] = ("small", "large")
#: Position phrases on a 3 × 3 grid, row-major from the top left.
POSITIONS: tuple[str, ...] = (
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the centre",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
)
BACKGROUND_STYLES: tuple[str, ...] = ("plain", "striped", "dotted")
#: Light background colours; their names share no word with :data:`COLOURS`.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 242),
    "grey": (200, 200, 204),
    "beige": (236, 222, 192),
    "pink": (246, 208, 214),
    "mint": (204, 236, 214),
    "lavender": (222, 212, 242),
}

_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38),
    "green": (36, 164, 60),
    "blue": (40, 72, 220),
    "black": (28, 28, 28),
}
_COLOUR_JITTER = 24.0  # ± per channel, uniform
_BACKGROUND_JITTER = 8.0
_RADIUS = {"small": (0.14, 0.17), "large": (0.23, 0.27)}  # fraction of the image side
_GRID = (0.27, 0.5, 0.73)  # centre of each grid row / column, fraction of the side
_POSITION_JITTER = 0.035
_MAX_ROTATION_DEG = 15.0
_PATTERN_STRENGTH = (0.10, 0.20)  # how much darker the stripes / dots are than the background

#: Caption templates. Every one contains ``{cls}``; the first is the zero-shot prompt.
caption_templates: tuple[str, ...] = (
    "a photo of a {cls}.",
    "a {size} {cls}.",
    "a {size} {cls} {pos}.",
    "a {cls} {pos}.",
    "a {cls} on a {bg} background.",
    "a {size} {cls} {pos} on a {bg} background.",
    "a picture of a {size} {cls} on a {bg} background.",
    "there is a {cls} {pos}.",
    "a {cls}.",
    "an image of a {cls}, {size}, {pos}.",
)
ZERO_SHOT_TEMPLATE = caption_templates[0]


#: The class sets: colour × shape (the default, 16 classes), and size × colour × shape (32 classes, "small red
#: circle", ...: the same scenes with the size made part of the class, for a longer class-incremental stream).
CLASS_SETS: tuple[str, ...] = ("colour-shape", "size-colour-shape")


def _check_class_set(classes: str) -> str:
    if classes not in CLASS_SETS:
        raise InputError(f"classes must be one of {CLASS_SETS}, got {classes!r}")
    return classes


def class_names(classes: str = "colour-shape") -> list[str]:
    """The class names in label order: ``"{colour} {shape}"``, colour-major (label = colour * 4 + shape); for
    ``classes="size-colour-shape"`` ``"{size} {colour} {shape}"``, size-major (label = size * 16 + colour * 4 +
    shape)."""
    base = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    if _check_class_set(classes) == "colour-shape":
        return base
    return [f"{size} {name}" for size in SIZES for name in base]


# --------------------------------------------------------------------------------------------------------
# Shape signed-distance tables
# --------------------------------------------------------------------------------------------------------

_SDF_EXTENT = 1.5  # tables cover [-1.5, 1.5]² in units of the shape radius
_SDF_GRID = 512


def _sd_box(x: np.ndarray, y: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_polygon(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (negative inside); loops over vertices, not pixels."""
    d = np.full(x.shape, np.inf)
    sign = np.ones(x.shape)
    for i in range(len(verts)):
        (ax, ay), (bx, by) = verts[i - 1], verts[i]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        c1, c2, c3 = y >= ay, y < by, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign[flip] *= -1.0
    return sign * np.sqrt(d)


@functools.cache
def _sdf_table(shape: str) -> np.ndarray:
    """Signed distance (in shape radii, negative inside) on a grid; row = y (down), column = x."""
    axis = (np.arange(_SDF_GRID) + 0.5) / _SDF_GRID * 2 * _SDF_EXTENT - _SDF_EXTENT
    x, y = np.meshgrid(axis, axis)  # (G, G)
    if shape == "circle":
        sd = np.hypot(x, y) - 0.9
    elif shape == "square":
        sd = _sd_box(x, y, 0.78, 0.78)
    elif shape == "triangle":  # equilateral, apex up, centred on its bounding box
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        verts = np.stack([np.cos(angles), np.sin(angles) + 0.25], axis=1)
        sd = _sd_polygon(x, y, verts)
    elif shape == "cross":
        sd = np.minimum(_sd_box(x, y, 0.9, 0.3), _sd_box(x, y, 0.3, 0.9))
    else:  # pragma: no cover - SHAPES and this function are kept in step
        raise ValueError(shape)
    table = sd.astype(np.float32)
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scenes:
    """Per-image scene parameters (all arrays of length N; geometry in fractions of the image side)."""

    labels: np.ndarray  # (N,) int64
    colour_rgb: np.ndarray  # (N, 3) float32
    size: np.ndarray  # (N,) index into SIZES
    radius: np.ndarray  # (N,)
    position: np.ndarray  # (N,) index into POSITIONS
    cx: np.ndarray
    cy: np.ndarray
    rotation: np.ndarray  # radians
    bg_style: np.ndarray  # (N,) index into BACKGROUND_STYLES
    bg_colour: np.ndarray  # (N,) index into BACKGROUND_COLOURS
    bg_rgb: np.ndarray  # (N, 3) float32
    pattern_angle: np.ndarray
    pattern_period: np.ndarray  # fraction of the side
    pattern_phase: np.ndarray  # (N, 2)
    pattern_strength: np.ndarray
    template: np.ndarray  # (N,) index into caption_templates


def _sample_scenes(n: int, rng: np.random.Generator, labels: np.ndarray | None,
                   sizes: np.ndarray | None = None) -> _Scenes:
    n_cls = len(COLOURS) * len(SHAPES)
    if labels is None:
        labels = rng.integers(0, n_cls, n)
    base = np.array([_COLOUR_RGB[c] for c in COLOURS], np.float32)[labels // len(SHAPES)]
    colour = np.clip(base + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, (n, 3)), 0, 255)
    size = rng.integers(0, len(SIZES), n)  # drawn even when given, so every other attribute stays the same
    if sizes is not None:
        size = np.asarray(sizes, np.int64)
    lo = np.array([_RADIUS[s][0] for s in SIZES])[size]
    hi = np.array([_RADIUS[s][1] for s in SIZES])[size]
    radius = rng.uniform(lo, hi)
    position = rng.integers(0, len(POSITIONS), n)
    grid = np.array(_GRID)
    cx = grid[position % 3] + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, n)
    cy = grid[position // 3] + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, n)
    cx, cy = np.clip(cx, radius, 1 - radius), np.clip(cy, radius, 1 - radius)
    rotation = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, n))
    bg_style = rng.integers(0, len(BACKGROUND_STYLES), n)
    bg_colour = rng.integers(0, len(BACKGROUND_COLOURS), n)
    bg_base = np.array(list(BACKGROUND_COLOURS.values()), np.float32)[bg_colour]
    bg_rgb = np.clip(bg_base + rng.uniform(-_BACKGROUND_JITTER, _BACKGROUND_JITTER, (n, 3)), 0, 255)
    return _Scenes(
        labels=np.asarray(labels, np.int64),
        colour_rgb=colour.astype(np.float32),
        size=size,
        radius=radius,
        position=position,
        cx=cx,
        cy=cy,
        rotation=rotation,
        bg_style=bg_style,
        bg_colour=bg_colour,
        bg_rgb=bg_rgb.astype(np.float32),
        pattern_angle=rng.integers(0, 4, n) * (np.pi / 4) + rng.uniform(-0.15, 0.15, n),
        pattern_period=rng.uniform(0.10, 0.16, n),
        pattern_phase=rng.uniform(0, 1, (n, 2)),
        pattern_strength=rng.uniform(*_PATTERN_STRENGTH, n),
        template=rng.integers(0, len(caption_templates), n),
    )


def _captions(scenes: _Scenes) -> list[str]:
    names = class_names()
    bg_names = list(BACKGROUND_COLOURS)
    out = []
    for i in range(len(scenes.labels)):
        bg = f"{BACKGROUND_STYLES[scenes.bg_style[i]]} {bg_names[scenes.bg_colour[i]]}"
        out.append(
            caption_templates[scenes.template[i]].format(
                cls=names[scenes.labels[i]],
                size=SIZES[scenes.size[i]],
                pos=POSITIONS[scenes.position[i]],
                bg=bg,
            )
        )
    return out


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """What a shift changes while the scene is drawn (as opposed to after, on the pixels).

    Attributes:
        outline: draw shapes as outlines only (the ``sketch`` shift).
        outline_width: outline width as a fraction of the image side (0.06 → 3.8 px at 64 px).
        texture_strength: 0 for the normal background; in (0, 1] blends a high-contrast random colour
            texture over it (the ``textured_background`` shift).
    """

    outline: bool = False
    outline_width: float = 0.06
    texture_strength: float = 0.0


def _pixel_axis(size: int) -> np.ndarray:
    """Pixel centres as fractions of the image side, (S,) float32."""
    return ((np.arange(size) + 0.5) / size).astype(np.float32)


def _pattern_factor(scenes: _Scenes, size: int) -> np.ndarray:
    """Background brightness factor (1 on plain parts, < 1 on stripes and dots), (N, S, S) float32."""
    n = len(scenes.labels)
    out = np.ones((n, size, size), np.float32)
    axis = _pixel_axis(size)
    x, y = axis[None, None, :], axis[None, :, None]
    for style in (1, 2):  # striped, dotted
        idx = np.flatnonzero(scenes.bg_style == style)
        if idx.size == 0:
            continue
        period = scenes.pattern_period[idx].astype(np.float32)[:, None, None]  # (k, 1, 1)
        ph = scenes.pattern_phase[idx].astype(np.float32)[:, :, None, None]  # (k, 2, 1, 1)
        if style == 1:
            ang = scenes.pattern_angle[idx]
            ca = np.cos(ang).astype(np.float32)[:, None, None]
            sa = np.sin(ang).astype(np.float32)[:, None, None]
            t = (x * ca / period + ph[:, 0]) + y * sa / period  # (k, S, S), stripe coordinate
            dist = (np.abs(t - np.floor(t) - 0.5) - 0.25) * (period * size)  # px from the stripe edge
        else:
            fx, fy = x / period + ph[:, 0], y / period + ph[:, 1]  # (k, 1, S), (k, S, 1)
            fx, fy = fx - np.floor(fx) - 0.5, fy - np.floor(fy) - 0.5
            dist = (np.sqrt(fx * fx + fy * fy) - 0.22) * (period * size)  # (k, S, S) px from the dot edge
        mask = np.clip(0.5 - dist, 0.0, 1.0)  # (k, S, S), 1 on a stripe / dot
        out[idx] = 1.0 - scenes.pattern_strength[idx].astype(np.float32)[:, None, None] * mask
    return out


def _texture(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """High-contrast random colour blotches under random stripes, (N, 3, S, S) float32 in 0..255."""
    cells = 6
    grid = rng.uniform(0, 255, (n, 3, cells, cells)).astype(np.float32)
    # Bilinear upsampling as two small matrix products with (S, cells) weights.
    pos = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = (pos - lo).astype(np.float32)
    w = np.zeros((size, cells), np.float32)
    w[np.arange(size), lo] = 1 - frac
    w[np.arange(size), lo + 1] = frac
    tex = w @ grid @ w.T  # (N, 3, S, S)
    # Thin stripes of one random colour on top, so the texture has edges as the shapes do.
    axis = _pixel_axis(size)
    ang = rng.uniform(0, np.pi, n).astype(np.float32)[:, None, None]
    period = rng.uniform(0.08, 0.14, n).astype(np.float32)[:, None, None]
    t = axis[None, None, :] * np.cos(ang) / period + axis[None, :, None] * np.sin(ang) / period  # (N, S, S)
    stripe = np.clip(0.5 - (np.abs(t - np.floor(t) - 0.5) - 0.32) * (period * size), 0, 1)[:, None]
    stripe_rgb = rng.uniform(0, 255, (n, 3, 1, 1)).astype(np.float32)
    tex += stripe * (stripe_rgb - tex)
    return tex


def _coverage(scenes: _Scenes, size: int, opts: RenderOptions) -> np.ndarray:
    """Anti-aliased shape coverage in [0, 1], (N, S, S) float32."""
    n = len(scenes.labels)
    cov = np.empty((n, size, size), np.float32)
    px = np.arange(size, dtype=np.float32) + np.float32(0.5)  # pixel centres in px
    scale = _SDF_GRID / (2 * _SDF_EXTENT)  # table cells per shape radius
    shape_idx = scenes.labels % len(SHAPES)
    half_width = np.float32(opts.outline_width * size / 2 + 0.5)
    for k, shape in enumerate(SHAPES):
        idx = np.flatnonzero(shape_idx == k)
        if idx.size == 0:
            continue
        r = scenes.radius[idx] * size  # (k,) px
        # Table cell of every pixel: rotate the pixel grid into the shape's frame, scale by cells per px.
        a = (np.cos(scenes.rotation[idx]) * scale / r).astype(np.float32)[:, None, None]
        b = (np.sin(scenes.rotation[idx]) * scale / r).astype(np.float32)[:, None, None]
        dx = px[None, None, :] - (scenes.cx[idx] * size).astype(np.float32)[:, None, None]  # (k, 1, S)
        dy = px[None, :, None] - (scenes.cy[idx] * size).astype(np.float32)[:, None, None]  # (k, S, 1)
        off = np.float32(_SDF_EXTENT * scale)
        fu = (dx * a + off) + dy * b  # (k, S, S)
        fv = (dy * a + off) - dx * b
        iu = np.clip(fu, 0, _SDF_GRID - 1, out=fu).astype(np.int32)
        iv = np.clip(fv, 0, _SDF_GRID - 1, out=fv).astype(np.int32)
        iv *= _SDF_GRID
        iv += iu
        dist = _sdf_table(shape).ravel()[iv]  # (k, S, S) signed distance in shape radii
        dist *= r.astype(np.float32)[:, None, None]  # -> px
        if opts.outline:
            cov[idx] = np.clip(half_width - np.abs(dist), 0.0, 1.0)
        else:
            cov[idx] = np.clip(0.5 - dist, 0.0, 1.0)
    return cov


def _render(scenes: _Scenes, size: int, opts: RenderOptions, rng: np.random.Generator) -> np.ndarray:
    """Draw scenes into (N, S, S, 3) uint8; works planar (N, 3, S, S) so broadcasts stay contiguous."""
    factor = _pattern_factor(scenes, size)  # (N, S, S)
    cov = _coverage(scenes, size, opts)  # (N, S, S)
    colour = scenes.colour_rgb[:, :, None, None]  # (N, 3, 1, 1)
    bg_rgb = scenes.bg_rgb[:, :, None, None]
    if opts.texture_strength > 0:
        bg = bg_rgb * factor[:, None]  # (N, 3, S, S)
        tex = _texture(len(scenes.labels), size, rng)
        tex -= bg
        tex *= np.float32(opts.texture_strength)
        bg += tex
        img = colour - bg
        img *= cov[:, None]
        img += bg
    else:  # bg * (1 - cov) + colour * cov with bg = bg_rgb * factor
        img = bg_rgb * (factor * (1 - cov))[:, None]
        img += colour * cov[:, None]
    # Every step is a convex blend of values in 0..255: rounding by +0.5 then truncating needs no clip.
    img += np.float32(0.5)
    return img.transpose(0, 2, 3, 1).astype(np.uint8, order="C")


# --------------------------------------------------------------------------------------------------------
# Shifts
# --------------------------------------------------------------------------------------------------------

#: Severities (tuned so that a micro CLIP trained on the clean domain drops clearly, but stays well above
#: chance; see edgeclip/micro/train.py). Units are uint8 intensity and render pixels at 64 px.
NOISE_STD = 110.0
BLUR_SIGMA = 3.4
CONTRAST = 0.6
TEXTURE_STRENGTH = 0.75


def _identity(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return images


def _gaussian_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(images.shape, dtype=np.float32)
    x *= np.float32(NOISE_STD)
    x += images
    x += np.float32(0.5)
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


def _blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(S, S) Gaussian blur along one axis with reflected borders."""
    radius = int(np.ceil(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    src = np.arange(size)[:, None] + taps[None, :]  # (S, taps)
    src = np.abs(src)
    src = np.where(src >= size, 2 * size - 2 - src, src)
    m = np.zeros((size, size), np.float32)
    np.add.at(m, (np.repeat(np.arange(size), len(taps)), src.ravel()), np.tile(kernel, size))
    return m


def _blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = images.shape[1:3]
    sigma = BLUR_SIGMA * max(h, w) / 64  # the severity is defined at 64 px
    x = images.astype(np.float32).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    x = _blur_matrix(h, sigma) @ x @ _blur_matrix(w, sigma).T  # blur along H, then along W
    x += np.float32(0.5)
    return np.clip(x, 0, 255, out=x).transpose(0, 2, 3, 1).astype(np.uint8)


def _low_contrast(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip(mean + CONTRAST * (x - mean) + 0.5, 0, 255).astype(np.uint8)


def _invert(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 255 - images


@dataclass(frozen=True)
class Shift:
    """A domain shift: render options plus a post-process on uint8 images ``(N, H, W, 3)``.

    Calling a shift applies its post-process. A shift that works at render time (``sketch``,
    ``textured_background``) cannot be applied to finished images: calling it raises
    :class:`~edgeclip.errors.InputError`; use ``make_batch(..., shift=name)``.
    """

    name: str
    post: Callable[[np.ndarray, np.random.Generator], np.ndarray] = _identity
    render: RenderOptions = field(default_factory=RenderOptions)
    description: str = ""

    @property
    def render_time(self) -> bool:
        """True when the shift changes how scenes are drawn (so it needs :func:`make_batch`)."""
        return self.render.outline or self.render.texture_strength > 0

    def __call__(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Apply the post-process to uint8 images ``(N, H, W, 3)`` (``clean`` returns its input)."""
        if self.render_time:
            raise InputError(
                f"shift {self.name!r} is applied while rendering and cannot be applied to finished "
                f"images; use make_batch(n, shift={self.name!r})"
            )
        _check_images(images)
        return self.post(images, rng if rng is not None else np.random.default_rng())


def _check_images(images: np.ndarray) -> None:
    ok = isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
    if not ok or images.shape[-1] != 3:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise InputError(f"expected uint8 images of shape (N, H, W, 3), got {got}")


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("clean", description="no shift"),
        Shift("gaussian_noise", _gaussian_noise, description=f"additive N(0, {NOISE_STD:g}²) per channel"),
        Shift("blur", _blur, description=f"Gaussian blur, sigma {BLUR_SIGMA:g} px at 64 px"),
        Shift("low_contrast", _low_contrast, description=f"contrast × {CONTRAST:g} around the image mean"),
        Shift("invert", _invert, description="colour inversion, 255 - x"),
        Shift("sketch", render=RenderOptions(outline=True), description="shapes drawn as outlines only"),
        Shift(
            "textured_background",
            render=RenderOptions(texture_strength=TEXTURE_STRENGTH),
            description=f"random colour texture blended over the background ({TEXTURE_STRENGTH:g})",
        ),
    )
}


def _get_shift(shift: str | Shift) -> Shift:
    if isinstance(shift, Shift):
        return shift
    if shift not in SHIFTS:
        raise InputError(f"unknown shift {shift!r}; valid shifts: {', '.join(SHIFTS)}")
    return SHIFTS[shift]


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


@dataclass
class ShapesBatch:
    """A rendered batch.

    Attributes:
        images: ``(N, H, W, 3)`` uint8.
        labels: ``(N,)`` int64 indices into ``class_names``.
        captions: N captions, each containing its class name.
        class_names: the class names, in label order.
        shift: the name of the shift applied.
        attributes: per-image scene attributes as index arrays (``size`` into :data:`SIZES`, ``position``
            into :data:`POSITIONS`, ``background_style``, ``background_colour``, ``template``).
    """

    images: np.ndarray
    labels: np.ndarray
    captions: list[str]
    class_names: list[str]
    shift: str = "clean"
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _as_rng(seed: int | np.random.Generator | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, a numpy Generator or None, got {seed!r}")
    return np.random.default_rng(seed)


def make_batch(
    n: int,
    *,
    seed: int | np.random.Generator | np.random.SeedSequence | None = None,
    shift: str | Shift = "clean",
    render_size: int = 64,
    labels: Sequence[int] | np.ndarray | None = None,
    classes: str = "colour-shape",
) -> ShapesBatch:
    """Render ``n`` random scenes with their captions.

    Args:
        n: number of images.
        seed: an int (deterministic), a numpy ``Generator`` (consumed), or None (fresh entropy).
        shift: a name from :data:`SHIFTS` or a :class:`Shift`.
        render_size: image side in pixels (models take 32 px; preprocessing downsamples).
        labels: optional class of every image (length ``n``); random when omitted.
        classes: the class set (`CLASS_SETS`): ``"size-colour-shape"`` labels the same scenes by size too (a
            given label fixes the size), and the class names are `class_names` of that set.

    The same seed gives the same scenes (labels, captions, geometry) under every shift, and the same images
    under both class sets when the labels are random.

    Raises:
        InputError: unknown shift, bad ``n``, ``render_size``, ``seed`` or ``labels``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative int, got {n!r}")
    if isinstance(render_size, bool) or not isinstance(render_size, (int, np.integer)) or render_size < 16:
        raise InputError(f"render_size must be an int >= 16, got {render_size!r}")
    spec = _get_shift(shift)
    names = class_names(classes)
    sized = classes == "size-colour-shape"
    sizes = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be {n} integers, got shape {labels.shape} dtype {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= len(names)):
            raise InputError(f"labels must lie in [0, {len(names)}), got {labels.min()}..{labels.max()}")
        if sized:
            n_base = len(COLOURS) * len(SHAPES)
            labels, sizes = labels % n_base, labels // n_base
    rng = _as_rng(seed)
    scenes = _sample_scenes(int(n), rng, labels, sizes)
    # The shift's own randomness comes from a child stream, so scenes do not depend on the shift.
    shift_rng = np.random.default_rng(rng.integers(0, 2**63))
    images = _render(scenes, int(render_size), spec.render, shift_rng)
    images = spec.post(images, shift_rng)
    return ShapesBatch(
        images=images,
        labels=scenes.labels + len(COLOURS) * len(SHAPES) * scenes.size if sized else scenes.labels,
        captions=_captions(scenes),
        class_names=names,
        shift=spec.name,
        attributes={
            "size": scenes.size,
            "position": scenes.position,
            "background_style": scenes.bg_style,
            "background_colour": scenes.bg_colour,
            "template": scenes.template,
        },
    )


class ShapesDataset:
    """A fixed-size, indexable view of the procedural dataset.

    Item ``i`` is ``(image (H, W, 3) uint8, label int, caption str)`` and depends only on ``seed``,
    ``shift``, ``render_size`` and ``i`` (not on ``n``): items are rendered in blocks of
    :attr:`block_size` from the seed sequence ``[seed, block]``, and the last block is cached.
    """

    block_size = 256

    def __init__(self, n: int, seed: int = 0, shift: str = "clean", render_size: int = 64) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InputError(f"n must be a non-negative int, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative int, got {seed!r}")
        self.n, self.seed, self.render_size = int(n), int(seed), int(render_size)
        self.shift = _get_shift(shift).name
        self.class_names = class_names()
        self._cache: tuple[int, ShapesBatch] | None = None

    def __len__(self) -> int:
        return self.n

    def block(self, b: int) -> ShapesBatch:
        """Block ``b``: the :attr:`block_size` items starting at ``b * block_size`` (may run past ``n``)."""
        if self._cache is None or self._cache[0] != b:
            ss = np.random.SeedSequence([self.seed, b])
            batch = make_batch(self.block_size, seed=ss, shift=self.shift, render_size=self.render_size)
            self._cache = (b, batch)
        return self._cache[1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise InputError(f"index must be an int, got {index!r}")
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for a dataset of {self.n}")
        index = int(index) % self.n
        batch = self.block(index // self.block_size)
        j = index % self.block_size
        return batch.images[j], int(batch.labels[j]), batch.captions[j]

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, str]]:
        for i in range(self.n):
            yield self[i]


def save_image_folder(
    root: str | Path,
    n_per_class: int,
    seed: int = 0,
    shift: str = "clean",
    render_size: int = 64,
) -> Path:
    """Write ``n_per_class`` PNGs per class into ``root/<class_name_with_underscores>/NNNNN.png``.

    Also writes ``root/classnames.txt``: the class names (with spaces), one per line, in label order (the
    sorted folder names are in a different order), and ``root/captions.jsonl``: one ``{"image", "caption"}``
    line per image (the path relative to ``root``; the rich caption: colour, shape, size, position, background).
    Returns ``root``.
    """
    import json

    from PIL import Image

    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise InputError(f"n_per_class must be a positive int, got {n_per_class!r}")
    root = Path(root)
    names = class_names()
    labels = np.repeat(np.arange(len(names)), n_per_class)
    batch = make_batch(len(labels), seed=seed, shift=shift, render_size=render_size, labels=labels)
    for name in names:
        (root / name.replace(" ", "_")).mkdir(parents=True, exist_ok=True)
    counts = [0] * len(names)
    lines = []
    for img, lab, caption in zip(batch.images, batch.labels, batch.captions, strict=True):
        rel = Path(names[lab].replace(" ", "_")) / f"{counts[lab]:05d}.png"
        Image.fromarray(img).save(root / rel)
        lines.append(json.dumps({"image": rel.as_posix(), "caption": caption}))
        counts[lab] += 1
    (root / "classnames.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
