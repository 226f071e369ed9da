"""TensorRT: a CPU-side readiness check of the ONNX file, and the engine build (on a machine with a GPU).

The build follows the TensorRT 10.x / 11.x Python API reference (``docs/design.md`` section 5):
explicit dynamic-shape profile, workspace limit, timing cache, ``build_serialized_network``. Precision:
TensorRT 11 is strongly typed (no FP16 builder flag), so fp16 is carried by the ONNX file; 9.x/10.x opt into
strong typing with the same file; 8.x uses the fp32 file and ``BuilderFlag.FP16``.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from bap.errors import ExportError, MissingDependencyError, UnsupportedDeviceError

__all__ = [
    "TRT_INSTALL_HINT",
    "TRT_ONNX_OPS",
    "EngineJob",
    "NetworkSettings",
    "build_engine",
    "build_engines",
    "engine_jobs",
    "network_settings",
    "parse_trt_version",
    "plan_name",
    "profile_shapes",
    "readiness",
    "require_tensorrt",
    "tensorrt_available",
]

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = (
    "install TensorRT on a machine with an NVIDIA GPU: pip install 'bap[trt]' --extra-index-url https://pypi.nvidia.com "
    "(desktop), or JetPack's python3-libnvinfer on a Jetson; the ONNX files were written, so you can also run "
    "trtexec --onnx=model.onnx there"
)

# operators of the TensorRT ONNX parser that bap graphs can contain (onnx-tensorrt docs/operators.md, TRT 8.5-11)
TRT_ONNX_OPS = frozenset(
    """Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Div Dropout Einsum Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gemm
    GlobalAveragePool GlobalMaxPool Greater HardSigmoid HardSwish Identity LeakyRelu Less Log LogSoftmax MatMul Max
    MaxPool Mean Min Mul Neg NonZero Not Or Pad Pow PRelu Range Reciprocal ReduceMax ReduceMean ReduceMin ReduceSum Relu
    Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Slice Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Tile
    TopK Transpose Unsqueeze Where""".split()
)
# newest opset each TensorRT major parses (onnx-tensorrt operators.md headers)
TRT_MAX_OPSET = {8: 17, 9: 19, 10: 20, 11: 21}


def parse_trt_version(version: str) -> tuple[int, int]:
    """``"10.3.0.30"`` -> ``(10, 3)``."""
    parts = ([*version.split("."), "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return 0, 0


def profile_shapes(model: onnx.ModelProto, opt_batch: int, max_batch: int, height: int, width: int) -> dict[str, tuple]:
    """``{input: (min, opt, max)}`` for a dynamic batch (spatial size fixed to the manifest's)."""
    out = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in inp.type.tensor_type.shape.dim]
        if len(dims) == 4:
            rest = (3, height, width)
            out[inp.name] = ((1, *rest), (opt_batch, *rest), (max_batch, *rest))
        else:
            out[inp.name] = ((1,), (opt_batch,), (max_batch,))
    return out


