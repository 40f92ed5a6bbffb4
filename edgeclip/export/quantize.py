"""Static INT8 (QDQ) image encoders, with the calibration method chosen by measurement, as a bundle variant.

`quantize_bundle` quantises a bundle's image encoder with onnxruntime's `quantize_static` in QDQ format:
per-channel symmetric INT8 weights, symmetric INT8 activations (the form TensorRT's explicit-quantisation path
takes), and only MatMul (with constant weights), Gemm and Conv quantised. LayerNormalization, Softmax, GELU
(Erf/Mul), the residual and bias Adds, the attention's activation x activation MatMuls and the final
projection stay in FP32: int8 activations there are known to wreck CLIP embeddings. The text encoder is left
as it is (FP32), and the manifest says so.

Calibration images come from ``calib``: ``"shapes:N"`` (N procedural shapes images spread over every shift of
`edgeclip.data.shapes`), a folder (every image under it), or a list of images / a ready pixel tensor; all are
preprocessed exactly as the bundle's runtime does (`EdgeClip.preprocess`, i.e. `runtime.images.preprocess`
with the manifest's image config). A quarter of them (at least one) is held out: with ``method="auto"``
MinMax, Entropy and Percentile calibration are each tried on the rest and the one whose held-out embeddings
agree best with FP32 (highest min cosine, then mean) is kept; all figures are recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from tqdm.auto import tqdm

from edgeclip.errors import ExportError, ImageError, InputError
from edgeclip.export.bundle_writer import _terminate_as_exit
from edgeclip.export.onnx_graph import save_onnx
from edgeclip.export.variant import (
    VariantResult,
    cosine_stats,
    final_projection_nodes,
    fold_storage_casts,
    image_parity_pixels,
    open_source,
    ort_session,
    pixel_feeds,
    prepare_out,
    run_graph,
    write_variant,
)
from edgeclip.runtime.bundle import IMAGE_ONNX, Bundle

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["CALIB_SEED", "METHODS", "MIN_INT8_COS", "QUANTIZED_OP_TYPES", "calibration_pixels", "quantize_bundle",
           "quantize_image_graph"]

METHODS = ("minmax", "entropy", "percentile")
#: Op types whose inputs are quantised; everything else stays FP32.
QUANTIZED_OP_TYPES = ("MatMul", "Gemm", "Conv")
#: Seed of ``shapes:N`` calibration images (distinct from training, evaluation and parity seeds).
CALIB_SEED = 31_337
#: The lowest held-out min cosine vs FP32 a quantised image encoder may have.
MIN_INT8_COS = 0.95
HOLDOUT_FRACTION = 0.25
CALIB_BATCH = 16
PERCENTILE = 99.999
ENTROPY_BINS = 512
#: Images (procedural, every shift, a seed of their own) the chosen graph is also measured on.
FRESH_IMAGES = 32


def _calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


# -- calibration images -------------------------------------------------------------------------------------
def _shapes_images(spec: str) -> list[np.ndarray]:
    from edgeclip.data import shapes

    count = spec.split(":", 1)[1].strip()
    if not count.isdigit() or int(count) < 1:
        raise InputError(f"calib {spec!r}: write shapes:N with N a positive number of images, e.g. shapes:256")
    n = int(count)
    shifts = list(shapes.SHIFTS)
    images: list[np.ndarray] = []
    for i, shift in enumerate(shifts):
        k = n // len(shifts) + (1 if i < n % len(shifts) else 0)
        if k:
            images.extend(shapes.make_batch(k, seed=CALIB_SEED + i, shift=shift).images)
    # interleave the shifts, so the held-out tail is not one shift only
    order = np.random.default_rng(CALIB_SEED).permutation(len(images))
    return [images[j] for j in order]


def calibration_pixels(source: Bundle, calib: Any) -> tuple[np.ndarray, str]:
    """Calibration images as the encoder's input (float32 [N, 3, S, S]) and a description of where they came
    from. `calib`: ``"shapes:N"``, a folder of images, or images / a pixel tensor (`EdgeClip.preprocess`'s
    inputs). An empty or unreadable set is an `InputError`."""
    from edgeclip.runtime.images import iter_image_paths, preprocess

    if isinstance(calib, str) and calib.strip().lower().startswith("shapes:"):
        images: Any = _shapes_images(calib.strip())
        what = calib.strip()
    elif isinstance(calib, (str, Path)):
        folder = Path(calib).expanduser()
        if not folder.is_dir():
            raise InputError(f"calib {calib!s}: not a folder of images (nor shapes:N)")
        images = iter_image_paths(folder)
        if not images:
            raise InputError(f"calib folder {folder} holds no images (suffixes .jpg, .png, ...)")
        what = f"folder {folder.name} ({len(images)} images)"
    elif calib is None:
        raise InputError("calib is required: shapes:N, a folder of images, or a list of images")
    else:
        images = calib
        what = "images given in memory"
        try:
            if len(images) == 0:
                raise InputError("calib holds no images")
        except TypeError:
            pass
    try:
        pixels = preprocess(images if not isinstance(images, list) else list(images), source.spec.image)
    except ImageError as exc:
        raise InputError(f"a calibration image cannot be used: {exc}") from exc
    arr = pixels.detach().cpu().numpy().astype(np.float32)
    if arr.ndim != 4 or len(arr) == 0:
        raise InputError("calib holds no images")
    return arr, what


def _reader(pixels: np.ndarray) -> Any:
    """A `CalibrationDataReader` over an array of pixels, in equal batches of at most `CALIB_BATCH` images
    (onnxruntime is imported only here, when quantising)."""
    from onnxruntime.quantization import CalibrationDataReader

    # equal batches: onnxruntime's histogram collectors (Entropy, Percentile) stack every batch's outputs
    batch = max(b for b in range(1, min(CALIB_BATCH, len(pixels)) + 1) if len(pixels) % b == 0)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = pixel_feeds(pixels, batch)
            self._it = iter(self._feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(self._feeds)

    return _Reader()


# -- quantising one graph -----------------------------------------------------------------------------------
def _prepare(src: Path, work: Path) -> Path:
    """The FP32 graph ready to quantise: fp16-stored weights folded back to FP32 initializers, then
    onnxruntime's `quant_pre_process` (shape inference, constant folding); without it when that fails."""
    proto = onnx.load(str(src))
    folded = fold_storage_casts(proto)
    plain = work / "fp32.onnx"
    save_onnx(proto, plain)
    pre = work / "fp32_pre.onnx"
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(plain), str(pre), skip_symbolic_shape=True)
        onnx.checker.check_model(str(pre))
        log.info("prepared %s: %d fp16-stored weights folded, quant_pre_process applied", src.name, folded)
        return pre
    except Exception as exc:  # pre-processing is an optimisation: quantise the plain graph instead
        log.warning("quant_pre_process failed on %s (%s); quantising the graph without it", src.name, exc)
        return plain


