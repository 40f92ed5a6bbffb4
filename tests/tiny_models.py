"""Tiny open_clip architectures of every family the exporter supports, registered for tests."""

from __future__ import annotations

import json
from pathlib import Path

TINY_CONFIGS = {
    "test-tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "test-tiny-rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    # bidirectional text tower in a CustomTextCLIP with a timm image tower, as MobileCLIP
    "test-tiny-mobile": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "fastvit_t8", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True},
        "custom_text": True,
    },
    # EOS-id pooling instead of argmax
    "test-tiny-eos": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "pool_type": "eos", "eos_id": 49407},
        "custom_text": True,
    },
}


def register_tiny_configs(tmp_dir: Path) -> list[str]:
    import open_clip

    tmp_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in TINY_CONFIGS.items():
        (tmp_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_dir)
    return list(TINY_CONFIGS)
