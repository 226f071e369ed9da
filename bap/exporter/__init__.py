"""``bap export``: one compact multi-domain ONNX model (and a TensorRT engine), validated before it is published.

Public API: :class:`ExportConfig`, :func:`export`, :func:`read_manifest`.
"""

from bap.exporter.config import ExportConfig

__all__ = ["ExportConfig", "export", "read_manifest"]


def export(cfg: ExportConfig, callback=None):
    """Export as configured (see :func:`bap.exporter.pipeline.export`)."""
    from bap.exporter.pipeline import export as _export

    return _export(cfg, callback)


def read_manifest(path):
    """Read and validate a manifest (see :func:`bap.exporter.manifest.read_manifest`)."""
    from bap.exporter.manifest import read_manifest as _read

    return _read(path)
