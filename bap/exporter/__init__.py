"""``bap export``: one compact multi-domain ONNX model (and TensorRT engines), validated before it is published.

Public API: :class:`ExportConfig`, :func:`export` (returns an :class:`~bap.exporter.pipeline.ExportResult` whose
``manifest`` is a :class:`Manifest`), :func:`read_manifest`. Importing this package does not import torch or onnx.
"""

from bap.exporter.config import ExportConfig
from bap.exporter.manifest import Manifest, read_manifest

__all__ = ["ExportConfig", "Manifest", "export", "read_manifest"]


def export(cfg: ExportConfig, callback=None):
    """Export as configured (see :func:`bap.exporter.pipeline.export`)."""
    from bap.exporter.pipeline import export as _export

    return _export(cfg, callback)
