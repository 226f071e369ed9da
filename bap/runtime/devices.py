"""Bench devices behind a registry: detection, facts to record, memory probes. Off their hardware they refuse."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bap.core.registry import Registry
from bap.errors import UnsupportedDeviceError

__all__ = ["DEVICES", "cuda_present", "detect_jetson", "gpu_facts", "jetson_facts", "parse_jetson_clocks"]

DEVICES: Registry = Registry("device", "--device")


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def detect_jetson(root: str = "/") -> dict[str, str] | None:
    """Jetson identity from ``/etc/nv_tegra_release`` and the device-tree model, or ``None`` elsewhere."""
    rel = Path(root, "etc/nv_tegra_release")
    model = Path(root, "proc/device-tree/model")
    text = model.read_text(errors="ignore").strip("\x00\n ") if model.is_file() else ""
    if not rel.is_file() and "jetson" not in text.lower():
        return None
    release = rel.read_text(errors="ignore").splitlines()[0].strip() if rel.is_file() else ""
    return {"model": text or "NVIDIA Jetson", "l4t_release": release}


def cuda_present() -> bool:
    """True if an NVIDIA GPU is visible (NVML or PyTorch)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        if n > 0:
            return True
    except Exception:
        pass
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def gpu_facts() -> dict[str, Any]:
    """GPU name, driver and CUDA version (NVML when available)."""
    out: dict[str, Any] = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        out["gpu"] = name.decode() if isinstance(name, bytes) else name
        drv = pynvml.nvmlSystemGetDriverVersion()
        out["driver"] = drv.decode() if isinstance(drv, bytes) else drv
        pynvml.nvmlShutdown()
    except Exception:
        try:
            import torch

            if torch.cuda.is_available():
                out["gpu"] = torch.cuda.get_device_name(0)
                out["cuda"] = torch.version.cuda
        except ImportError:
            pass
    return out


def parse_jetson_clocks(text: str) -> str:
    """Whether ``jetson_clocks --show`` output shows locked clocks (``MinFreq == MaxFreq`` on every line).

    Returns ``locked``, ``not locked``, or ``unknown`` when the output has no frequency lines.
    """
    pairs = [
        (line.split("MinFreq=")[1].split()[0], line.split("MaxFreq=")[1].split()[0])
        for line in text.splitlines()
        if "MinFreq=" in line and "MaxFreq=" in line
    ]
    if not pairs:
        return "unknown"
    return "locked" if all(a == b for a, b in pairs) else "not locked"


def jetson_facts() -> dict[str, Any]:
    """Model, L4T release, nvpmodel mode and jetson_clocks state (warns when clocks are not locked)."""
    info: dict[str, Any] = dict(detect_jetson() or {})
    nvp = _run(["nvpmodel", "-q"])
    if nvp:
        info["nvpmodel"] = " ".join(nvp.split())
    clocks = _run(["jetson_clocks", "--show"])
    info["jetson_clocks"] = (
        parse_jetson_clocks(clocks) if clocks is not None else "unknown (jetson_clocks not found or needs sudo)"
    )
    return info


class CpuDevice:
    """The host CPU (ONNX Runtime CPU execution provider)."""

    name = "cpu"
    backends = ("ort",)

    def available(self) -> bool:
        """Always present."""
        return True

    def check(self) -> None:
        """Always present."""

    def facts(self) -> dict[str, Any]:
        """CPU model and cores."""
        from bap.core.env import cpu_model

        return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "os": platform.platform()}


class CudaDevice:
    """A desktop NVIDIA GPU: ONNX Runtime CUDA/TensorRT EP or a TensorRT engine; memory via NVML."""

    name = "cuda"
    backends = ("ort", "trt")

    def available(self) -> bool:
        """Whether an NVIDIA GPU is visible here."""
        return cuda_present()

    def check(self) -> None:
        """Refuse (one line, exit 2) without a GPU: no silent CPU fallback."""
        if not self.available():
            raise UnsupportedDeviceError(
                "--device cuda but no NVIDIA GPU is visible", "run on a GPU machine or use --device cpu"
            )

    def facts(self) -> dict[str, Any]:
        """GPU facts plus the CPU's."""
        return {**CpuDevice().facts(), **gpu_facts()}


class JetsonDevice:
    """An NVIDIA Jetson: TensorRT (or ORT's TensorRT EP), tegrastats for RAM / GPU load / board power."""

    name = "jetson"
    backends = ("trt", "ort")

    def available(self) -> bool:
        """Whether this machine is a Jetson."""
        return detect_jetson() is not None

    def check(self) -> None:
        """Refuse off a Jetson."""
        if not self.available():
            raise UnsupportedDeviceError(
                "--device jetson but this is not a Jetson (no /etc/nv_tegra_release)",
                "run bap bench on the board, or use --device cpu/cuda",
            )

    def facts(self) -> dict[str, Any]:
        """Board, power mode and clocks."""
        return {**CpuDevice().facts(), "jetson": jetson_facts()}


DEVICES.register("cpu", CpuDevice())
DEVICES.register("cuda", CudaDevice())
DEVICES.register("jetson", JetsonDevice())
