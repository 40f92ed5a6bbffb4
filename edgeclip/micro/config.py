"""The micro CLIP architecture: an open_clip model config shipped with edgeclip and registered by name."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip

__all__ = ["MICRO_CONFIG_PATH", "MICRO_MODEL_NAME", "register_micro_config"]

logger = logging.getLogger(__name__)

#: The open_clip architecture name of the micro CLIP (the stem of its config file).
MICRO_MODEL_NAME = "edgeclip-micro"
#: The open_clip model config: ViT 32 px / patch 4 / width 128 / 4 layers; text width 64 / 3 layers.
MICRO_CONFIG_PATH = Path(__file__).with_name(f"{MICRO_MODEL_NAME}.json")


def register_micro_config() -> str:
    """Register the micro CLIP config with open_clip (idempotent) and return its model name.

    After this, ``open_clip.create_model(MICRO_MODEL_NAME)`` builds a randomly initialised micro CLIP,
    ``open_clip.create_model(MICRO_MODEL_NAME, pretrained="path/to/state_dict.pt")`` loads a checkpoint,
    and ``open_clip.get_tokenizer(MICRO_MODEL_NAME)`` returns the standard CLIP BPE tokenizer.
    """
    if MICRO_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MICRO_CONFIG_PATH)
        logger.debug("registered open_clip model config %s from %s", MICRO_MODEL_NAME, MICRO_CONFIG_PATH)
    return MICRO_MODEL_NAME
