#!/usr/bin/env bash
# The CUDA checks of edgeclip in one call, sized to finish inside 8 minutes on one NVIDIA H200:
#   1. nvidia-smi and the versions of Python, torch, Triton, torchvision, onnxruntime and open_clip;
#   2. the `gpu`-marked tests (python -m pytest -q -m gpu): CUDA backends, the Triton kernels' parity, the FP16
#      ONNX graph against torch half precision on CUDA, and the real TensorRT engine test where TensorRT exists
#      (it does not on the lent H200: onnxruntime-gpu and TensorRT are absent, so that test skips);
#   3. the Triton kernels against torch and the TPT-style peers (edgeclip bench kernels --device cuda);
#   4. TPT at C = 1000 on a random-weight ViT-B-16 against the reference TPT loop
#      (edgeclip bench tta --part speed --device cuda --backend torch: onnxruntime there has no CUDA provider).
# Every step runs under `timeout`, a failed step does not stop the others, and the script exits 1 when any
# step failed (0 otherwise). Reports (JSON + Markdown) and logs go to $OUT when it is set, else to
# bench-results/ in the repository.
#
# The machine needs torch with CUDA, Triton and pytest; edgeclip runs from this checkout (PYTHONPATH, no
# install). Packages it lacks (open_clip_torch, ftfy, wcwidth on a bare CUDA image) travel as wheels in .whl/
# at the repository root and are installed into /tmp/site first; fetch them on a machine with a network:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch ftfy wcwidth
#
# Environment: OUT (report folder), PYTHON (interpreter, default python3), EDGECLIP_GPU_CHECK_SPEED_IMAGES
# (timed TPT images per case, default 3), EDGECLIP_GPU_CHECK_DRY_RUN=1 (print the steps, run nothing),
# EDGECLIP_GPU_CHECK_LIMITS="versions pytest kernels tta" seconds (default "30 130 90 180"; with the wheels' 25
# and nvidia-smi's 15, 470 s at most).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT_DIR=${OUT:-$REPO/bench-results}
PY=${PYTHON:-python3}
DRY=${EDGECLIP_GPU_CHECK_DRY_RUN:-0}
SPEED_IMAGES=${EDGECLIP_GPU_CHECK_SPEED_IMAGES:-3}
read -r LIMIT_INFO LIMIT_PYTEST LIMIT_KERNELS LIMIT_TTA <<<"${EDGECLIP_GPU_CHECK_LIMITS:-30 130 90 180}"
EDGECLIP=("$PY" -m edgeclip.cli)
FAILED=()

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
[ "$DRY" = 1 ] || exec > >(tee "$LOG") 2>&1
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export EDGECLIP_CACHE=${EDGECLIP_CACHE:-/tmp/edgeclip-cache} MPLBACKEND=Agg

# step NAME SECONDS COMMAND...: run COMMAND under a time limit, log it, remember a failure; returns its status
step() {
    local name=$1 limit=$2
    shift 2
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    [ "$DRY" = 1 ] && return 0
    echo "=== $name (limit ${limit} s)"
    local start=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))")
    return "$rc"
}

if [ "$DRY" != 1 ] && compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    step wheels 25 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$REPO"/.whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

step nvidia-smi 15 nvidia-smi
step versions "$LIMIT_INFO" "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("triton", "torchvision", "onnxruntime", "open_clip", "numpy", "PIL"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # report every missing package, fail below on the ones the checks need
        print(name, "MISSING:", exc)
import open_clip
import triton
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
EOF
step pytest-gpu "$LIMIT_PYTEST" "$PY" -m pytest -q -m gpu -p no:cacheprovider -o "junit_family=xunit2" \
    --junitxml "$OUT_DIR/pytest-gpu.xml" tests
step bench-kernels "$LIMIT_KERNELS" "${EDGECLIP[@]}" bench kernels --device cuda --threads 8 \
    --frames 1080x1920,480x640 --classes 10,100,1000 --dims 512,768 --out "$OUT_DIR"
step bench-tta-speed "$LIMIT_TTA" "${EDGECLIP[@]}" bench tta --part speed --device cuda --backend torch \
    --model ViT-B-16 --classes 1000 --speed-images "$SPEED_IMAGES" --cache /tmp/edgeclip-bundles --out "$OUT_DIR"

[ "$DRY" = 1 ] && exit 0
echo "reports in $OUT_DIR:"
ls -l "$OUT_DIR"
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all GPU checks passed"
