"""The micro CLIP config, preprocessing, and a tiny training run whose checkpoint open_clip loads."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from edgeclip.data.shapes import make_batch
from edgeclip.errors import InputError
from edgeclip.micro import MICRO_MODEL_NAME, register_micro_config
from edgeclip.micro.train import (
    _encode_text_truncated,
    evaluate_zero_shot,
    preprocess_batch,
    train_micro,
)


def test_register_is_idempotent_and_the_model_is_small() -> None:
    assert register_micro_config() == MICRO_MODEL_NAME
    n_paths = len(open_clip.factory._MODEL_CONFIG_PATHS)
    register_micro_config()
    assert len(open_clip.factory._MODEL_CONFIG_PATHS) == n_paths
    cfg = open_clip.get_model_config(MICRO_MODEL_NAME)
    assert cfg["embed_dim"] == 128 and cfg["vision_cfg"]["image_size"] == 32
    model = open_clip.create_model(MICRO_MODEL_NAME)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 2 < 10e6  # fp16 bytes, full 49408-token table included


def test_preprocess_batch() -> None:
    images = make_batch(3, seed=0).images
    x = preprocess_batch(images)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    white = preprocess_batch(np.full((1, 64, 64, 3), 255, np.uint8))
    expected = (1 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(open_clip.OPENAI_DATASET_STD)
    torch.testing.assert_close(white[0, :, 5, 5], expected)
    with pytest.raises(InputError):
        preprocess_batch(images.astype(np.float32))
    with pytest.raises(InputError):
        preprocess_batch(images[..., :2])


def test_truncated_text_encoding_matches_open_clip() -> None:
    register_micro_config()
    torch.manual_seed(0)
    model = open_clip.create_model(MICRO_MODEL_NAME).eval()
    tok = open_clip.get_tokenizer(MICRO_MODEL_NAME)
    text = tok(["a photo of a red circle.", "a large blue cross at the bottom on a dotted mint background."])
    with torch.no_grad():
        truncated = _encode_text_truncated(model, text)
        torch.testing.assert_close(truncated, model.encode_text(text), atol=1e-5, rtol=1e-5)


def test_tiny_training_run_writes_a_checkpoint_open_clip_loads(tmp_path) -> None:
    result = train_micro(tmp_path, steps=3, batch_size=16, progress=False, log_every=1, eval_n=32)
    assert result.checkpoint == tmp_path / "edgeclip-micro.pt" and result.checkpoint.is_file()
    assert result.steps == 3 and np.isfinite(result.final_loss) and result.seconds > 0
    assert 0.0 <= result.clean_accuracy <= 1.0
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind

    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    loaded = open_clip.create_model(MICRO_MODEL_NAME, pretrained=str(result.checkpoint))
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded_state[key], value), key
    fresh = open_clip.create_model(MICRO_MODEL_NAME)
    assert not torch.equal(fresh.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])

    tok = open_clip.get_tokenizer(MICRO_MODEL_NAME)
    acc = evaluate_zero_shot(loaded, tok, n=32, shift="invert", batch_size=16)
    assert 0.0 <= acc <= 1.0


def test_train_rejects_bad_arguments(tmp_path) -> None:
    with pytest.raises(InputError):
        train_micro(tmp_path, steps=0, progress=False)


def test_non_finite_loss_steps_are_skipped(tmp_path, monkeypatch) -> None:
    import edgeclip.micro.train as train_mod

    monkeypatch.setattr(train_mod, "_clip_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    result = train_micro(tmp_path, steps=2, batch_size=4, seed=3, progress=False, eval_n=16)
    assert result.skipped_steps == 2
    torch.manual_seed(3)
    initial = open_clip.create_model(MICRO_MODEL_NAME).state_dict()
    saved = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in initial.items())
