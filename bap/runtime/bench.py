"""``bap bench``: the compact multi-domain model against the unpruned backbone, interleaved, in trtexec's vocabulary.

For every batch size all models are warmed up, then measured in short alternating chunks (the order rotates
every round) until each has run ``duration_s`` seconds and at least ``iterations`` times, so clock and thermal
drift hit every model alike. Peak memory comes from a fresh process per model and batch. Ratios are taken to
the backbone's medians. Every file the bench opens (each model's, also of compared exports) is checked against
its manifest's size and sha256 before anything is timed: a missing or modified file is an :class:`IntegrityError`.
A model that passes that check but fails while it is opened or run records an ``error`` and the sweep goes on; the
multi-domain model (the subject) must open. Files are found by the backends
(:func:`bap.runtime.backends.open_backend`); ONNX Runtime sessions get the manifest's ``runtime.onnxruntime``
settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bap.core.env import versions
from bap.errors import BapError, ConfigError, IncompatibleArtifactError

if TYPE_CHECKING:
    from bap.exporter.manifest import Manifest

__all__ = [
    "BENCH_FORMAT",
    "BenchConfig",
    "bench",
    "export_dir",
    "failures",
    "latency_stats",
    "percentile",
    "ratios",
    "subject_errors",
    "validate_bench",
]

log = logging.getLogger(__name__)

BENCH_FORMAT = "bap.bench/1"
# ONNX Runtime's idle workers busy-wait for a while after each run; without a pause before each chunk, the workers
# of the model timed last compete for the cores with the one timed next (this slowed every model by up to 40% and
# small-op models most, on 2 cores)
CHUNK_PAUSE_S = 0.02


@dataclass(frozen=True)
class BenchConfig:
    """What ``bap bench`` measures.

    Attributes:
        export: export directory (``manifest.json``, ``model.onnx``, ``backbone.onnx``, specialised models).
        device: ``cpu``, ``cuda`` or ``jetson``.
        backend: ``ort`` or ``trt`` (TensorRT engines, GPU only).
        batch_sizes: batch sizes to sweep.
        warmup_s, duration_s, iterations: warm-up time, minimum measured time and minimum iterations per case.
        threads: ONNX Runtime intra-op threads (recorded; default: ORT's choice).
        domains: domains cycled through the multi-domain model's batches (default: all it serves).
        input_size: square input size (default: the manifest's).
        memory: measure peak RSS in a fresh process per model and batch.
        specialised: include the export's specialised models.
        compare: other export directories (same domains) whose multi-domain models are timed in the same
            interleaved run, e.g. the same budget exported with another ``--graph``.
    """

    export: str
    device: str = "cpu"
    backend: str = "ort"
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_s: float = 1.0
    duration_s: float = 3.0
    iterations: int = 20
    threads: int | None = None
    domains: tuple[str, ...] = ()
    input_size: int | None = None
    memory: bool = True
    specialised: bool = True
    compare: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any((not isinstance(b, int)) or b < 1 or b > 4096 for b in self.batch_sizes):
            raise ConfigError(
                f"batch sizes {list(self.batch_sizes)} must be integers in [1, 4096]", "e.g. --batch-sizes 1,8,32"
            )
        if not (0 <= self.warmup_s <= 600 and 0 < self.duration_s <= 3600):
            raise ConfigError(
                "--warmup-s must be in [0, 600] and --duration-s in (0, 3600]", "e.g. --warmup-s 1 --duration-s 3"
            )
        if self.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1, got {self.iterations}", "e.g. --iterations 20")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}", "e.g. --threads 2")
        if self.input_size is not None and not 8 <= self.input_size <= 4096:
            raise ConfigError(f"--input-size {self.input_size} is out of range", "use 8..4096")
        if self.backend not in ("ort", "trt"):
            raise ConfigError(f"unknown backend {self.backend!r}", "use --backend ort or trt")
        if self.backend == "trt" and self.device == "cpu":
            raise ConfigError("--backend trt needs --device cuda or jetson", "use --backend ort on the CPU")


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile as trtexec computes it: ``sorted[n - 1 - int((1 - p/100) * n)]``."""
    n = len(sorted_ms)
    # float32 arithmetic as in trtexec's C++ (with float64, 1 - 0.9 rounds below 0.1 and picks the next sample)
    k = int((np.float32(1.0) - np.float32(p) / np.float32(100.0)) * np.float32(n))
    return sorted_ms[max(0, min(n - 1, n - 1 - k))]


def latency_stats(ms: list[float]) -> dict[str, float]:
    """Min / mean / median / p90 / p95 / p99 / max / std of per-iteration latencies (ms)."""
    s = sorted(ms)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {
        "min": s[0],
        "mean": float(np.mean(s)),
        "median": med,
        "p90": percentile(s, 90),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "max": s[-1],
        "std": float(np.std(s)),
    }


@dataclass(frozen=True)
class _Spec:
    """One model of the comparison: ``label`` in the results, ``role`` within its own export."""

    label: str
    role: str
    root: Path
    manifest: Manifest
    file: Path
    macs: float
    multi: bool


@dataclass
class _Case:
    role: str
    file: Path
    runner: Any
    feeds: list[dict[str, np.ndarray]]
    ms: list[float] = dataclasses.field(default_factory=list)
    windows: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    error: str | None = None
    calls: int = 0

    def run(self) -> None:
        """One inference on the next feeds (the domain rotation advances per call)."""
        feeds = self.feeds[self.calls % len(self.feeds)]
        self.calls += 1
        self.runner.run(feeds)

    def done(self, cfg: BenchConfig) -> bool:
        """Measured long and often enough (or failed)."""
        return self.error is not None or (sum(self.ms) >= cfg.duration_s * 1000 and len(self.ms) >= cfg.iterations)

    def progress(self, cfg: BenchConfig) -> float:
        """The fraction of the required time / iterations measured."""
        return min(sum(self.ms) / (cfg.duration_s * 1000), len(self.ms) / cfg.iterations)


def export_dir(path: str | Path, command: str = "bap bench", why: str = "it compares against backbone.onnx") -> Path:
    """The export directory ``path`` names: itself, or the directory of its ``*.onnx`` / ``manifest.json``.

    Raises:
        ConfigError: ``path`` is another file, or an ONNX file outside an export directory.
    """
    p = Path(path)
    if not p.is_file():
        return p  # a directory, or nothing: read_manifest names what is missing
    if p.name == "manifest.json" or (p.suffix == ".onnx" and (p.parent / "manifest.json").is_file()):
        return p.parent
    raise ConfigError(
        f"{p} is a file: {command} needs an export directory ({why})", "pass the directory bap export wrote"
    )


def _multi_macs(manifest: Manifest, domains: list[str]) -> float:
    """MACs per sample of a multi-domain model over an even mix of ``domains`` (routed: each runs its branch)."""
    return manifest.executed_macs(domains)


def _spec(cfg: BenchConfig, label: str, root: Path, m: Manifest, role: str, macs: float) -> _Spec:
    from bap.runtime.backends import BACKENDS

    file = root / BACKENDS.get(cfg.backend).file_for(m, role)
    return _Spec(label, role, root, m, file, macs, role == "multi-domain")


def _compared(cfg: BenchConfig, manifest: Manifest, root: Path, domains: list[str], labels: set[str]) -> list[_Spec]:
    """The multi-domain models of the ``--compare`` exports (same domains as ``manifest``)."""
    from bap.exporter.manifest import read_manifest

    dirs = [export_dir(o, "bap bench --compare", "it times that export's multi-domain model") for o in cfg.compare]
    if len({d.resolve() for d in dirs}) < len(dirs):
        raise ConfigError("--compare lists an export twice", "list distinct export directories")
    out = []
    for other in dirs:
        m = read_manifest(other)
        if m.domain_names != manifest.domain_names:
            raise ConfigError(
                f"--compare {other} serves other domains than {root}", "compare exports of the same run and domains"
            )
        label = f"compare:{m.graph or other.resolve().name}"  # short: the bench table fits 80 columns
        if label in labels:  # two compared exports with one graph: name them by directory
            label = f"compare:{other.resolve().parent.name}/{other.resolve().name}"
        labels.add(label)
        out.append(_spec(cfg, label, other, m, "multi-domain", _multi_macs(m, domains)))
    return out


def _models(cfg: BenchConfig, manifest: Manifest, root: Path, domains: list[str]) -> list[_Spec]:
    """The models to compare: multi-domain, backbone, the export's specialised ones, compared exports."""
    out = [
        _spec(cfg, "multi-domain", root, manifest, "multi-domain", _multi_macs(manifest, domains)),
        _spec(cfg, "backbone", root, manifest, "backbone", manifest.macs.backbone),
    ]
    out += _compared(cfg, manifest, root, domains, {o.label for o in out})
    if cfg.specialised:
        for name, info in sorted(manifest.specialised.items()):
            spec = _spec(cfg, f"specialised:{name}", root, manifest, f"specialised:{name}", info.macs)
            # a file the manifest lists must be there (_verify says so); an unlisted one is optional
            if info.file in manifest.files or (root / info.file).is_file():
                out.append(spec)
    return out


# ------------------------------------------------------------------------------------------------ ONNX params
def _varint(b: memoryview, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        if c < 0x80:
            return out, i
        shift += 7


def _pb_fields(b: memoryview) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of one protobuf message (bytes fields as memoryviews)."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            v, i = b[i : i + n], i + n
        else:
            raise ValueError(f"protobuf wire type {wt}")
        yield num, wt, v


def _tensor_floats(t: memoryview) -> int:
    """Elements of a ``TensorProto`` if it holds float32/float16/bfloat16 (1, 10, 16), else 0."""
    dims: list[int] = []
    dtype = 0
    for num, wt, v in _pb_fields(t):
        if num == 1 and wt == 0:
            dims.append(v)
        elif num == 1 and wt == 2:  # packed dims
            j = 0
            while j < len(v):
                d, j = _varint(v, j)
                dims.append(d)
        elif num == 2 and wt == 0:
            dtype = v
    return int(np.prod(dims)) if dtype in (1, 10, 16) else 0


def _onnx_params(path: Path) -> int:
    """Float weights stored in an ONNX file (0 if it cannot be read: that case records its own error).

    Reads ``ModelProto.graph.initializer`` straight from the protobuf wire format, so the bench needs no onnx.
    """
    try:
        buf = memoryview(path.read_bytes())
        graphs = [v for num, wt, v in _pb_fields(buf) if num == 7 and wt == 2]
        return sum(_tensor_floats(t) for g in graphs for num, wt, t in _pb_fields(g) if num == 5 and wt == 2)
    except (OSError, ValueError, IndexError):
        return 0


# ------------------------------------------------------------------------------------------------ running
def _verify(cfg: BenchConfig, specs: list[_Spec]) -> None:
    """Check every file the bench opens against its manifest before anything is timed.

    Raises:
        IntegrityError: a file is missing, truncated or modified (named in the message).
        IncompatibleArtifactError: a TensorRT engine was never built.
    """
    from bap.runtime.backends import BACKENDS

    cls = BACKENDS.get(cfg.backend)
    for s in specs:
        if not s.file.is_file() and s.file.suffix != ".onnx":  # an engine that was never built
            raise IncompatibleArtifactError(f"{s.file} is missing from the export", cls.missing_fix(s.root))
        # the ONNX file is read for its parameter count, also when a TensorRT engine runs
        s.manifest.verify_files(s.root, dict.fromkeys([s.file.relative_to(s.root).as_posix(), _onnx_name(s)]))


def _open(cfg: BenchConfig, spec: _Spec) -> Any:
    from bap.runtime.backends import open_backend

    # verify=False: _verify checked every file before timing started
    return open_backend(cfg.backend, spec.root, spec.manifest, spec.role, cfg.device, cfg.threads, verify=False)


def _open_all(cfg: BenchConfig, specs: list[_Spec]) -> tuple[dict[str, Any], dict[str, str]]:
    """Open every model; the subject (multi-domain) must open, the others record their error."""
    runners: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for s in specs:
        try:
            runners[s.label] = _open(cfg, s)
        except Exception as e:
            if s.label == "multi-domain":
                if isinstance(e, BapError):
                    raise
                raise IncompatibleArtifactError(
                    f"the multi-domain model {s.file} cannot run ({type(e).__name__}: {str(e)[:200]})",
                    "re-export the model",
                ) from None
            errors[s.label] = f"{type(e).__name__}: {e}"
            log.warning("%s (%s) cannot run: %s", s.label, s.file.name, errors[s.label])
    return runners, errors


def _probe_memory(cfg: BenchConfig, spec: _Spec, batch: int, size: int, domains: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bap.runtime._rss_probe", str(spec.root), "--role", spec.role,
           "--backend", cfg.backend, "--batch", str(batch), "--size", str(size), "--domains", str(domains),
           "--device", cfg.device]  # fmt: skip
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["probe failed"])[-1][:300]}
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        return {"error": f"memory probe failed: {e}"}


def _served_ids(cfg: BenchConfig, served: list[str]) -> list[int]:
    for d in cfg.domains:
        if d not in served:
            raise ConfigError(f"unknown domain {d!r}", f"the export serves: {', '.join(served)} (--domains)")
    return [served.index(d) for d in cfg.domains] if cfg.domains else list(range(len(served)))


def _facts(cfg: BenchConfig, device: Any, manifest: Manifest) -> dict[str, Any]:
    facts = {
        "device": cfg.device,
        "backend": cfg.backend,
        **device.facts(),
        "threads": cfg.threads,
        "chunk_pause_s": CHUNK_PAUSE_S,
        "domain_rotation": "iteration i feeds sample j domain (i + j) mod D of the served (or --domains) list",
        "versions": versions(),
    }
    if cfg.backend == "ort":  # the contract's session settings, applied to every session (and memory probe)
        facts["onnxruntime_settings"] = manifest.runtime.onnxruntime.to_dict()
    return facts


def _start_sampler(cfg: BenchConfig, facts: dict[str, Any]) -> Any:
    if cfg.device != "jetson":
        return None
    from bap.runtime.tegrastats import TegrastatsSampler

    if facts.get("jetson", {}).get("jetson_clocks") != "locked":
        log.warning("Jetson clocks are not locked: run 'sudo jetson_clocks' for stable numbers")
    if TegrastatsSampler.available():
        return TegrastatsSampler().start()
    facts["tegrastats"] = "not found: power and RAM not sampled"
    return None


def bench(cfg: BenchConfig, callback: Any = None) -> dict[str, Any]:
    """Benchmark an export as configured and return the ``bap.bench/1`` document.

    Every file (of every model, also of compared exports) is checked against its manifest's size and sha256 before
    anything is timed. A backbone, specialised or compared model that passes that check but cannot run is reported
    as rows with an ``error`` (see :func:`failures`); the multi-domain model must open.

    Raises:
        UnsupportedDeviceError: ``--device cuda`` / ``jetson`` on a machine without one (no silent fallback).
        ConfigError: ``export`` (or a ``compare`` entry) is a file other than an export's ONNX model.
        IntegrityError: a file of any model is missing, truncated or modified.
        IncompatibleArtifactError: missing or invalid export, or a multi-domain model that cannot be opened.
    """
    from bap.exporter.manifest import read_manifest
    from bap.runtime.devices import DEVICES

    device = DEVICES.get(cfg.device)
    device.check()
    if cfg.backend not in device.backends:
        raise ConfigError(
            f"--backend {cfg.backend} is not available on --device {cfg.device}", f"use one of {device.backends}"
        )
    root = export_dir(cfg.export)
    manifest = read_manifest(root)
    served = manifest.domain_names
    dom_ids = _served_ids(cfg, served)
    size = cfg.input_size or manifest.input.size
    specs = _models(cfg, manifest, root, [served[i] for i in dom_ids])
    _verify(cfg, specs)
    facts = _facts(cfg, device, manifest)
    runners, errors = _open_all(cfg, specs)
    facts["providers"] = runners["multi-domain"].providers
    sampler = _start_sampler(cfg, facts)
    rng = np.random.default_rng(cfg.seed)
    results: list[dict[str, Any]] = []
    try:
        for b in cfg.batch_sizes:
            x = rng.random((b, 3, size, size), dtype=np.float32)
            # every domain gets the same share of iterations, also at batch 1 (routed models run one branch)
            n = len(dom_ids)
            rotations = [np.array([dom_ids[(k + i) % n] for i in range(b)], dtype=np.int64) for k in range(n)]
            cases = []
            for s in specs:
                feeds = [{"image": x, "domain": r} for r in rotations] if s.multi else [{"image": x}]
                cases.append(_Case(s.label, s.file, runners.get(s.label), feeds, error=errors.get(s.label)))
            _measure(cfg, cases, callback, b)
            results += [_result(cfg, s, c, b, size, len(served), sampler) for s, c in zip(specs, cases, strict=True)]
    finally:
        if sampler is not None:
            sampler.stop()
    return {
        "format": BENCH_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "export": str(root.resolve()),
        "device": facts,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "input_size": size,
        "results": results,
        "ratios": ratios(results),
    }


def failures(doc: dict[str, Any], role: str | None = None) -> list[dict[str, Any]]:
    """The result rows of a bench document that failed (of ``role`` only, if given)."""
    return [r for r in doc["results"] if "error" in r and role in (None, r["role"])]


def subject_errors(doc: dict[str, Any]) -> list[str]:
    """``batch N: error`` for every multi-domain row of a bench document that failed."""
    return [f"batch {r['batch']}: {r['error']}" for r in failures(doc, "multi-domain")]


def _fail_case(c: _Case, e: Exception) -> None:
    c.error = f"{type(e).__name__}: {str(e)[:300]}"
    log.warning("%s failed: %s", c.role, c.error)


def _warm_up(cfg: BenchConfig, live: list[_Case]) -> dict[str, int]:
    """Warm each model up (first runs allocate memory and pick kernels) and size its ~0.1 s chunk."""
    chunk = {}
    for c in live:
        try:
            t_end = time.perf_counter() + cfg.warmup_s
            c.run()
            while time.perf_counter() < t_end:
                c.run()
            t0 = time.perf_counter()
            c.run()
            chunk[c.role] = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
        except Exception as e:
            _fail_case(c, e)
    return chunk


def _run_chunk(c: _Case, n: int) -> None:
    time.sleep(CHUNK_PAUSE_S)
    start = time.time()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            c.run()
            c.ms.append((time.perf_counter() - t0) * 1000.0)
    except Exception as e:
        _fail_case(c, e)
    c.windows.append((start, time.time()))


def _measure(cfg: BenchConfig, cases: list[_Case], callback: Any, batch: int) -> None:
    if callback:
        callback.on_phase(f"batch {batch}", 100)
    live = [c for c in cases if c.error is None]
    chunk = _warm_up(cfg, live)
    live = [c for c in live if c.error is None]
    # chunks of about 0.1 s alternate between models (after a short pause); the order rotates every round
    rnd = 0
    while todo := [c for c in live if not c.done(cfg)]:
        for c in todo[rnd % len(todo) :] + todo[: rnd % len(todo)]:
            _run_chunk(c, chunk[c.role])
        rnd += 1
        if callback:
            callback.on_advance(0, progress=min(1.0, min(c.progress(cfg) for c in live)))
    if callback:
        callback.on_phase_end()


def _result(
    cfg: BenchConfig, spec: _Spec, c: _Case, batch: int, size: int, num_domains: int, sampler
) -> dict[str, Any]:
    onnx = spec.root / _onnx_name(spec)  # params are counted in the ONNX file, also for TensorRT engines
    r: dict[str, Any] = {
        "model": spec.file.name,
        "role": spec.label,
        "batch": batch,
        "file_mb": spec.file.stat().st_size / 2**20 if spec.file.is_file() else 0.0,
        "macs": round(spec.macs),
        "params": _onnx_params(onnx),
    }
    if c.error or not c.ms:
        r["error"] = c.error or "no measurements"
        return r
    lat = latency_stats(c.ms)
    r["latency_ms"] = lat
    r["iterations"] = len(c.ms)
    r["throughput"] = batch * len(c.ms) / (sum(c.ms) / 1000.0)
    if cfg.memory:
        r.update(_memory_fields(_probe_memory(cfg, spec, batch, size, num_domains if spec.multi else 0)))
    if sampler is not None:
        w = sampler.window(c.windows)
        r["tegrastats"] = w
        if w.get("power_mw_mean"):
            r["power_w_mean"] = w["power_mw_mean"] / 1000.0
            r["energy_mj_per_image"] = w["power_mw_mean"] * lat["mean"] / 1000.0 / batch
    return r


def _onnx_name(spec: _Spec) -> str:
    from bap.runtime.backends import onnx_file_for

    return onnx_file_for(spec.manifest, spec.role)


def _memory_fields(mem: dict[str, Any]) -> dict[str, Any]:
    if "error" in mem:
        return {"memory_error": mem["error"]}
    out = {"peak_rss_mb": mem["peak_rss_mb"], "rss_delta_mb": mem["peak_rss_mb"] - mem["baseline_rss_mb"]}
    return {**out, **{k: mem[k] for k in ("gpu_mem_delta_mb", "ram_delta_mb") if k in mem}}


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's ratios to the backbone at the same batch (latency = ratio of medians)."""
    out = []
    base = {r["batch"]: r for r in results if r["role"] == "backbone" and "error" not in r}
    for r in results:
        b = base.get(r["batch"])
        if r["role"] == "backbone" or b is None or "error" in r:
            continue
        entry = {
            "batch": r["batch"],
            "model": r["model"],
            "role": r["role"],
            "latency": r["latency_ms"]["median"] / b["latency_ms"]["median"],
            "throughput": r["throughput"] / b["throughput"],
            "macs": r["macs"] / b["macs"],
            "params": r["params"] / b["params"],
            "file_size": r["file_mb"] / b["file_mb"],
            "peak_rss": r["peak_rss_mb"] / b["peak_rss_mb"] if "peak_rss_mb" in r and "peak_rss_mb" in b else None,
        }
        out.append(entry)
    return out


_RESULT_TYPES = (("model", str), ("batch", int), ("file_mb", (float, int)), ("macs", int), ("params", int))
_PERCENTILES = ("min", "mean", "median", "p90", "p95", "p99")
_RATIO_KEYS = ("batch", "latency", "throughput", "macs", "params", "file_size", "peak_rss")


def _result_problem(r: Any) -> str | None:
    """What is wrong with one result row (``None`` if nothing)."""
    if not isinstance(r, dict):
        return "must be an object"
    for k, t in _RESULT_TYPES:
        if not isinstance(r.get(k), t):
            return f".{k} missing or of the wrong type"
    if "error" in r:
        return None
    lat = r.get("latency_ms")
    if not isinstance(lat, dict) or any(not isinstance(lat.get(k), (int, float)) for k in _PERCENTILES):
        return ".latency_ms must hold min/mean/median/p90/p95/p99"
    if not lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"]:
        return ".latency_ms percentiles are not ordered"
    if not isinstance(r.get("throughput"), (int, float)) or r["throughput"] <= 0:
        return ".throughput must be > 0"
    return None


def validate_bench(doc: Any) -> dict[str, Any]:
    """Check a ``bap.bench/1`` document; raises :class:`IncompatibleArtifactError` naming the bad key."""

    def fail(msg: str) -> IncompatibleArtifactError:
        return IncompatibleArtifactError(f"bench JSON: {msg}", "re-run bap bench")

    top = (
        (lambda d: isinstance(d, dict) and d.get("format") == BENCH_FORMAT, f"format must be {BENCH_FORMAT}"),
        (lambda d: isinstance(d.get("device"), dict), "device must be an object"),
        (lambda d: isinstance(d.get("results"), list) and d["results"], "results must be a non-empty list"),
        (lambda d: isinstance(d.get("ratios"), list), "ratios must be a list"),
    )
    for ok, msg in top:
        if not ok(doc):
            raise fail(msg)
    for i, r in enumerate(doc["results"]):
        if problem := _result_problem(r):
            raise fail(f"results[{i}]{problem}")
    for i, q in enumerate(doc["ratios"]):
        missing = [k for k in _RATIO_KEYS if not isinstance(q, dict) or k not in q]
        if missing:
            raise fail(f"ratios[{i}].{missing[0]} is missing")
    return doc
