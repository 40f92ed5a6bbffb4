"""Per-frame kernels side by side with the way TPT's code does the same work (`edgeclip bench kernels`).

Two kinds of case, each timed round-robin with its peers (`measure_interleaved`), so every implementation
shares whatever else the machine is doing and the speedups come from paired calls:

- ``augment_views``: one uint8 frame (smooth random texture plus noise) of each size -> ``n_views`` views
  ``size × size``. edgeclip's `augment_views` (drawing its boxes in the call) against TPT's PIL loop
  (`edgeclip.bench.peers.pil_views`, always on the CPU) and torchvision's v2 functional API one view at a
  time (`edgeclip.bench.peers.tv2_views`, on the benchmark's device). In the same run, the views of both
  implementations on the same boxes are compared, so the report shows the speed is for the same output.
- ``cosine+select``: ``n_views`` image embeddings and ``C`` class embeddings of width ``D`` -> logits, the
  most confident views and the log mean probability over them: `cosine_logits` + `select_confident`
  against the plain PyTorch sequence (`edgeclip.bench.peers.torch_similarity_selection`).

Each case stops after `repeats` rounds or once the slowest implementation has `time_budget_s` seconds of
timed calls (at least `MIN_REPEATS` rounds), as in `edgeclip.bench.encoders`; every timed call is preceded
by a 0.1 s settle period (`timing.SETTLE_S`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from edgeclip.bench.encoders import _torch_threads
from edgeclip.bench.peers import pil_views, torch_similarity_selection, tv2_views
from edgeclip.bench.report import add_busy_note, cpu_snapshot, machine_info, other_cpu_load, positive_ints
from edgeclip.bench.timing import TimingStats, check_device_threads, is_cuda, measure_interleaved, ratio_with_spread
from edgeclip.kernels.augment_views import CLIP_STD, augment_views
from edgeclip.kernels.cosine_logits import cosine_logits
from edgeclip.kernels.cpu_views import native_kernel, native_kernel_info
from edgeclip.kernels.dispatch import triton_available, use_triton
from edgeclip.kernels.select_confident import select_confident
from edgeclip.kernels.view_boxes import sample_boxes

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "LOGIT_SCALE", "RHO", "bench_kernels", "noisy_frame"]

DEFAULT_TIME_BUDGET_S = 10.0
MIN_REPEATS = 5
LOGIT_SCALE = 100.0  # CLIP's learned logit scale
RHO = 0.1  # TPT's confidence-selection fraction
BOX_POOL = 8  # box sets the tv2 peer cycles through (drawn before timing)
EDGECLIP = "edgeclip"
# the Markdown table's columns; the JSON rows carry more (frame, classes, dim, mean, min, samples, ...)
COLUMNS = ["case", "shape", "impl", "device", "n", "median_ms", "p90_ms", "speedup", "speedup_lo", "speedup_hi",
           "parity_mean", "parity_max", "other_load"]

ProgressFn = Callable[[int, int, str], Any]


def noisy_frame(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A uint8 frame ``[height, width, 3]``: a smooth random texture (blobs of ~1/8 of the frame) plus
    Gaussian noise (σ = 16 levels), the same for the same seed. Stands in for a camera frame."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 9, 9, generator=g) * 255.0
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
    noise = torch.randn(1, 3, height, width, generator=g) * 16.0
    frame = (smooth + noise).round().clamp(0, 255).to(torch.uint8)
    return frame[0].permute(1, 2, 0).contiguous()  # (H, W, 3)


@dataclass
class _Case:
    """One case: the same work done by edgeclip (label `EDGECLIP`, first) and each peer."""

    case: str  # "augment_views" | "cosine+select"
    shape: str  # human-readable sizes for the table
    fns: dict[str, Callable[[], Any]]  # impl label -> call
    devices: dict[str, str]  # impl label -> where it runs
    params: dict[str, Any]  # frame / n_views / size / classes / dim
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)  # peer label -> parity figures



def _cpu_views_impl() -> str:
    """Which CPU path `augment_views` takes here: ``native[<isa>]`` (the compiled kernel, built now if need be,
    and the instruction set it was built for, e.g. ``native[avx2]``) or ``torch``."""
    kernel = native_kernel()
    return f"native[{kernel.isa}]" if kernel is not None else "torch"


def _views_impl(device: str) -> str:
    """The label of the path `augment_views` takes for a frame on `device`: ``triton`` on CUDA, the CPU path's
    (`_cpu_views_impl`) elsewhere, and ``<cpu path>+copy`` on CUDA without Triton (views made on the host)."""
    if not is_cuda(device):
        return _cpu_views_impl()
    return "triton" if triton_available() else f"{_cpu_views_impl()}+copy"


def _torch_cpu_capability() -> str:
    """The instruction-set level of PyTorch's own CPU kernels (``ATEN_CPU_CAPABILITY`` lowers it)."""
    return torch.backends.cpu.get_cpu_capability()


