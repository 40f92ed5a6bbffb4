"""Reference implementations that edgeclip's kernels are benchmarked against (benchmarks and tests only).

Each peer does the same work the way the published test-time adaptation code does it, written from a
description of that code: `pil_views` is TPT's augmentation loop on a PIL image, `tv2_views` the same
views from torchvision's v2 functional API one view at a time, and `torch_similarity_selection` TPT's
plain PyTorch sequence from embeddings to the log mean probability of its most confident views.
"""

from edgeclip.bench.peers.tpt_reference import ReferenceTPT
from edgeclip.bench.peers.tpt_views import TorchSelection, pil_views, torch_similarity_selection, tv2_views

__all__ = ["ReferenceTPT", "TorchSelection", "pil_views", "torch_similarity_selection", "tv2_views"]
