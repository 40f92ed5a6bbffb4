"""The native view kernel's build: forced instruction-set levels, the cache key, and every x86 level's views."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeclip.kernels import cpu_views
from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD, view_filters
from edgeclip.kernels.cpu_info import simd_flags
from edgeclip.kernels.cpu_views import MARCH_ENV, compile_native_kernel, native_available, resample_views
from edgeclip.kernels.view_boxes import sample_boxes

needs_cc = pytest.mark.skipif(not native_available(), reason="no C compiler")
X86 = platform.machine() == "x86_64"
HAVE = set(simd_flags())
# x86-64 levels this CPU can run: the flags that tell them apart in /proc/cpuinfo
LEVELS: dict[str, tuple[set[str], str, int]] = {
    "x86-64": (set(), "sse2", 4), "x86-64-v2": ({"sse4_2"}, "sse4.1", 4), "x86-64-v3": ({"avx2", "fma"}, "avx2", 8),
    "x86-64-v4": ({"avx512f", "avx512bw", "avx512vl", "avx512dq"}, "avx512", 16)}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(MARCH_ENV, raising=False)


def test_forced_level_syntax() -> None:
    assert cpu_views._flag_sets("") == (cpu_views._DEFAULT_FLAG_SETS, "native")
    assert cpu_views._flag_sets(" x86-64-v3 ") == ((("-march=x86-64-v3",),), "x86-64-v3")
    assert cpu_views._flag_sets("-mcpu=cortex-a78ae -mtune=cortex-a78ae") == (
        (("-mcpu=cortex-a78ae", "-mtune=cortex-a78ae"),), "-mcpu=cortex-a78ae -mtune=cortex-a78ae")


@needs_cc
def test_cache_key_names_flags_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cc = cpu_views._compiler() or ""
    native = cpu_views._library_tag(cc, ("-O3", "-march=native"))
    assert native == cpu_views._library_tag(cc, ("-O3", "-march=native"))
    assert native != cpu_views._library_tag(cc, ("-O3", "-march=x86-64-v3"))
    monkeypatch.setattr(cpu_views, "isa_signature", lambda: "another-cpu")  # same host name, other CPU flags
    assert native != cpu_views._library_tag(cc, ("-O3", "-march=native"))


@needs_cc
def test_default_build_is_cached_and_reported(tmp_path: Path) -> None:
    kernel = compile_native_kernel()
    info = kernel.info()
    assert Path(info["path"]).parent == tmp_path / "cache" / "kernels" and Path(info["path"]).exists()
    assert info["march"] == "native" and info["flags"].startswith("-O3")
    assert info["isa"] in {"avx512", "avx2", "avx", "sse4.1", "sse2", "neon", "scalar"} and "lib" not in info
    assert compile_native_kernel().path == kernel.path  # the second build is the cached library
    json.dumps(info)


@needs_cc
def test_forced_level_that_does_not_compile_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no-such-cpu"):
        compile_native_kernel("no-such-cpu")


def _views(kernel: cpu_views.NativeKernel, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w, size, n = [(240, 321, 33, 12), (37, 91, 24, 9), (300, 500, 100, 6), (91, 37, 3, 6)][seed]
    frame = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
    boxes = sample_boxes(h, w, n, generator=g)
    ref = resample_views(frame, boxes, view_filters(n), size, CLIP_MEAN, CLIP_STD, impl="torch")
    return kernel.views(frame, boxes, view_filters(n), size, CLIP_MEAN, CLIP_STD), ref


@needs_cc
@pytest.mark.skipif(not X86, reason="x86-64 levels")
def test_every_x86_level_gives_the_same_views() -> None:
    runnable = {m: spec for m, spec in LEVELS.items() if spec[0] <= HAVE}
    fused: dict[int, torch.Tensor] = {}
    for march, (_, isa, width) in runnable.items():
        kernel = compile_native_kernel(march)
        assert (kernel.march, kernel.isa, kernel.vector_floats) == (march, isa, width)
        for seed in range(4):
            views, ref = _views(kernel, seed)
            assert (views - ref).abs().max().item() < 1e-4, (march, seed)
            if march in ("x86-64-v3", "x86-64-v4"):  # FMA levels: bit-equal whatever the vector width
                assert torch.equal(views, fused.setdefault(seed, views)), (march, seed)


@needs_cc
@pytest.mark.skipif(not X86 or "avx512f" in HAVE, reason="needs an x86 CPU without AVX-512")
def test_a_build_for_instructions_this_cpu_lacks_is_refused() -> None:
    with pytest.raises(RuntimeError, match="lacks"):
        compile_native_kernel("x86-64-v4")


@needs_cc
@pytest.mark.skipif(not X86, reason="x86-64 levels")
def test_bench_reports_the_forced_level(tmp_path: Path) -> None:
    env = {**os.environ, MARCH_ENV: "x86-64-v2"}
    args = ["bench", "kernels", "--quick", "--repeats", "2", "--threads", "1", "--frames", "60x80", "--views", "4",
            "--size", "16", "--classes", "3", "--dims", "8", "--out", str(tmp_path / "rep")]
    subprocess.run([sys.executable, "-m", "edgeclip.cli", *args], env=env, check=True, capture_output=True,
                   timeout=300)
    data = json.loads((tmp_path / "rep" / "kernels.json").read_text())
    assert data["rows"][0]["impl"] == "edgeclip:native[sse4.1]"
    assert data["config"]["native_kernel"]["march"] == "x86-64-v2"
    assert data["config"]["native_kernel"]["flags"] == "-O3 -march=x86-64-v2"
    assert "edgeclip:native[sse4.1]" in (tmp_path / "rep" / "kernels.md").read_text()


@needs_cc
@pytest.mark.parametrize("size", [3, 16, 50, 224])
def test_native_edge_boxes_match_the_reference(size: int) -> None:
    """Boxes the random crops rarely draw: tall and narrow (more taps than one padded chunk holds), short and
    wide, one pixel, the whole frame; both filters, both flips."""
    g = torch.Generator().manual_seed(size)
    frame = torch.randint(0, 256, (1200, 900, 3), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[0, 0, 1200, 20, 0], [5, 7, 1100, 9, 1], [100, 0, 4, 900, 1], [3, 4, 1, 1, 0],
                          [0, 0, 1200, 900, 1], [600, 450, 37, 61, 0]], dtype=torch.int64)
    for filters in (torch.zeros(6, dtype=torch.int64), torch.ones(6, dtype=torch.int64)):
        ours = resample_views(frame, boxes, filters, size, CLIP_MEAN, CLIP_STD, impl="native")
        ref = resample_views(frame, boxes, filters, size, CLIP_MEAN, CLIP_STD, impl="torch")
        assert (ours - ref).abs().max().item() < 1e-4, (size, filters[0].item())
