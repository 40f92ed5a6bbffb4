"""Feature pools: sources, views, the on-disk cache and its key, resuming an interrupted build."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ImageError, InputError
from edgeclip.runtime.feature_pool import FeaturePool, ViewPolicy, build_feature_pool


class CountingEncoder:
    """Wraps a model's image encoder: counts the images it encodes, can fail after some calls."""

    def __init__(self, inner, fail_after: int | None = None) -> None:
        self.inner, self.images, self.calls, self.fail_after = inner, 0, 0, fail_after

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # as Ctrl-C would
        self.calls += 1
        self.images += pixels.shape[0]
        return self.inner(pixels)


@pytest.fixture()
def counting(micro: edgeclip.EdgeClip, monkeypatch: pytest.MonkeyPatch):
    original = micro.image_encoder

    def install(fail_after: int | None = None) -> CountingEncoder:
        enc = CountingEncoder(original, fail_after)
        monkeypatch.setattr(micro, "image_encoder", enc)
        return enc

    return install


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes.save_image_folder(tmp_path_factory.mktemp("pool") / "data", n_per_class=2, seed=3)


def test_folder_pool_is_the_encoder_output(micro: edgeclip.EdgeClip, folder: Path) -> None:
    pool = build_feature_pool(micro, folder, cache=False)
    assert len(pool) == 32 and pool.n_views == 1 and pool.dim == micro.bundle.embed_dim
    assert pool.class_names == shapes.class_names() and pool.is_labelled
    assert pool.labels.tolist() == [c for c in range(16) for _ in range(2)]
    first = Path(pool.items[0])
    assert first.parent.name == "red_circle"
    expected = torch.nn.functional.normalize(micro.encode_images([first]), dim=-1)
    torch.testing.assert_close(pool.plain[0], expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(pool.embeds.norm(dim=-1), torch.ones(32, 1), atol=1e-5, rtol=0)


def test_procedural_and_list_sources(micro: edgeclip.EdgeClip) -> None:
    pool = build_feature_pool(micro, "shapes:20:blur", cache=False)
    assert len(pool) == 20 and pool.labels.tolist() == [i % 16 for i in range(20)]
    assert pool.meta["source"]["shift"] == "blur"
    images = list(shapes.make_batch(3, seed=1).images)
    unlabelled = build_feature_pool(micro, images, cache=False)
    assert not unlabelled.is_labelled and unlabelled.labels.tolist() == [-1, -1, -1]
    labelled = build_feature_pool(micro, images, class_names=["a", "b"], labels=[0, 1, 1], cache=False)
    assert labelled.is_labelled and labelled.class_names == ["a", "b"]
    with pytest.raises(InputError, match="labels must lie"):
        build_feature_pool(micro, images, class_names=["a", "b"], labels=[0, 1, 2], cache=False)
    with pytest.raises(InputError, match="does not exist"):
        build_feature_pool(micro, "/no/such/folder", cache=False)
    with pytest.raises(InputError, match="at least one image"):
        build_feature_pool(micro, [], cache=False)


def test_extra_views_do_not_depend_on_chunking(micro: edgeclip.EdgeClip) -> None:
    views = ViewPolicy(extra_views=3, view_seed=4)
    a = build_feature_pool(micro, "shapes:6", views=views, cache=False, chunk=2, batch_size=1)
    b = build_feature_pool(micro, "shapes:6", views=views, cache=False, chunk=6, batch_size=4)
    assert a.embeds.shape == (6, 4, micro.bundle.embed_dim)
    torch.testing.assert_close(a.embeds, b.embeds, atol=1e-6, rtol=0)
    assert not torch.allclose(a.embeds[:, 1], a.embeds[:, 2])  # different crops
    other = build_feature_pool(micro, "shapes:6", views=ViewPolicy(extra_views=3, view_seed=5), cache=False)
    assert not torch.allclose(a.embeds[:, 1:], other.embeds[:, 1:])
    torch.testing.assert_close(a.plain, other.plain)  # the plain view does not depend on the policy


def test_cache_hit_and_key(micro: edgeclip.EdgeClip, folder: Path, tmp_path: Path, counting) -> None:
    enc = counting()
    first = build_feature_pool(micro, folder, cache=tmp_path)
    assert enc.images == 32 and len(list(tmp_path.glob("*.pool.safetensors"))) == 1
    again = build_feature_pool(micro, folder, cache=tmp_path)
    assert enc.images == 32  # read from the cache, nothing encoded
    torch.testing.assert_close(again.embeds, first.embeds, atol=0, rtol=0)
    assert again.items == first.items and again.class_names == first.class_names
    build_feature_pool(micro, folder, cache=tmp_path, views=ViewPolicy(extra_views=1))
    assert enc.images == 32 + 64  # another view policy is another key (32 plain + 32 crops)
    # a changed file (its mtime) is another key too
    victim = Path(first.items[5])
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    build_feature_pool(micro, folder, cache=tmp_path)
    assert enc.images == 96 + 32


def test_interrupted_build_resumes(micro: edgeclip.EdgeClip, tmp_path: Path, counting) -> None:
    enc = counting(fail_after=3)  # three chunks of 8 images get through, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        build_feature_pool(micro, "shapes:40", cache=tmp_path, chunk=8, batch_size=8)
    assert enc.images == 24 and len(list(tmp_path.glob("*.partial/*.safetensors"))) == 3
    enc = counting()
    pool = build_feature_pool(micro, "shapes:40", cache=tmp_path, chunk=8, batch_size=8)
    assert enc.images == 16  # only the two missing chunks
    assert not list(tmp_path.glob("*.partial"))  # the partial folder is gone once the pool is complete
    whole = build_feature_pool(micro, "shapes:40", cache=False)
    torch.testing.assert_close(pool.embeds, whole.embeds, atol=1e-6, rtol=0)


def test_bad_image_is_named(micro: edgeclip.EdgeClip, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "ok.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"ok\.png"):
        build_feature_pool(micro, root, cache=False)


def test_save_load_split_subset_and_foreign_bundle(micro: edgeclip.EdgeClip, tmp_path: Path,
                                                   tiny_bundle: Path) -> None:
    pool = build_feature_pool(micro, "shapes:48", cache=False)
    path = pool.save(tmp_path / "p.safetensors")
    back = FeaturePool.load(path)
    assert torch.equal(back.embeds, pool.embeds) and back.items == pool.items and back.meta == pool.meta
    rest, held = pool.split(0.25, seed=0)
    assert len(rest) + len(held) == 48 and set(rest.items).isdisjoint(held.items)
    assert np.bincount(held.labels.numpy(), minlength=16).min() >= 1  # every class held out at least once
    back.check_compatible(micro)
    tiny = edgeclip.load(tiny_bundle)
    with pytest.raises(BundleError, match=r"another model|width"):
        back.check_compatible(tiny)
    (tmp_path / "junk.safetensors").write_bytes(b"not a pool")
    with pytest.raises(BundleError, match="readable"):
        FeaturePool.load(tmp_path / "junk.safetensors")


def test_library_is_quiet(micro: edgeclip.EdgeClip, capsys: pytest.CaptureFixture[str]) -> None:
    build_feature_pool(micro, "shapes:4", cache=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
