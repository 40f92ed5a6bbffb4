"""Datasets: the procedural shapes dataset (``edgeclip.data.shapes``) and its domain shifts."""

from __future__ import annotations

from edgeclip.data.shapes import SHIFTS, ShapesBatch, ShapesDataset, Shift, class_names, make_batch

__all__ = ["SHIFTS", "ShapesBatch", "ShapesDataset", "Shift", "class_names", "make_batch"]
