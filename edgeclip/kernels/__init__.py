"""Per-frame kernels: one file per kernel, the same signature on every device. The functions here are
the PyTorch references, which are also the CPU path."""

from edgeclip.kernels.cosine_logits import cosine_logits
from edgeclip.kernels.select_confident import Confident, select_confident

__all__ = ["Confident", "cosine_logits", "select_confident"]
