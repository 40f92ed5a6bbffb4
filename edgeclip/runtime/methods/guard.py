"""Collapse guard for online adaptation: when one class takes over the recent predictions, reset."""

from __future__ import annotations

from collections import deque
from typing import Any

from edgeclip.errors import InputError

__all__ = ["CollapseGuard"]


class CollapseGuard:
    """Watches the predicted-class histogram over the last `window` frames.

    Online adaptation (state carried from frame to frame) can drift until every frame gets the same class.
    The guard reports a collapse once the window is full and one class holds more than `max_share` of it;
    the method then resets its adapted state and the guard starts a fresh window. Set `max_share` above the
    largest class share the stream can honestly have (a stream where one class is 70 % of frames needs
    more than 0.7).
    """

    def __init__(self, window: int = 64, max_share: float = 0.8) -> None:
        if window < 2:
            raise InputError(f"collapse window must be >= 2 frames, got {window}")
        if not 0.0 < max_share < 1.0:
            raise InputError(f"max_share must lie in (0, 1), got {max_share}")
        self.window = window
        self.max_share = max_share
        self.labels: deque[int] = deque(maxlen=window)
        self.counts: dict[int, int] = {}
        self.resets = 0

    def observe(self, label: int) -> bool:
        """Record one prediction; True when the window shows a collapse (the caller should reset)."""
        if len(self.labels) == self.window:
            old = self.labels[0]
            self.counts[old] -= 1
        self.labels.append(label)
        self.counts[label] = self.counts.get(label, 0) + 1
        if len(self.labels) < self.window:
            return False
        if max(self.counts.values()) > self.max_share * self.window:
            self.resets += 1
            self.clear()
            return True
        return False

    def clear(self) -> None:
        """Start a fresh window (the reset count is kept)."""
        self.labels.clear()
        self.counts.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "resets": self.resets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        labels = [int(x) for x in state["labels"]]
        if len(labels) > self.window:
            raise InputError(f"guard state holds {len(labels)} labels, the window is {self.window}")
        self.clear()
        for label in labels:
            self.labels.append(label)
            self.counts[label] = self.counts.get(label, 0) + 1
        self.resets = int(state["resets"])
