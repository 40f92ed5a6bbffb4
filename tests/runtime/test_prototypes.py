"""Class prototypes (build from a folder or a procedural spec, save/load, validation), the prototype bank, and
the `prototypes build` CLI verb."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import edgeclip
from edgeclip.cli_prototypes import add_parser, cmd_prototypes_build
from edgeclip.data import shapes
from edgeclip.errors import BundleError, ClassNameError, EdgeClipError, InputError
from edgeclip.micro.train import EVAL_SEED
from edgeclip.runtime.manifest import manifest_digest
from edgeclip.runtime.prototype_bank import PrototypeBank
from edgeclip.runtime.prototypes import (
    PROTOTYPE_SEED,
    ClassPrototypes,
    build_prototypes,
    default_prototypes_path,
    procedural_batches,
    resolve_prototypes,
    text_fallback,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes.save_image_folder(tmp_path_factory.mktemp("protos") / "data", n_per_class=2, seed=5)


@pytest.fixture(scope="module")
def built(micro: edgeclip.EdgeClip, folder: Path) -> ClassPrototypes:
    return build_prototypes(micro, folder, progress=False)


def _unit_rows(x: torch.Tensor) -> None:
    torch.testing.assert_close(x.norm(dim=1), torch.ones(x.shape[0]), atol=1e-5, rtol=0)


# -- building --------------------------------------------------------------------------------------------
def test_build_from_folder_is_the_normalised_class_mean(micro: edgeclip.EdgeClip, folder: Path,
                                                        built: ClassPrototypes) -> None:
    names = shapes.class_names()
    assert built.class_names == names  # classnames.txt gives the label order, not the sorted folder order
    assert built.counts.tolist() == [2] * len(names)
    assert built.embeds.shape == (16, micro.bundle.embed_dim) and built.embeds.dtype == torch.float32
    _unit_rows(built.embeds)
    for c in (0, 7, 15):
        paths = sorted((folder / names[c].replace(" ", "_")).glob("*.png"))
        emb = micro.encode_images(paths).float()
        torch.testing.assert_close(built.embeds[c], F.normalize(emb.mean(0), dim=0), atol=1e-5, rtol=0)
    manifest = micro.bundle.manifest
    assert built.kind == "images"
    assert built.meta["source"]["type"] == "image_folder" and built.meta["source"]["images"] == 32
    assert built.meta["image_encoder_sha256"] == manifest["files"]["image_encoder.onnx"]["sha256"]
    assert built.meta["bundle_manifest_sha256"] == manifest_digest(manifest)  # the manifest's content
    assert built.meta["versions"]["edgeclip"] == edgeclip.__version__ and built.meta["created"].endswith("Z")
    built.check_compatible(micro, names)


def test_folder_names_order_and_subset(micro: edgeclip.EdgeClip, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("zebra_stripe", "apple"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    protos = build_prototypes(micro, tmp_path, progress=False, batch_size=3)
    assert protos.class_names == ["apple", "zebra stripe"]  # sorted folders, underscores read as spaces
    picked = build_prototypes(micro, str(tmp_path), class_names=["Zebra Stripe"], progress=False)
    assert picked.class_names == ["Zebra Stripe"]
    torch.testing.assert_close(picked.embeds[0], protos.embeds[1])


def test_build_from_procedural_spec(micro: edgeclip.EdgeClip) -> None:
    a = build_prototypes(micro, "shapes:32", progress=False)
    assert a.class_names == shapes.class_names() and a.counts.tolist() == [2] * 16
    _unit_rows(a.embeds)
    src = a.meta["source"]
    assert (src["type"], src["n"], src["shift"], src["seed"]) == ("procedural", 32, "clean", PROTOTYPE_SEED)
    sub = build_prototypes(micro, "shapes:5:blur", class_names=["blue square", "red circle"], progress=False)
    assert sub.class_names == ["blue square", "red circle"] and sub.counts.tolist() == [3, 2]
    assert sub.meta["source"]["shift"] == "blur"
    again = build_prototypes(micro, "shapes:32", progress=False)
    assert torch.equal(a.embeds, again.embeds)  # deterministic
    other = build_prototypes(micro, "shapes:32", progress=False, seed=PROTOTYPE_SEED + 1)
    assert not torch.equal(a.embeds, other.embeds)


def test_proxy_images_never_meet_the_evaluation_stream() -> None:
    labels = np.arange(16)
    proxy = np.concatenate([img for img, _ in procedural_batches(600, labels, chunk=256)])
    assert proxy.shape[0] == 600
    evaluation = np.concatenate([shapes.make_batch(64, seed=EVAL_SEED + k).images for k in range(4)])
    seen = {img.tobytes() for img in evaluation}
    assert not any(img.tobytes() in seen for img in proxy)
    assert len({img.tobytes() for img in proxy}) == 600


# -- files -----------------------------------------------------------------------------------------------
def test_save_load_round_trip(built: ClassPrototypes, tmp_path: Path) -> None:
    path = built.save(tmp_path / "sub" / "p.prototypes.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.prototypes.safetensors"]  # no temp file left
    back = ClassPrototypes.load(path)
    assert torch.equal(back.embeds, built.embeds) and torch.equal(back.counts, built.counts)
    assert back.class_names == built.class_names and back.meta == json.loads(json.dumps(built.meta))
    built.save(path)  # overwriting goes through the same atomic rename
    assert ClassPrototypes.load(path).class_names == built.class_names


def test_default_path_is_beside_the_bundle() -> None:
    assert default_prototypes_path("/m/micro.bundle") == Path("/m/micro.prototypes.safetensors")
    assert default_prototypes_path("/m/vitb16/") == Path("/m/vitb16.prototypes.safetensors")


def test_text_fallback_and_resolve(micro: edgeclip.EdgeClip, built: ClassPrototypes) -> None:
    names = ["red circle", "blue cross"]
    text = text_fallback(micro, names)
    assert text.kind == "text" and text.counts.tolist() == [0, 0]
    torch.testing.assert_close(text.embeds, micro.encode_text([f"a photo of a {n}." for n in names]).float())
    text.check_compatible(micro, names)
    # no file beside the embedded bundle: resolve falls back to the text embeddings
    if not default_prototypes_path(micro.bundle.path).exists():
        assert resolve_prototypes(micro, names).kind == "text"


def test_aligned_reorders_and_subsets(built: ClassPrototypes) -> None:
    sub = built.aligned(["BLUE square", "red circle"])
    assert sub.class_names == ["BLUE square", "red circle"]
    assert torch.equal(sub.embeds, built.embeds[[9, 0]]) and sub.counts.tolist() == [2, 2]
    with pytest.raises(ClassNameError, match="no prototype"):
        built.aligned(["purple blob"])


# -- bad input -------------------------------------------------------------------------------------------
def test_bad_sources(micro: edgeclip.EdgeClip, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_prototypes(micro, tmp_path / "missing", progress=False)
    with pytest.raises(InputError, match="no class sub-folders"):
        build_prototypes(micro, tmp_path, progress=False)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    with pytest.raises(InputError, match=r"'dog'.*holds no images"):
        build_prototypes(micro, tmp_path, progress=False)
    with pytest.raises(InputError, match="have no folder"):
        build_prototypes(micro, tmp_path, class_names=["cat", "cow"], progress=False)
    with pytest.raises(InputError, match="at least 16"):
        build_prototypes(micro, "shapes:8", progress=False)
    with pytest.raises(InputError, match="positive integer"):
        build_prototypes(micro, "shapes:many", progress=False)
    with pytest.raises(InputError, match="unknown shift"):
        build_prototypes(micro, "shapes:32:fog", progress=False)
    with pytest.raises(ClassNameError, match="not shapes classes"):
        build_prototypes(micro, "shapes:32", class_names=["red circle", "dog"], progress=False)
    with pytest.raises(InputError, match="batch_size"):
        build_prototypes(micro, "shapes:32", batch_size=0, progress=False)


def test_corrupt_and_foreign_files(built: ClassPrototypes, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        ClassPrototypes.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file" * 10)
    with pytest.raises(BundleError, match="not a readable safetensors"):
        ClassPrototypes.load(junk)
    good = built.save(tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(BundleError, match="not a readable safetensors"):
        ClassPrototypes.load(cut)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"embeds": built.embeds}, str(foreign))
    with pytest.raises(BundleError, match="not an edgeclip prototypes file"):
        ClassPrototypes.load(foreign)
    header = {"format": "edgeclip.prototypes", "format_version": "1", "meta": "{}",
              "class_names": json.dumps(built.class_names)}
    nan = built.embeds.clone()
    nan[3, 0] = float("nan")
    save_file({"embeds": nan, "counts": built.counts}, str(tmp_path / "nan.safetensors"), header)
    with pytest.raises(BundleError, match="NaN"):
        ClassPrototypes.load(tmp_path / "nan.safetensors")
    save_file({"embeds": built.embeds * 2, "counts": built.counts}, str(tmp_path / "scaled.safetensors"), header)
    with pytest.raises(BundleError, match="not unit vectors"):
        ClassPrototypes.load(tmp_path / "scaled.safetensors")
    save_file({"embeds": built.embeds, "counts": built.counts}, str(tmp_path / "names.safetensors"),
              {**header, "class_names": json.dumps(built.class_names[:-1])})
    with pytest.raises(BundleError, match="15 class names for 16"):
        ClassPrototypes.load(tmp_path / "names.safetensors")
    save_file({"embeds": built.embeds, "counts": built.counts}, str(tmp_path / "v9.safetensors"),
              {**header, "format_version": "9"})
    with pytest.raises(BundleError, match="upgrade edgeclip"):
        ClassPrototypes.load(tmp_path / "v9.safetensors")


def test_mismatched_model_or_classes(micro: edgeclip.EdgeClip, built: ClassPrototypes) -> None:
    narrow = ClassPrototypes(torch.randn(16, 64), built.class_names)
    with pytest.raises(BundleError, match=r"width 64.*embeds to 128"):
        narrow.check_compatible(micro)
    names = shapes.class_names()
    with pytest.raises(ClassNameError, match="missing"):
        built.check_compatible(micro, [*names[:-1], "purple blob"])
    with pytest.raises(ClassNameError, match="another order"):
        built.check_compatible(micro, list(reversed(names)))
    other = ClassPrototypes(built.embeds, names, built.counts, {**built.meta, "image_encoder_sha256": "ab" * 32})
    with pytest.raises(BundleError, match="another model"):
        other.check_compatible(micro)
    other.check_compatible(micro, strict=False)  # only logged
    with pytest.raises(InputError, match="NaN"):
        ClassPrototypes(torch.full((2, 4), float("nan")), ["a", "b"])
    with pytest.raises(ClassNameError, match="3 class names for 2"):
        ClassPrototypes(torch.randn(2, 4), ["a", "b", "c"])
    with pytest.raises(ClassNameError, match="duplicate"):
        ClassPrototypes(torch.randn(2, 4), ["a", "A"])


# -- the bank --------------------------------------------------------------------------------------------
def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_bank_keeps_the_k_most_confident_per_class() -> None:
    bank = PrototypeBank(n_classes=2, dim=3, capacity=3)
    e = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1])
    assert bank.add(e[:3], torch.tensor([0, 0, 0]), torch.tensor([5.0, 4.0, 3.0])) == 3
    assert bank.counts().tolist() == [3, 0]
    assert bank.scores[0].tolist() == [3.0, 4.0, 5.0]  # slots sorted, most confident first
    assert bank.add(e[3:4], torch.tensor([0]), torch.tensor([6.0])) == 0  # worse than every entry: dropped
    assert bank.add(e[3:4], torch.tensor([0]), torch.tensor([5.0])) == 0  # a tie keeps the older entry
    assert bank.add(e[4:5], torch.tensor([0]), torch.tensor([1.0])) == 1  # replaces the worst (score 5)
    assert bank.scores[0].tolist() == [1.0, 3.0, 4.0]
    torch.testing.assert_close(bank.keys[0], torch.stack([e[4], e[2], e[1]]))
    assert bank.counts().tolist() == [3, 0] and len(bank) == 3
    # a batch with several classes gives the same cache as one-by-one adds
    one, batch = PrototypeBank(2, 3, 2), PrototypeBank(2, 3, 2)
    labels, scores = torch.tensor([1, 0, 1, 1, 0, 0]), torch.tensor([0.9, 0.5, 0.2, 0.4, 0.7, 0.1])
    for i in range(6):
        one.add(e[i : i + 1], labels[i : i + 1], scores[i : i + 1])
    batch.add(e, labels, scores)
    for name in ("keys", "scores", "valid"):
        assert torch.equal(getattr(one, name), getattr(batch, name))
    torch.testing.assert_close(batch.scores, torch.tensor([[0.1, 0.5], [0.2, 0.4]]))


def test_bank_refuses_bad_entries() -> None:
    bank = PrototypeBank(2, 3, 2)
    bad = torch.tensor([[float("nan"), 0, 0], [1, 0, 0], [0, 1, 0]])
    assert bank.add(bad, torch.tensor([0, 1, 1]), torch.tensor([0.1, float("inf"), 0.3])) == 1
    assert bank.skipped == 2 and bank.counts().tolist() == [0, 1]
    with pytest.raises(InputError, match=r"embeds \[M, 3\]"):
        bank.add(torch.ones(1, 4), torch.tensor([0]), torch.tensor([0.0]))
    with pytest.raises(InputError, match="labels must lie"):
        bank.add(torch.ones(1, 3), torch.tensor([2]), torch.tensor([0.0]))
    with pytest.raises(InputError, match="labels"):
        bank.add(torch.ones(2, 3), torch.tensor([0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match="capacity"):
        PrototypeBank(2, 3, 0)


def test_bank_memory_is_constant_over_a_long_stream() -> None:
    bank = PrototypeBank(n_classes=10, dim=32, capacity=4)
    nbytes, ptrs = bank.state_nbytes(), [t.data_ptr() for t in (bank.keys, bank.scores, bank.valid)]
    assert nbytes == 10 * 4 * 32 * 4 + 10 * 4 * 4 + 10 * 4
    g = torch.Generator().manual_seed(0)
    all_labels, all_scores = [], []
    for _ in range(500):
        labels, scores = torch.randint(0, 10, (3,), generator=g), torch.rand(3, generator=g)
        bank.add(torch.randn(3, 32, generator=g), labels, scores)
        all_labels.append(labels)
        all_scores.append(scores)
    assert bank.offered == 1500 and len(bank) == 40
    assert bank.state_nbytes() == nbytes
    assert [t.data_ptr() for t in (bank.keys, bank.scores, bank.valid)] == ptrs
    assert bank.keys.shape == (10, 4, 32)
    # what survives is each class's 4 lowest scores of everything offered
    labels, scores = torch.cat(all_labels), torch.cat(all_scores)
    for c in range(10):
        assert torch.equal(bank.scores[c], scores[labels == c].sort().values[:4])
    bank.reset()
    assert len(bank) == 0 and bank.state_nbytes() == nbytes and bank.to("cpu") is bank


def test_affinity_logits_match_a_direct_sum() -> None:
    g = torch.Generator().manual_seed(1)
    bank = PrototypeBank(n_classes=4, dim=8, capacity=3)
    entries = F.normalize(torch.randn(7, 8, generator=g), dim=1)
    labels = torch.tensor([0, 0, 2, 2, 2, 2, 0])
    bank.add(entries, labels, torch.rand(7, generator=g))
    x = torch.randn(5, 8, generator=g)
    beta = 5.5
    expected = torch.zeros(5, 4)
    for c in range(4):
        for k in range(3):
            if bank.valid[c, k]:
                cos = F.normalize(x, dim=1) @ bank.keys[c, k]
                expected[:, c] += torch.exp(-beta * (1 - cos))
    got = bank.affinity_logits(x, beta=beta)
    torch.testing.assert_close(got, expected)
    assert bool((got[:, [1, 3]] == 0).all())  # empty classes contribute nothing


def test_bank_prototypes_blend_the_prior() -> None:
    bank = PrototypeBank(n_classes=3, dim=4, capacity=2)
    prior = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    torch.testing.assert_close(bank.prototypes(prior), prior)  # empty: the prior
    assert bool((bank.prototypes() == 0).all())  # empty, no prior: zero rows
    e = _unit([1, 0, 0, 0], [0, 1, 0, 0])
    bank.add(e, torch.tensor([1, 1]), torch.tensor([0.1, 0.2]))
    got = bank.prototypes(prior, prior_weight=0.5)
    torch.testing.assert_close(got[1], F.normalize(0.5 * prior[1] + e.sum(0), dim=0))
    torch.testing.assert_close(got[[0, 2]], prior[[0, 2]])
    torch.testing.assert_close(bank.prototypes()[1], F.normalize(e.sum(0), dim=0))
    torch.testing.assert_close(bank.prototypes(prior)[1], F.normalize(2 * prior[1] + e.sum(0), dim=0))
    state = bank.state_dict()
    bank.reset()
    bank.load_state_dict(state)
    assert bank.counts().tolist() == [0, 2, 0]
    with pytest.raises(InputError, match="prior prototypes"):
        bank.prototypes(torch.zeros(2, 4))


# -- CLI -------------------------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeclip")
    add_parser(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(argv)


def test_cli_build(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.safetensors"
    args = _parse(["prototypes", "build", "--bundle", str(edgeclip.default_bundle()), "--data", "shapes:32",
                   "--out", str(out), "--backend", "torch", "--json"])
    assert args.func is cmd_prototypes_build
    assert cmd_prototypes_build(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["path"] == str(out) and payload["images"] == 32 and len(payload["classes"]) == 16
    assert payload["counts"]["red circle"] == 2 and payload["source"]["type"] == "procedural"
    assert ClassPrototypes.load(out).class_names == shapes.class_names()
    with pytest.raises(EdgeClipError, match="--overwrite"):
        cmd_prototypes_build(args)
    # the embedded bundle lives in the package: the default output goes to the current folder
    monkeypatch.chdir(tmp_path)
    args = _parse(["prototypes", "build", "--data", "shapes:16", "--classes", "red circle,blue cross",
                   "--backend", "torch"])
    assert cmd_prototypes_build(args) == 0
    text = capsys.readouterr().out
    assert "wrote micro.prototypes.safetensors" in text and "2 classes, 8 images per class" in text
    assert ClassPrototypes.load(tmp_path / "micro.prototypes.safetensors").class_names == ["red circle", "blue cross"]