def _denormalised_diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean and max |a - b| of two normalised view stacks ``[N, 3, S, S]``, in [0, 1] pixel units."""
    std = torch.tensor(CLIP_STD, dtype=torch.float64, device=a.device).view(1, 3, 1, 1)
    diff = ((a.double() - b.to(a.device).double()) * std).abs()
    return {"parity_mean": float(diff.mean()), "parity_max": float(diff.max())}


def _augment_case(height: int, width: int, n_views: int, size: int, device: str, seed: int) -> _Case:
    frame = noisy_frame(height, width, seed)  # (H, W, 3) uint8, CPU
    image = Image.fromarray(frame.numpy())  # what TPT's loader hands its transforms
    frame_dev = frame.to(device)
    # (3, H, W) as a view of the H×W×3 frame (channels-last memory): torchvision's uint8 antialiased resize is
    # about 2.3x faster on it than on a contiguous CHW copy, so the peer gets its fastest layout
    frame_chw = frame_dev.permute(2, 0, 1)
    g_pool = torch.Generator().manual_seed(seed + 1)
    pool = [sample_boxes(height, width, n_views, generator=g_pool) for _ in range(BOX_POOL)]
    boxes_cycle = itertools.cycle(pool)
    g_edge = torch.Generator().manual_seed(seed + 2)
    g_pil = torch.Generator().manual_seed(seed + 3)
    edge_impl = _views_impl(device)

    def edge() -> torch.Tensor:
        return augment_views(frame_dev, n_views, size, generator=g_edge)[0]

    def pil() -> torch.Tensor:
        return pil_views(image, n_views, size, g_pil)

    def tv2() -> torch.Tensor:
        return tv2_views(frame_chw, next(boxes_cycle), size)

    ours_label, pil_label, tv2_label = f"{EDGECLIP}:{edge_impl}", "PIL loop (TPT)", "tv2 per view"
    case = _Case("augment_views", f"{height}×{width} → {n_views}×{size}²",
                 {ours_label: edge, pil_label: pil, tv2_label: tv2},
                 {ours_label: device, pil_label: "cpu", tv2_label: device},
                 {"frame": [height, width], "n_views": n_views, "size": size, "classes": None, "dim": None})
    # parity on the same boxes, in this run: edgeclip's views against each peer's
    ref_boxes = pool[0]
    with torch.no_grad():
        ours = augment_views(frame_dev, size=size, boxes=ref_boxes)[0]
        case.parity[pil_label] = _denormalised_diff(ours, pil_views(image, size=size, boxes=ref_boxes))
        case.parity[tv2_label] = _denormalised_diff(ours, tv2_views(frame_chw, ref_boxes, size))
    return case


def _similarity_case(n_views: int, classes: int, dim: int, device: str, seed: int) -> _Case:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n_views, dim, generator=g).to(device)
    text = torch.randn(classes, dim, generator=g).to(device)
    edge_impl = "triton" if use_triton("auto", image, "cosine_logits") else "torch"

    def edge() -> Any:
        return select_confident(cosine_logits(image, text, LOGIT_SCALE), RHO)

    def peer() -> Any:
        return torch_similarity_selection(image, text, LOGIT_SCALE, RHO)

    ours_label, peer_label = f"{EDGECLIP}:{edge_impl}", "torch ops (TPT)"
    case = _Case("cosine+select", f"N={n_views} C={classes} D={dim}", {ours_label: edge, peer_label: peer},
                 {ours_label: device, peer_label: device},
                 {"frame": None, "n_views": n_views, "size": None, "classes": classes, "dim": dim})
    with torch.no_grad():
        ours, ref = edge(), peer()
    d = (ours.log_mean_prob.double() - ref.log_mean_prob.double()).abs()
    same = sorted(ours.index.tolist()) == sorted(ref.index.tolist())
    case.parity[peer_label] = {"parity_mean": float(d.mean()), "parity_max": float(d.max()), "same_index": same}
    return case


def _row(case: _Case, label: str, stats: TimingStats) -> dict[str, Any]:
    return {
        "case": case.case, "shape": case.shape, "impl": label, "device": case.devices[label], **case.params,
        "n": stats.n, "median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "mean_ms": stats.mean_ms,
        "min_ms": stats.min_ms,
        "speedup": None, "speedup_p90": None, "speedup_lo": None, "speedup_hi": None,
        "parity_mean": None, "parity_max": None, "same_index": None, "other_load": None,
        "samples_ms": list(stats.samples_ms),
    }


def _time_case(case: _Case, *, warmup: int, repeats: int, min_time: float | None, time_budget_s: float,
               sync: Callable[[], Any] | None) -> list[dict[str, Any]]:
    """Time one case round-robin; returns one row per implementation, edgeclip first, peers with speedups."""
    snap = cpu_snapshot()
    with torch.no_grad():
        stats = measure_interleaved(case.fns, warmup=warmup, repeats=repeats, min_time=min_time,
                                    max_time=time_budget_s, min_repeats=MIN_REPEATS, sync=sync)
    other = other_cpu_load(snap, cpu_snapshot())
    ref_label = next(iter(case.fns))
    rows = []
    for label, st in stats.items():
        row = _row(case, label, st)
        row["other_load"] = other
        if label != ref_label:
            r = ratio_with_spread(stats[ref_label], st, paired=True)
            row.update(speedup=r["ratio"], speedup_p90=r["ratio_p90"], speedup_lo=r["ratio_lo"],
                       speedup_hi=r["ratio_hi"], **case.parity.get(label, {}))
        rows.append(row)
        log.info("%s %s %s: median %.3f ms, p90 %.3f ms (n=%d)", case.case, case.shape, label,
                 st.median_ms, st.p90_ms, st.n)
    return rows


def bench_kernels(
    *,
    device: str = "cpu",
    threads: int | None = None,
    frames: Sequence[tuple[int, int]] = ((1080, 1920), (480, 640)),
    n_views: int = 64,
    size: int = 224,
    classes: Sequence[int] = (10, 100, 1000),
    dims: Sequence[int] = (512, 768),
    warmup: int = 3,
    repeats: int = 20,
    min_time: float | None = None,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    progress: bool | ProgressFn = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Time edgeclip's per-frame kernels against TPT-style implementations of the same work.

    Args:
        device: "cpu" or "cuda[:i]": where edgeclip's kernels, the tv2 peer and the torch peer run (the PIL
            loop always runs on the CPU).
        threads: intra-op threads for PyTorch during the run; None: PyTorch's default. (PIL is single-threaded.)
        frames: (height, width) of each frame for the ``augment_views`` cases.
        n_views: views per frame, and the N of the ``cosine+select`` cases.
        size: side of each view.
        classes, dims: the C and D of the ``cosine+select`` cases (every pair).
        warmup: untimed calls per implementation before each case.
        repeats: the most timed rounds per case (fewer when `time_budget_s` runs out).
        min_time: if given, keep timing until the fastest implementation has this many seconds of timed calls.
        time_budget_s: seconds of timed calls of the slowest implementation after which a case stops
            (never before `MIN_REPEATS` rounds).
        progress: True: a tqdm bar over the cases (stderr); False: nothing; a callable: called after each
            case as ``progress(done, total, description)``.
        seed: seeds the inputs and every random draw.

    Returns:
        ``{"title", "bench", "config", "columns", "rows", "notes", "machine"}``. One row per case and
        implementation: case, shape, impl (``edgeclip:native[<isa>]`` (the compiled CPU kernel and the
        instruction set it was built for, see ``config["native_kernel"]``), ``edgeclip:torch``,
        ``edgeclip:triton``, ``edgeclip:native[<isa>]+copy`` (CUDA without Triton) or the peer), device,
        frame, n_views, size, classes, dim, n, median_ms, p90_ms, mean_ms, min_ms, speedup / speedup_p90 /
        speedup_lo / speedup_hi (peer rows: the peer's time over edgeclip's, i.e. how many times faster
        edgeclip is, with the 10th–90th percentile of the per-round ratios; None on edgeclip rows),
        parity_mean / parity_max (peer rows: how far edgeclip's output is from the peer's, see the notes),
        same_index (cosine+select: whether both selected the same views), other_load (CPU cores other
        processes kept busy during the case, see `other_cpu_load`) and samples_ms.
    """
    check_device_threads(device, threads)
    frame_list = [tuple(positive_ints("frame sizes", f)) for f in frames]
    if any(len(f) != 2 for f in frame_list):
        raise ValueError(f"frames must be (height, width) pairs, got {frame_list}")
    (n_views, size) = positive_ints("n_views and size", (n_views, size))
    class_list, dim_list = positive_ints("classes", classes), positive_ints("dims", dims)
    sim_cases = [(c, d) for d in dim_list for c in class_list]
    total = len(frame_list) + len(sim_cases)
    if total == 0:
        raise ValueError("nothing to time: frames and classes × dims are all empty")
    sync = torch.cuda.synchronize if is_cuda(device) else None
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="bench kernels", unit="case")
    snap_start = cpu_snapshot()
    rows: list[dict[str, Any]] = []
    kw = {"warmup": warmup, "repeats": repeats, "min_time": min_time, "time_budget_s": time_budget_s, "sync": sync}
    builders: list[tuple[str, Callable[[], _Case]]] = [
        (f"augment {h}×{w}", lambda h=h, w=w, i=i: _augment_case(h, w, n_views, size, device, seed + 10 * i))
        for i, (h, w) in enumerate(frame_list)]
    builders += [(f"select C={c} D={d}", lambda c=c, d=d: _similarity_case(n_views, c, d, device, seed))
                 for c, d in sim_cases]
    try:
        with _torch_threads(threads):
            for done, (desc, build) in enumerate(builders, start=1):
                if bar is not None:
                    bar.set_postfix_str(desc)
                rows += _time_case(build(), **kw)
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(done, total, desc)
    finally:
        if bar is not None:
            bar.close()

    config = {"device": device, "threads": threads, "frames": [list(f) for f in frame_list], "n_views": n_views,
              "size": size, "classes": class_list, "dims": dim_list, "warmup": warmup, "repeats": repeats,
              "min_repeats": MIN_REPEATS, "min_time": min_time, "time_budget_s": time_budget_s,
              "logit_scale": LOGIT_SCALE, "rho": RHO, "tv2_box_sets": BOX_POOL, "seed": seed,
              "native_kernel": native_kernel_info() if "native[" in _views_impl(device) else None,
              "other_load": other_cpu_load(snap_start, cpu_snapshot())}
    notes = [
        "implementations of a case timed round-robin (0.1 s settle before each timed call); on peer rows, "
        "speedup = the peer's median / edgeclip's median (how many times faster edgeclip is), speedup_lo–"
        "speedup_hi = 10th–90th percentile of the per-round ratios; times in ms per call.",
        f"each case: {warmup} warm-up calls per implementation, then up to {repeats} rounds, stopping once the "
        f"slowest has {time_budget_s:g} s of timed calls (at least {MIN_REPEATS} rounds).",
        "augment_views: one uint8 frame (smooth random texture + noise) → views, view 0 the bicubic CLIP view, "
        "the rest random resized crops (bilinear, antialiased) with random flips. edgeclip takes the H×W×3 "
        "tensor and draws its boxes inside the timed call; the PIL loop is TPT's (Resize + CenterCrop, then "
        "RandomResizedCrop + RandomHorizontalFlip, ToTensor + Normalize per view) on a PIL image of the frame, "
        "single-threaded, always on the CPU; tv2 runs torchvision.transforms.v2.functional per view on a "
        f"3×H×W uint8 tensor (a channels-last view of the frame, its fastest layout), one view at a time, then "
        f"one to_dtype + normalize on the stack, cycling through {BOX_POOL} box sets drawn before timing.",
        "parity (augment_views peer rows): mean / max |edgeclip − peer| over every pixel of the same boxes' "
        "views, de-normalised to [0, 1] pixel units (1/255 = 0.0039); the peers round each view to 8 bits.",
        f"cosine+select: N image and C class embeddings of width D (random normal) → scale · cos (scale "
        f"{LOGIT_SCALE:g}), softmax, entropy, the max(1, int({RHO:g}·N)) lowest-entropy views and the log of "
        "their mean probability, forward only; edgeclip = cosine_logits + select_confident, the peer the "
        "plain PyTorch sequence; parity = mean / max |Δ log mean prob| (nats), same_index in the JSON.",
    ]
    native = config["native_kernel"]
    if native:
        notes.append(f"edgeclip:native[{native['isa']}]: the C kernel compiled with `{native['flags']}` "
                     f"({native['vector_floats']} floats per vector; set EDGECLIP_NATIVE_MARCH to build for another "
                     f"instruction-set level); the peers' torch runs its {_torch_cpu_capability()} kernels.")
    add_busy_note(rows, notes, "absolute times are inflated; round-robin timing shares the slowdown, but ratios "
                  "can still shift")
    where = "CUDA" if is_cuda(device) else "CPU"
    return {"title": f"Per-frame kernels on {where}: edgeclip vs TPT-style baselines", "bench": "kernels",
            "config": config, "columns": list(COLUMNS), "rows": rows, "notes": notes,
            "machine": machine_info(threads)}
