"""Versions and machine facts recorded in run reports, manifests and bench results."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "cpu_model", "resolve_device", "versions"]


def cache_dir() -> Path:
    """Bap's cache directory (``$BAP_CACHE_DIR`` or ``~/.cache/bap``): the suite, pretrained backbones, crash logs."""
    return Path(os.environ.get("BAP_CACHE_DIR") or Path.home() / ".cache" / "bap")


def versions(*extra: str) -> dict[str, str]:
    """Installed versions of bap and the libraries whose behaviour its artifacts depend on."""
    out = {"bap": _v("bap"), "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "numpy", *extra):
        out[pkg] = _v(pkg)
    return out


def _v(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        if pkg == "onnxruntime":
            for alt in ("onnxruntime-gpu", "onnxruntime-openvino"):
                try:
                    return md.version(alt)
                except md.PackageNotFoundError:
                    continue
        return "absent"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is a user error."""
    import torch

    from bap.errors import UnsupportedDeviceError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedDeviceError("--device cuda but no CUDA GPU is visible to PyTorch", "use --device cpu or auto")
    return device


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs, OS."""
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "os": platform.platform()}
