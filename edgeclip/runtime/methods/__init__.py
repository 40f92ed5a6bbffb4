"""Every method behind one contract (`Method`: ``predict(images) -> Prediction``, ``reset``, ``state_dict``) and
one factory (`create_method`); see `edgeclip.runtime.methods.base`."""

from edgeclip.runtime.methods.base import FitReport, FrameResult, Method, Trainable, ViewMethod
from edgeclip.runtime.methods.config import GuardConfig, ViewConfig, configure
from edgeclip.runtime.methods.coop import CoOp, CoOpConfig
from edgeclip.runtime.methods.frames import as_frame, kernel_views
from edgeclip.runtime.methods.online_prototypes import OnlinePrototypes, OnlinePrototypesConfig
from edgeclip.runtime.methods.promptsync import PromptSync, PromptSyncConfig
from edgeclip.runtime.methods.registry import create_method, list_methods, method_class, register_method
from edgeclip.runtime.methods.tpt import TPT, TPTConfig
from edgeclip.runtime.methods.zero import Zero, ZeroConfig
from edgeclip.runtime.methods.zeroshot import ZeroShot, ZeroShotConfig

__all__ = [
    "TPT",
    "CoOp",
    "CoOpConfig",
    "FitReport",
    "FrameResult",
    "GuardConfig",
    "Method",
    "OnlinePrototypes",
    "OnlinePrototypesConfig",
    "PromptSync",
    "PromptSyncConfig",
    "TPTConfig",
    "Trainable",
    "ViewConfig",
    "ViewMethod",
    "Zero",
    "ZeroConfig",
    "ZeroShot",
    "ZeroShotConfig",
    "as_frame",
    "configure",
    "create_method",
    "kernel_views",
    "list_methods",
    "method_class",
    "register_method",
]
