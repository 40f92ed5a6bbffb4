"""Loading verifies the bundle: missing or changed files and newer formats fail with clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import edgeclip
from edgeclip.errors import BackendError, BundleError
from edgeclip.runtime.bundle import FORMAT_VERSION, MANIFEST, TEXT_ONNX, TEXT_TOWER


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_missing_file(copy: Path) -> None:
    (copy / TEXT_ONNX).unlink()
    with pytest.raises(BundleError, match=f"{TEXT_ONNX} is missing"):
        edgeclip.load(copy)


def test_changed_file_hash_mismatch(copy: Path) -> None:
    data = bytearray((copy / TEXT_TOWER).read_bytes())
    data[-1] ^= 0xFF
    (copy / TEXT_TOWER).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="hash mismatch"):
        edgeclip.load(copy)


def test_truncated_file(copy: Path) -> None:
    data = (copy / TEXT_TOWER).read_bytes()
    (copy / TEXT_TOWER).write_bytes(data[:100])
    with pytest.raises(BundleError, match="truncated"):
        edgeclip.load(copy)


def test_newer_format_version(copy: Path) -> None:
    m = json.loads((copy / MANIFEST).read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="upgrade edgeclip"):
        edgeclip.load(copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        edgeclip.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an edgeclip bundle"):
        edgeclip.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        edgeclip.load(tmp_path / "bad")


def test_unknown_backend(tiny_bundle: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend"):
        edgeclip.load(tiny_bundle, backend="tpu")


def test_cuda_without_gpu(tiny_bundle: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendError, match="CUDA is not available"):
        edgeclip.load(tiny_bundle, device="cuda")