def _entropy_ranges(fp32: Path, calib: np.ndarray, cache: Path) -> None:
    """Entropy (KL) calibration with a real search: `quantize_static` builds its entropy calibrator with as
    many histogram bins as quantised bins (128 and 128), so the only threshold it can pick is the full range,
    which makes Entropy identical to MinMax. Calibrate here with 2048 bins and hand the ranges to
    `quantize_static` through its calibration cache."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(fp32, list(QUANTIZED_OP_TYPES),
                                   augmented_model_path=str(cache.with_suffix(".augmented.onnx")),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": ENTROPY_BINS,
                                                  "num_quantized_bins": 128})
    calibrator.collect_data(_reader(calib))
    save_tensors_data(calibrator.compute_data(), cache)


def _fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes of a quantised op type left in FP32: the final projection and every MatMul whose B is not a
    constant (attention's Q @ K^T and softmax @ V; onnxruntime's QDQ MatMul ignores ``MatMulConstBOnly``)."""
    inits = {i.name for i in graph.initializer}
    exclude = final_projection_nodes(graph)
    exclude += [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] not in inits
                and n.name not in exclude]
    return exclude


def quantize_image_graph(fp32: Path, out: Path, calib: np.ndarray, *, method: str = "minmax",
                         per_channel: bool = True) -> dict[str, Any]:
    """Static QDQ INT8 of a prepared FP32 image graph (`fp32`) to `out`, calibrated on `calib` pixels with
    `method`. Only the inputs of MatMul (constant weights), Gemm and Conv are quantised; their outputs stay
    float, so bias and residual Adds, LayerNorm, Softmax and GELU read FP32. Returns the options used."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32)).graph
    exclude = _fp32_nodes(graph)
    # MatMulConstBOnly is honoured by the QOperator path only; `_fp32_nodes` does it for QDQ
    options: dict[str, Any] = {"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True,
                               "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)}
    if method == "percentile":
        options["CalibPercentile"] = PERCENTILE
    cache = out.with_suffix(".calib.json")
    quiet = io.StringIO()  # the quantiser prints its progress
    try:
        with contextlib.redirect_stdout(quiet):
            if method == "entropy":
                _entropy_ranges(fp32, calib, cache)
            quantize_static(str(fp32), str(out), _reader(calib), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=_calib_method(method),
                            extra_options=options,
                            calibration_cache_path=str(cache) if method == "entropy" else None)
    except Exception as exc:  # onnxruntime's quantiser raises many types
        raise ExportError(f"quantize_static ({method}) failed on the image graph: {exc}") from exc
    save_onnx(onnx.load(str(out)), out)  # the ONNX checker, as for every bundle graph
    return {"op_types_quantized": list(QUANTIZED_OP_TYPES), "nodes_excluded": exclude,
            "activation_type": "int8 (symmetric)", "weight_type": "int8 (symmetric)", "per_channel": per_channel,
            "quant_format": "QDQ", "options": options,
            **({"entropy_bins": ENTROPY_BINS} if method == "entropy" else {})}


def _count_ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def quantize_bundle(
    bundle: str | Path | Bundle,
    out: str | Path,
    *,
    calib: str | Path | Sequence[Any] | torch.Tensor = "shapes:256",
    method: str = "auto",
    per_channel: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    min_cos: float = MIN_INT8_COS,
) -> VariantResult:
    """Write an INT8 variant of `bundle` at `out`: the image encoder statically quantised (QDQ), the text
    encoder unchanged in FP32, the rest copied (the PyTorch image tower left out; see
    `edgeclip.export.variant`).

    `calib`: ``"shapes:N"``, a folder, or images (see `calibration_pixels`); a quarter (at least one image) is
    held out. `method`: ``"auto"`` tries MinMax, Entropy and Percentile and keeps the best on the held-out
    images; or one of `METHODS`. The result's ``parity`` holds the chosen method's held-out mean and min
    cosine against the FP32 graph (``image_mean_cos``, ``image_min_cos``), every tried method's
    (``image_<method>_mean_cos`` / ``_min_cos``, also in ``choices["methods"]``) and the chosen graph's on
    `FRESH_IMAGES` images neither calibration nor selection saw (``image_fresh_mean_cos`` / ``_min_cos``).
    A held-out min cosine below `min_cos` is refused with an `ExportError` naming the figures; nothing is
    written then.

    Raises:
        InputError: `bundle` does not exist, `out` is the source, a bad `method`, or calibration images that are
            missing, empty, too few (need 2) or unreadable.
        BundleError: the source bundle is corrupt.
        ExportError: `out` exists without `overwrite`, quantisation fails, or parity fails.
    """
    if method != "auto" and method not in METHODS:
        raise InputError(f"method must be 'auto' or one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(per_channel, bool):
        raise InputError(f"per_channel must be true or false, got {per_channel!r}")
    source = open_source(bundle)
    out_path = prepare_out(source, out, overwrite)
    pixels, calib_what = calibration_pixels(source, calib)
    if len(pixels) < 2:
        raise InputError(f"calib has {len(pixels)} image; need at least 2 (some calibrate, some are held out)")
    # a fixed shuffle first: a folder lists its images class by class, and the held-out part must not be the
    # last classes only
    pixels = pixels[np.random.default_rng(CALIB_SEED).permutation(len(pixels))]
    n_hold = max(1, round(len(pixels) * HOLDOUT_FRACTION))
    fit, held = pixels[:-n_hold], pixels[-n_hold:]
    methods = list(METHODS) if method == "auto" else [method]
    with _terminate_as_exit(), \
            tqdm(total=len(methods) + 2, desc="quantize int8", disable=not progress, unit="step") as steps, \
            tempfile.TemporaryDirectory(prefix="edgeclip-int8-") as scratch:
        work = Path(scratch)
        steps.set_postfix_str("prepare")
        prepared = _prepare(source.file(IMAGE_ONNX), work)
        ref = run_graph(ort_session(source.file(IMAGE_ONNX)), pixel_feeds(held))
        steps.update()
        figures: dict[str, dict[str, float]] = {}
        used: dict[str, dict[str, Any]] = {}
        for m in methods:
            steps.set_postfix_str(m)
            path = work / f"int8_{m}.onnx"
            used[m] = quantize_image_graph(prepared, path, fit, method=m, per_channel=per_channel)
            mean, low = cosine_stats(ref, run_graph(ort_session(path), pixel_feeds(held)))
            figures[m] = {"mean_cos": mean, "min_cos": low}
            log.info("int8 %s: held-out cosine vs fp32 mean %.6f, min %.6f", m, mean, low)
            steps.update()
        finite = {m: f for m, f in figures.items() if np.isfinite(f["min_cos"])}
        if not finite:
            raise ExportError(f"every calibration method gave non-finite embeddings ({figures}); no bundle written")
        best = max(finite, key=lambda m: (round(finite[m]["min_cos"], 4), finite[m]["mean_cos"]))
        chosen = figures[best]
        if chosen["min_cos"] < min_cos:
            raise ExportError(f"the INT8 image encoder disagrees with FP32: held-out min cosine "
                              f"{chosen['min_cos']:.4f} with {best} (tried: {figures}; need >= {min_cos}); no "
                              "bundle written")
        final = work / f"int8_{best}.onnx"
        # and on images neither calibration nor selection saw (procedural shapes over every shift)
        fresh = pixel_feeds(image_parity_pixels(source, FRESH_IMAGES))
        fresh_mean, fresh_min = cosine_stats(run_graph(ort_session(source.file(IMAGE_ONNX)), fresh),
                                             run_graph(ort_session(final), fresh))
        if not fresh_min >= min_cos:
            raise ExportError(f"the INT8 image encoder ({best}) disagrees with FP32 on fresh images: min cosine "
                              f"{fresh_min:.4f} (held-out {chosen['min_cos']:.4f}; need >= {min_cos}); no bundle "
                              "written")
        steps.set_postfix_str("writing")
        ops = _count_ops(final)
        src_parity = source.spec.parity
        parity = {"image_min_cos": chosen["min_cos"], "image_mean_cos": chosen["mean_cos"],
                  "image_n": float(len(held)), "image_fresh_mean_cos": fresh_mean, "image_fresh_min_cos": fresh_min,
                  "image_fresh_n": float(FRESH_IMAGES), "text_min_cos": 1.0, "text_mean_cos": 1.0,
                  "truncation_max_abs": float(src_parity.truncation_max_abs), "min_required_cos": float(min_cos)}
        for m, f in figures.items():
            parity[f"image_{m}_mean_cos"] = f["mean_cos"]
            parity[f"image_{m}_min_cos"] = f["min_cos"]
        precision = {"compute": "int8", "storage": source.spec.precision.storage,
                     "image_encoder": "int8 (QDQ, static, per-channel weights)" if per_channel
                     else "int8 (QDQ, static, per-tensor weights)",
                     "text_encoder": "float32 (unchanged)", "io": "float32"}
        choices = {"method": best, "method_requested": method, "methods": figures,
                   "selection": "highest held-out min cosine vs FP32 (to 4 places), then mean",
                   "calibration": {"source": calib_what, "images": len(fit), "held_out": len(held)},
                   "fp32_ops": "LayerNormalization, Softmax, GELU (Erf/Mul), Adds, activation MatMuls, "
                               "final projection",
                   "text_encoder": "float32 (not quantised)", **used[best],
                   "quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0)}
        info = {"int8": {"method": best, "methods": figures, "calibration": choices["calibration"],
                         "fp32_ops": choices["fp32_ops"], "per_channel": per_channel,
                         "activations": "int8 symmetric", "fp32_nodes_of_quantised_types":
                             len(used[best]["nodes_excluded"])},
                "checked_with": "onnxruntime CPU"}
        manifest = write_variant(source, out_path, {IMAGE_ONNX: final}, kind="int8", precision=precision,
                                 parity=parity, info=info, overwrite=overwrite)
        steps.update()
    return VariantResult(out_path, "int8", precision, parity, choices, manifest)

