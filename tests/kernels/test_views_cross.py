"""The CPU view kernel built for Arm (Jetson Orin's Cortex-A78AE: NEON, no SVE) gives the x86 build's views.

An aarch64 cross compiler and qemu-aarch64 run the kernel through a small C driver (csrc/views_driver.c); the
test is skipped where they are not installed (``apt-get install gcc-aarch64-linux-gnu qemu-user``). Only the
output is checked: speed under an emulator means nothing.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD, view_filters
from edgeclip.kernels.cpu_info import simd_flags
from edgeclip.kernels.cpu_views import _scale_bias, resample_views
from edgeclip.kernels.view_boxes import sample_boxes

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "csrc" / "views_driver.c"
KERNEL = HERE.parents[1] / "edgeclip" / "kernels" / "csrc" / "resample_views.c"
SYSROOT = Path("/usr/aarch64-linux-gnu")
CROSS_CC, QEMU = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
HOST_CC = shutil.which("cc") or shutil.which("gcc")

needs_cross = pytest.mark.skipif(
    CROSS_CC is None or QEMU is None or not SYSROOT.is_dir(),
    reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)",
)

# (H, W, S, N, seed): a camera-like frame, narrow and tiny boxes, views narrower than a vector, upsampling
CASES = [(180, 320, 64, 10, 0), (37, 91, 24, 9, 1), (5, 3, 16, 4, 2), (1, 1, 3, 3, 3), (2, 200, 11, 5, 4)]


def _case(h: int, w: int, s: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
    boxes = sample_boxes(h, w, n, generator=g)
    return frame, boxes, view_filters(n)


def _write_input(path: Path, frame: torch.Tensor, boxes: torch.Tensor, filters: torch.Tensor, size: int) -> None:
    scale, bias = _scale_bias(CLIP_MEAN, CLIP_STD)
    h, w = frame.shape[:2]
    header = np.array([h, w, boxes.shape[0], size, 2], dtype=np.int64)
    parts = [header, frame.numpy(), boxes.numpy().astype(np.int64), filters.numpy().astype(np.int64),
             scale.numpy(), bias.numpy()]
    path.write_bytes(b"".join(np.ascontiguousarray(p).tobytes() for p in parts))


def _build(cc: str, flags: list[str], out: Path) -> None:
    cmd = [cc, "-O3", *flags, "-pthread", str(DRIVER), str(KERNEL), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def _run(cmd: list[str], tmp: Path, name: str, frame, boxes, filters, size: int) -> tuple[torch.Tensor, str]:
    src, dst = tmp / f"{name}.in", tmp / f"{name}.out"
    _write_input(src, frame, boxes, filters, size)
    proc = subprocess.run([*cmd, str(src), str(dst)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    views = torch.from_numpy(np.fromfile(dst, dtype=np.float32).copy()).view(boxes.shape[0], 3, size, size)
    return views, proc.stdout.strip()


@pytest.fixture(scope="module")
def arm_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("arm") / "views_driver"
    _build(CROSS_CC or "", ["-mcpu=cortex-a78ae"], exe)
    return exe


@needs_cross
def test_arm_build_vectorises_with_neon(arm_driver: Path) -> None:
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("needs aarch64-linux-gnu-objdump (binutils-aarch64-linux-gnu)")
    asm = subprocess.run([objdump, "-d", str(arm_driver)], capture_output=True, text=True, check=True).stdout
    fmla = [line for line in asm.splitlines() if "\tfmla\t" in line and ".4s" in line]
    assert len(fmla) >= 12 + 8  # the horizontal pass's 12 accumulators, the vertical pass's 8: 4-wide NEON
    assert "ptrue" not in asm and "\tld1w\t" not in asm  # no SVE: Orin has none


@needs_cross
@pytest.mark.parametrize(("h", "w", "size", "n", "seed"), CASES)
def test_arm_views_equal_the_x86_views(arm_driver: Path, tmp_path: Path, h: int, w: int, size: int, n: int,
                                       seed: int) -> None:
    frame, boxes, filters = _case(h, w, size, n, seed)
    arm, banner = _run([QEMU or "", "-L", str(SYSROOT), str(arm_driver)], tmp_path, "arm", frame, boxes, filters,
                       size)
    assert banner == "isa=neon vector_floats=4 cpu_ok=1"
    ref = resample_views(frame, boxes, filters, size, CLIP_MEAN, CLIP_STD, impl="torch")
    assert (arm - ref).abs().max().item() < 1e-4  # the PyTorch reference, within float rounding
    if HOST_CC is not None and platform.machine() == "x86_64" and {"avx2", "fma"} <= set(simd_flags()):
        host = tmp_path / "host_driver"
        _build(HOST_CC, ["-march=x86-64-v3"], host)  # AVX2 + FMA: the same fused multiply-adds as NEON
        x86, banner = _run([str(host)], tmp_path, "x86", frame, boxes, filters, size)
        assert banner == "isa=avx2 vector_floats=8 cpu_ok=1"
        assert torch.equal(arm, x86), (arm - x86).abs().max().item()  # bit-equal
