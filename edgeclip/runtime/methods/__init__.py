"""Test-time adaptation methods, all behind `predict(images) -> Prediction`."""

from edgeclip.runtime.methods.base import FrameResult, TestTimeMethod
from edgeclip.runtime.methods.frames import as_frame, kernel_views
from edgeclip.runtime.methods.tpt import TPT
from edgeclip.runtime.methods.zero import Zero

__all__ = ["TPT", "FrameResult", "TestTimeMethod", "Zero", "as_frame", "kernel_views"]
