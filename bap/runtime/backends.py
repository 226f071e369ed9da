"""Inference backends behind one interface, chosen through a registry: ONNX Runtime and TensorRT engines.

Each backend knows which file of an export it runs (:meth:`OrtBackend.file_for`: the ``.onnx``; TensorRT: the
same stem's ``.plan``), so :func:`open_backend` is the one place that turns (export, role) into a session.
Roles are ``multi-domain``, ``backbone`` and ``specialised:<domain>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bap.core.registry import Registry
from bap.errors import (
    ConfigError,
    IncompatibleArtifactError,
    IntegrityError,
    MissingDependencyError,
    UnsupportedDeviceError,
)

if TYPE_CHECKING:
    from bap.exporter.manifest import Manifest, OrtSettings

__all__ = [
    "BACKENDS",
    "ROLES",
    "Backend",
    "OrtBackend",
    "TrtBackend",
    "check_device",
    "onnx_file_for",
    "open_backend",
    "ort_providers_for",
    "ort_session_options",
]

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the runtime needs from an inference engine."""

    name: str
    providers: list[str]

    @staticmethod
    def file_for(manifest: Manifest, role: str) -> str:
        """The file (relative to the export) this backend runs for ``role``."""

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run once and return the first output."""

    def describe(self) -> dict[str, Any]:
        """Facts to record (providers actually used, versions, device)."""


BACKENDS: Registry = Registry("backend", "--backend")
ROLES = ("multi-domain", "backbone", "specialised:<domain>")


def onnx_file_for(manifest: Manifest, role: str) -> str:
    """The ONNX file (relative to the export) that plays ``role``.

    Raises:
        ConfigError: an unknown role, or a specialised domain the export has no model for.
    """
    if role == "multi-domain":
        return manifest.model
    if role == "backbone":
        return manifest.backbone_file
    domain = role.removeprefix("specialised:")
    if role.startswith("specialised:") and domain in manifest.specialised:
        return manifest.specialised[domain].file
    raise ConfigError(
        f"the export has no model for role {role!r}",
        f"use multi-domain, backbone or specialised:<d> with d in {sorted(manifest.specialised)}",
    )


def check_device(backend: str, device: str, present: bool = True) -> None:
    """Refuse a device the registry does not know, one ``backend`` cannot run on, or (``present``) one not here.

    The same checks as ``bap bench``: no silent CPU fallback for an unknown or absent device.

    Raises:
        ConfigError: an unknown device name, or a backend the device does not run (``--backend trt --device cpu``).
        UnsupportedDeviceError: ``present`` and the device is not on this machine (no GPU, not a Jetson).
    """
    from bap.runtime.devices import DEVICES

    dev = DEVICES.get(device)
    if backend not in dev.backends:
        need = " or ".join(n for n, d in DEVICES.items() if backend in d.backends)
        raise ConfigError(
            f"--backend {backend} needs --device {need}, got --device {device}",
            f"pass --device {need.split(' or ')[0]} or use --backend {dev.backends[0]}",
        )
    if present:
        dev.check()


def open_backend(
    name: str,
    export_dir: str | Path,
    manifest: Manifest,
    role: str = "multi-domain",
    device: str = "cpu",
    threads: int | None = None,
    verify: bool = True,
) -> Backend:
    """Open the file of ``export_dir`` that plays ``role`` with backend ``name``.

    Args:
        name: ``ort`` or ``trt`` (see :data:`BACKENDS`).
        export_dir: the export directory.
        manifest: its manifest (file names, checksums, ONNX Runtime settings).
        role: ``multi-domain``, ``backbone`` or ``specialised:<domain>``.
        device: ``cpu``, ``cuda`` or ``jetson`` (see :data:`bap.runtime.devices.DEVICES`).
        threads: ONNX Runtime intra-op threads (default: its own choice).
        verify: check the file's size and sha256 against ``manifest.files`` first.

    Raises:
        ConfigError: an unknown backend, role or device, or a backend the device does not run.
        IntegrityError: the file is missing, truncated or modified.
        UnsupportedDeviceError: the device is not on this machine (checked after the file).
        IncompatibleArtifactError: the backend cannot load it.
    """
    cls = BACKENDS.get(name)
    check_device(name, device, present=False)  # names first; the hardware after the file (a missing file says so)
    root = Path(export_dir)
    file = cls.file_for(manifest, role)
    if not (root / file).is_file():
        raise IntegrityError(f"{root / file} is missing from the export", cls.missing_fix(root))
    if verify:
        manifest.verify_files(root, [file])
    check_device(name, device)
    return cls(root / file, device, threads, settings=manifest.runtime.onnxruntime)


def ort_session_options(threads: int | None = None, settings: OrtSettings | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with bap's defaults and the manifest's ``session_config`` entries."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    for k, v in (settings.session_config if settings else {}).items():
        so.add_session_config_entry(k, v)
    return so


# preferred ONNX Runtime execution providers per device; TensorRT EP before CUDA EP (ORT tries them in order)
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "jetson": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def ort_providers_for(device: str) -> list[str]:
    """Execution providers to request for ``device``.

    Raises:
        ConfigError: an unknown device (no silent CPU fallback).
    """
    if device not in _PROVIDERS:
        from bap.runtime.devices import DEVICES

        DEVICES.get(device)  # raises for a name the registry does not know, listing the valid ones
        raise ConfigError(f"ONNX Runtime has no execution providers for --device {device}", "use --device cpu or cuda")
    return list(_PROVIDERS[device])


@BACKENDS.register("ort")
class OrtBackend:
    """ONNX Runtime. Records ``session.get_providers()`` (what actually runs).

    With ``strict`` (the default), a GPU device whose first execution provider this ONNX Runtime lacks is refused
    (:class:`~bap.errors.UnsupportedDeviceError`), never silently run on the CPU; missing providers later in the
    preference list are skipped.
    """

    name = "ort"

    @staticmethod
    def file_for(manifest: Manifest, role: str) -> str:
        """The ONNX file of ``role``."""
        return onnx_file_for(manifest, role)

    @staticmethod
    def missing_fix(root: Path) -> str:
        """How to get a missing file."""
        return "re-export the model (bap export)"

    def __init__(
        self,
        path: Path,
        device: str = "cpu",
        threads: int | None = None,
        strict: bool = True,
        settings: OrtSettings | None = None,
    ):
        import onnxruntime as ort

        requested = ort_providers_for(device)
        available = ort.get_available_providers()
        if device != "cpu" and requested[0] not in available and strict:
            raise UnsupportedDeviceError(
                f"ONNX Runtime here has no {requested[0]} (available: {', '.join(available)})",
                "install onnxruntime-gpu (pip install 'bap[gpu]') or use --device cpu",
            )
        so = ort_session_options(threads, settings)
        self.threads = threads
        self.settings = settings
        disabled = list(settings.disabled_optimizers) if settings else []
        try:
            self.session = ort.InferenceSession(
                str(path), so, providers=[p for p in requested if p in available], disabled_optimizers=disabled
            )
        except Exception as e:  # ORT raises its own exception types for invalid models
            raise IncompatibleArtifactError(
                f"ONNX Runtime cannot load {path} ({str(e).splitlines()[0][:200]})", "re-export the model"
            ) from None
        self.providers = self.session.get_providers()
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name
        self.path = path

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run once."""
        return self.session.run([self.output], {k: v for k, v in feeds.items() if k in self.inputs})[0]

    def describe(self) -> dict[str, Any]:
        """Backend facts."""
        import onnxruntime as ort

        return {
            "backend": "ort",
            "onnxruntime": ort.__version__,
            "providers": self.providers,
            "threads": self.threads,
            "settings": self.settings.to_dict() if self.settings else None,
        }


