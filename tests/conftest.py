"""Shared fixtures: tiny open_clip architectures exported once per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import register_tiny_configs

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Without CUDA the Triton kernels run in Triton's interpreter on CPU tensors, so their arithmetic is tested
# everywhere. It must be set before anything decorates a kernel (triton.jit reads it at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every edgeclip cache (backend calibrations, native kernels, feature pools) in a session folder, never
    the home cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLIP_CACHE", str(tmp_path_factory.mktemp("edgeclip_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return register_tiny_configs(tmp_path_factory.mktemp("tiny_configs"))


@pytest.fixture(scope="session")
def bundle_factory(tiny_names: list[str], tmp_path_factory: pytest.TempPathFactory):
    """Export a tiny architecture once per session and hand out its bundle path."""
    from edgeclip.export import export_bundle

    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(name: str) -> Path:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = export_bundle(root / f"{name}.bundle", name).path
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_bundle(bundle_factory) -> Path:
    return bundle_factory("test-tiny-vit")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = True
    except ImportError:
        has_trt = False
    try:
        import triton  # noqa: F401

        has_triton = True
    except ImportError:
        has_triton = False
    for item in items:
        if "triton" in item.keywords and not has_triton:
            item.add_marker(pytest.mark.skip(reason="needs Triton"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT"))


@pytest.fixture(scope="session")
def micro():
    """The embedded micro CLIP on the torch backend, loaded once for the whole session."""
    import edgeclip

    return edgeclip.load(edgeclip.default_bundle(), backend="torch")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): its tensors
    are tiny, so one thread is fastest and does not thrash a shared 2-core machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
