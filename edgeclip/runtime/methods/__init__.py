"""Test-time adaptation methods, all behind `predict(images) -> Prediction`."""

from edgeclip.runtime.methods.base import FrameResult, TestTimeMethod
from edgeclip.runtime.methods.frames import as_frame, kernel_views
from edgeclip.runtime.methods.online_prototypes import OnlinePrototypes
from edgeclip.runtime.methods.promptsync import PromptSync, PromptSyncConfig
from edgeclip.runtime.methods.tpt import TPT
from edgeclip.runtime.methods.zero import Zero

__all__ = [
    "TPT",
    "FrameResult",
    "OnlinePrototypes",
    "PromptSync",
    "PromptSyncConfig",
    "TestTimeMethod",
    "Zero",
    "as_frame",
    "kernel_views",
]