@BACKENDS.register("trt")
class TrtBackend:
    """A TensorRT engine (``model.plan``) run with ``execute_async_v3`` + ``set_tensor_address`` (TensorRT 8.5+).

    Device buffers come from PyTorch's CUDA allocator, which avoids a second CUDA binding dependency.
    """

    name = "trt"

    @staticmethod
    def file_for(manifest: Manifest, role: str) -> str:
        """The engine of ``role``: the ONNX file's stem with ``.plan`` (written by ``bap export --target trt``)."""
        return str(Path(onnx_file_for(manifest, role)).with_suffix(".plan"))

    @staticmethod
    def missing_fix(root: Path) -> str:
        """How to get a missing engine."""
        return f"build the engines: bap export RUN --target trt --out {root}"

    def __init__(
        self,
        path: Path,
        device: str = "cuda",
        threads: int | None = None,
        strict: bool = True,
        settings: OrtSettings | None = None,
    ):
        from bap.exporter.trt import require_tensorrt

        trt = require_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise UnsupportedDeviceError(
                "the TensorRT backend needs a CUDA GPU", "run on the target GPU or use --backend ort"
            )
        if not hasattr(trt.IExecutionContext, "execute_async_v3"):
            raise MissingDependencyError(
                f"TensorRT {trt.__version__} lacks execute_async_v3", "use TensorRT 8.5 or newer"
            )
        self.trt, self.torch = trt, torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise IncompatibleArtifactError(
                f"TensorRT {trt.__version__} cannot load {path} (built by another TensorRT version or GPU)",
                "rebuild the engine on this machine: bap export RUN --target trt",
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_name = next(n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()
        self.providers = ["TensorRT"]
        self.path = path

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Copy inputs to the GPU, enqueue, synchronise, copy the output back."""
        torch, trt = self.torch, self.trt
        bufs = {}
        for n in self.input_names:
            arr = feeds[n]
            dtype = trt.nptype(self.engine.get_tensor_dtype(n))
            t = torch.from_numpy(np.ascontiguousarray(arr.astype(dtype))).cuda()
            self.context.set_input_shape(n, tuple(arr.shape))
            self.context.set_tensor_address(n, int(t.data_ptr()))
            bufs[n] = t
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.output_name))
        out = torch.empty(shape, dtype=getattr(torch, np.dtype(out_dtype).name), device="cuda")
        self.context.set_tensor_address(self.output_name, int(out.data_ptr()))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Backend facts."""
        return {"backend": "trt", "tensorrt": self.trt.__version__, "gpu": self.torch.cuda.get_device_name(0)}
