"""Export: open_clip model -> ONNX graphs + text tower weights + manifest (a bundle)."""

from edgeclip.export.bundle_writer import ExportResult, export_bundle

__all__ = ["ExportResult", "export_bundle"]
