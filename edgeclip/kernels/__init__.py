"""Per-frame kernels: one file per kernel, the same signature on every device.

`augment_views` (one frame -> N normalised views), `cosine_logits` (scale * cos, differentiable) and
`select_confident` (softmax, entropy, the most confident views, log mean probability). CPU tensors take the
PyTorch path (for `augment_views`, a compiled C kernel when one can be built); CUDA tensors take the Triton
kernels in `edgeclip.kernels.cuda`, which are imported only then, or the CPU path with one warning where Triton
is unavailable (`edgeclip.kernels.dispatch`).
"""

from edgeclip.kernels.augment_views import CLIP_MEAN, CLIP_STD, augment_views
from edgeclip.kernels.cosine_logits import cosine_logits
from edgeclip.kernels.select_confident import Confident, select_confident
from edgeclip.kernels.view_boxes import sample_boxes

__all__ = ["CLIP_MEAN", "CLIP_STD", "Confident", "augment_views", "cosine_logits", "sample_boxes", "select_confident"]
