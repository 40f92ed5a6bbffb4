"""The micro CLIP: a tiny open_clip architecture and the script that trains it on the shapes dataset."""

from __future__ import annotations

from edgeclip.micro.config import MICRO_CONFIG_PATH, MICRO_MODEL_NAME, register_micro_config

__all__ = ["MICRO_CONFIG_PATH", "MICRO_MODEL_NAME", "register_micro_config"]
