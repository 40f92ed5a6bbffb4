"""`edgeclip bench kernels` and its TPT-style peers, at tiny sizes.

No assertion here is about speed: only the structure of the results, that every figure is finite, that
the peers compute what edgeclip's kernels compute, and that the CLI writes its report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from edgeclip.bench import bench_kernels
from edgeclip.bench.kernels import COLUMNS, noisy_frame
from edgeclip.bench.peers import pil_views, torch_similarity_selection, tv2_views
from edgeclip.cli import main
from edgeclip.errors import BackendError
from edgeclip.kernels import cosine_logits, select_confident
from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD, augment_views
from edgeclip.kernels.view_boxes import sample_boxes

TINY = {"frames": ((120, 160),), "n_views": 8, "size": 32, "classes": (10,), "dims": (16,)}
TINY_ARGS = ["--frames", "120x160", "--views", "8", "--size", "32", "--classes", "10", "--dims", "16"]
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _pixels(views: torch.Tensor) -> torch.Tensor:
    """Normalised views -> [0, 255] pixel values."""
    return (views * _STD + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255.0


# -- peers --------------------------------------------------------------------------------------
def test_pil_views_shape_and_plain_view() -> None:
    image = Image.fromarray(noisy_frame(60, 90, seed=1).numpy())
    views = pil_views(image, n_views=5, size=32, generator=torch.Generator().manual_seed(0))
    assert views.shape == (5, 3, 32, 32) and views.dtype == torch.float32
    clip = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(views[0], clip(image), rtol=0, atol=0)
    # a seeded generator gives the same views and leaves the global random state alone
    state = torch.get_rng_state()
    again = pil_views(image, n_views=5, size=32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(views, again) and torch.equal(state, torch.get_rng_state())
    assert not torch.equal(views[1], views[2])  # the other views are random crops


def test_tv2_and_pil_views_match_augment_views_on_the_same_boxes() -> None:
    frame = noisy_frame(120, 160, seed=2)  # (H, W, 3) uint8
    boxes = sample_boxes(120, 160, 8, generator=torch.Generator().manual_seed(3))
    ours, used = augment_views(frame, size=32, boxes=boxes)
    assert torch.equal(used, boxes)
    tv2 = tv2_views(frame.permute(2, 0, 1).contiguous(), boxes, 32)
    pil = pil_views(Image.fromarray(frame.numpy()), size=32, boxes=boxes)
    for peer in (tv2, pil):
        assert peer.shape == ours.shape == (8, 3, 32, 32) and peer.dtype == torch.float32
        diff = (_pixels(ours) - _pixels(peer)).abs()
        assert float(diff.mean()) < 1.0  # within 1/255 on average: only 8-bit rounding differs
        assert float(diff.max()) < 4.0
    with pytest.raises(ValueError, match="uint8"):
        tv2_views(frame, boxes, 32)  # H×W×3 is not tv2's layout


def test_torch_similarity_selection_matches_kernels() -> None:
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(16, 24, generator=g), torch.randn(7, 24, generator=g)
    ref = torch_similarity_selection(image, text, scale=100.0, rho=0.25)
    ours = select_confident(cosine_logits(image, text, 100.0), 0.25)
    torch.testing.assert_close(ref.logits, cosine_logits(image, text, 100.0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ref.probs, ours.probs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ref.entropy, ours.entropy, rtol=1e-4, atol=1e-5)
    assert ref.index.tolist() == ours.index.tolist() and ref.index.numel() == 4
    torch.testing.assert_close(ref.log_mean_prob, ours.log_mean_prob, rtol=1e-4, atol=1e-4)


# -- bench --------------------------------------------------------------------------------------
def _check_results(res: dict, device: str = "cpu") -> None:
    rows = res["rows"]
    assert res["bench"] == "kernels" and res["columns"] == COLUMNS
    assert res["config"]["device"] == device and res["machine"]["threads"] == res["config"]["threads"]
    assert [(r["case"], r["impl"].split(":")[0]) for r in rows] == [
        ("augment_views", "edgeclip"), ("augment_views", "PIL loop (TPT)"), ("augment_views", "tv2 per view"),
        ("cosine+select", "edgeclip"), ("cosine+select", "torch ops (TPT)")]
    for r in rows:
        assert r["n"] == 2 == len(r["samples_ms"])
        for key in ("median_ms", "p90_ms", "mean_ms", "min_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["impl"], key)
        if r["impl"].startswith("edgeclip"):
            assert r["speedup"] is None and r["parity_mean"] is None
            continue
        for key in ("speedup", "speedup_p90", "speedup_lo", "speedup_hi"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["impl"], key)
        assert r["speedup_lo"] <= r["speedup_hi"]
        assert 0 <= r["parity_mean"] <= r["parity_max"]
        if r["case"] == "augment_views":
            assert r["parity_mean"] < 1 / 255 and r["parity_max"] < 4 / 255  # [0, 1] pixel units
            assert r["frame"] == [120, 160] and r["size"] == 32
        else:
            assert r["parity_max"] < 1e-4 and r["same_index"] is True  # nats
            assert (r["classes"], r["dim"]) == (10, 16)


def test_bench_kernels_tiny() -> None:
    calls: list[tuple[int, int, str]] = []
    res = bench_kernels(**TINY, threads=1, warmup=1, repeats=2, time_budget_s=5.0,
                        progress=lambda done, total, desc: calls.append((done, total, desc)))
    _check_results(res)
    assert res["config"]["threads"] == 1
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]


def test_bench_kernels_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="device"):
        bench_kernels(**TINY, device="tpu", progress=False)
    with pytest.raises(ValueError, match="n_views"):
        bench_kernels(**{**TINY, "n_views": 0}, progress=False)
    with pytest.raises(ValueError, match="nothing to time"):
        bench_kernels(frames=(), classes=(), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            bench_kernels(**TINY, device="cuda", progress=False)


def test_cli_bench_kernels_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    rc = main(["bench", "kernels", "--quick", "--repeats", "2", "--threads", "1", "--out", str(out), *TINY_ARGS])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["kernels.json", "kernels.md"]
    data = json.loads((out / "kernels.json").read_text())
    assert data["name"] == "kernels" and data["config"]["warmup"] == 1 and data["machine"]["threads"] == 1
    _check_results(data)
    md = (out / "kernels.md").read_text()
    printed = capsys.readouterr().out
    assert "| augment_views" in md and "tv2 per view" in md and md in printed and "wrote" in printed
    with pytest.raises(SystemExit):
        main(["bench", "kernels", "--frames", "120by160"])


@pytest.mark.gpu
def test_bench_kernels_cuda_tiny() -> None:
    res = bench_kernels(**TINY, device="cuda", warmup=1, repeats=2, time_budget_s=5.0, progress=False)
    _check_results(res, device="cuda")
    assert {r["device"] for r in res["rows"] if r["impl"] == "PIL loop (TPT)"} == {"cpu"}


def test_view_accuracy_cli_writes_reports(tmp_path) -> None:
    from edgeclip.cli import main

    assert main(["bench", "view-accuracy", "--n", "2", "--threads", "1", "--out", str(tmp_path), "--json"]) == 0
    import json

    data = json.loads((tmp_path / "view-accuracy.json").read_text())
    mean = data["rows"][-1]
    assert mean["shift"] == "mean" and mean["n"] == 2 * 7
    assert 0 <= mean["tpt_kernel"] <= 100 and 0 <= mean["same_prediction"] <= 100
    assert (tmp_path / "view-accuracy.md").exists()