def readiness(
    model: onnx.ModelProto, opset: int, opt_batch: int, max_batch: int, height: int, width: int
) -> dict[str, Any]:
    """What TensorRT's ONNX parser will make of ``model``, decided on the CPU.

    Checks operators against the parser's support list, int64 tensors (inputs TensorRT 8.x narrows to int32;
    TensorRT >= 9 keeps int64), the opset each TensorRT major accepts, and that every dynamic dimension is
    covered by the optimisation profile bap builds.
    """
    ops = sorted({n.op_type for n in model.graph.node})
    unsupported = [o for o in ops if o not in TRT_ONNX_OPS]
    int64_inputs = [i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    int64_inits = sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64)
    dynamic = {}
    for i in model.graph.input:
        dims = [d.dim_param or (d.dim_value if d.dim_value > 0 else "?") for d in i.type.tensor_type.shape.dim]
        if any(isinstance(d, str) for d in dims):
            dynamic[i.name] = dims
    profile = profile_shapes(model, opt_batch, max_batch, height, width)
    notes = []
    if int64_inputs:
        notes.append(
            f"int64 inputs {int64_inputs}: TensorRT 8.x casts them to int32 (domain ids < 2^31 are safe); 9+ keeps int64"
        )
    if int64_inits:
        notes.append(
            f"{int64_inits} int64 initializers (indices/shapes): narrowed to int32 by TensorRT 8.x with a warning"
        )
    too_new = [f"{m}.x" for m, mx in TRT_MAX_OPSET.items() if opset > mx]
    if too_new:
        notes.append(f"opset {opset} is newer than TensorRT {', '.join(too_new)} parse; use --opset 17 for JetPack 5/6")
    if "NonZero" in ops:
        notes.append(
            "NonZero (routed graph): data-dependent shapes, parsed by TensorRT >= 8.5; --graph tables is the layout "
            "built for TensorRT"
        )
    covered = all(name in profile for name in dynamic)
    return {
        "ops": ops,
        "unsupported_ops": unsupported,
        "int64_inputs": int64_inputs,
        "int64_initializers": int64_inits,
        "dynamic_inputs": dynamic,
        "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        "profile_covers_dynamic_dims": covered,
        "uses_if": "If" in ops,
        "notes": notes,
        "ok": not unsupported and covered and "If" not in ops,
    }


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` package is installed (found, not imported: importing it loads CUDA libraries)."""
    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt():
    """Import TensorRT, or raise a one-line :class:`MissingDependencyError` saying what to install and where."""
    if not tensorrt_available():
        raise MissingDependencyError("TensorRT is not installed", TRT_INSTALL_HINT)
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # libnvinfer / CUDA runtime missing
        raise MissingDependencyError(f"TensorRT is installed but cannot load ({e})", TRT_INSTALL_HINT) from None
    return trt


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return "unknown"


@dataclass(frozen=True)
class NetworkSettings:
    """How one TensorRT major builds a given precision: network flags, FP16 builder flag, which ONNX file."""

    flags: int
    strongly_typed: bool
    fp16_flag: bool
    use_fp32_source: bool


def network_settings(trt: Any, major: int, precision: str) -> NetworkSettings:
    """Network-creation flags and precision handling for TensorRT ``major`` (``trt``: the module or a stand-in).

    TensorRT 11 is strongly typed (precision comes from the ONNX file; no FP16 flag); 9.x / 10.x opt into strong
    typing with the same file; 8.x builds fp16 from the fp32 file with ``BuilderFlag.FP16``. Explicit batch is a
    flag before 10.x and the only mode since.
    """
    creation = trt.NetworkDefinitionCreationFlag
    legacy_fp16 = precision == "fp16" and major < 9
    flags, strongly_typed = 0, False
    if not legacy_fp16 and major in (9, 10) and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
        strongly_typed = True  # 11.x accepts and ignores the flag: leave it off there
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    return NetworkSettings(flags, strongly_typed, legacy_fp16, legacy_fp16)


def _builder(trt: Any, logger: Any) -> Any:
    try:
        return trt.Builder(logger)
    except (TypeError, RuntimeError) as e:  # "factory function returned nullptr": no GPU / driver
        raise UnsupportedDeviceError(
            f"TensorRT cannot create a builder ({e})", "build the engine on a machine with an NVIDIA GPU"
        ) from None


def _parse(trt: Any, builder: Any, logger: Any, flags: int, source: Path) -> Any:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejected {source.name}: {errs[:500]}", "check the readiness report")
    return network, parser  # the parser owns weights the network refers to: keep it alive until the build


def _builder_config(
    trt: Any, builder: Any, settings: NetworkSettings, shapes: dict[str, tuple], workspace_mb: int, cache: bytes
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if settings.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in shapes.items():
        profile.set_shape(name, min=mn, opt=opt, max=mx)
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(cache), ignore_mismatch=True)
    return config


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    shapes: dict[str, tuple],
    workspace_mb: int,
    timing_cache: Path | None = None,
    fp32_onnx_path: Path | None = None,
) -> dict[str, Any]:
    """Build a serialized TensorRT engine from ``onnx_path`` and write it atomically to ``engine_path``.

    Args:
        precision: ``fp32`` or ``fp16``. On TensorRT 8.x, fp16 builds from ``fp32_onnx_path`` with the FP16 flag.
        shapes: ``{input: (min, opt, max)}`` for the optimisation profile.

    Returns:
        ``{"file", "tensorrt", "gpu", "precision", "strongly_typed", "profile", "seconds", "bytes"}`` (manifest).

    Raises:
        MissingDependencyError: TensorRT missing. UnsupportedDeviceError: no usable GPU.
        ExportError: the parser or builder failed (their messages are included).
    """
    from bap.core.io import atomic_write_bytes

    trt = require_tensorrt()
    major, _minor = parse_trt_version(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = _builder(trt, logger)
    settings = network_settings(trt, major, precision)
    source = (fp32_onnx_path or onnx_path) if settings.use_fp32_source else onnx_path
    network, _parser = _parse(trt, builder, logger, settings.flags, source)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config = _builder_config(trt, builder, settings, shapes, workspace_mb, cache_bytes)
    t0 = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            f"TensorRT failed to build the engine for {onnx_path.name}", "run with --verbose and check the TensorRT log"
        )
    atomic_write_bytes(engine_path, bytes(plan))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "file": engine_path.name,
        "tensorrt": trt.__version__,
        "gpu": _gpu_name(),
        "precision": precision,
        "strongly_typed": settings.strongly_typed,
        "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "seconds": round(time.time() - t0, 1),
        "bytes": engine_path.stat().st_size,
    }


def plan_name(onnx_file: str) -> str:
    """The engine file of an ONNX file: ``backbone.onnx`` -> ``backbone.plan`` (how runtimes find engines)."""
    return onnx_file[: -len(".onnx")] + ".plan" if onnx_file.endswith(".onnx") else onnx_file + ".plan"


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: its ONNX source (and fp32 twin for TensorRT 8.x fp16), engine file and profile."""

    onnx_file: str
    shapes: dict[str, tuple]
    fp32_file: str | None = None

    @property
    def plan_file(self) -> str:
        """The engine's file name (:func:`plan_name`)."""
        return plan_name(self.onnx_file)


Builder = Callable[..., dict[str, Any]]  # the signature of build_engine


def build_engines(
    root: Path,
    jobs: Iterable[EngineJob],
    precision: str,
    workspace_mb: int,
    timing_cache: Path | None = None,
    builder: Builder = build_engine,
) -> dict[str, dict[str, Any]]:
    """Build every engine with the same builder settings, sharing one timing cache.

    Args:
        root: the export directory holding the ONNX files; engines are written beside them.
        jobs: what to build (the multi-domain model first: a missing TensorRT fails before anything is written).
        builder: :func:`build_engine` (tests pass a stand-in).

    Returns:
        ``{plan file: build_engine's facts}`` in build order. If one build fails, the engines already written
        by this call are removed before the error propagates (the manifest never lists a partial set).
    """
    done: dict[str, dict[str, Any]] = {}
    try:
        for job in jobs:
            fp32 = root / job.fp32_file if job.fp32_file else None
            done[job.plan_file] = builder(
                root / job.onnx_file, root / job.plan_file, precision, job.shapes, workspace_mb, timing_cache, fp32
            )
    except BaseException:
        for f in done:
            (root / f).unlink(missing_ok=True)
        raise
    return done


def engine_jobs(
    onnx_files: Iterable[str], shapes_of: Callable[[str], dict[str, tuple]], fp32_twins: Mapping[str, str]
) -> list[EngineJob]:
    """One job per model file (the multi-domain model first).

    Args:
        shapes_of: the optimisation profile of an ONNX file (its inputs decide: ``image`` and maybe ``domain``).
        fp32_twins: per fp16 ONNX file, its fp32 twin (TensorRT 8.x builds fp16 from it).
    """
    return [EngineJob(f, shapes_of(f), fp32_twins.get(f)) for f in onnx_files]
