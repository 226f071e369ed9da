"""``bap bench``: the compact multi-domain model against the unpruned backbone, interleaved, in trtexec's vocabulary.

For every batch size all models are warmed up, then measured in short alternating chunks (the order rotates
every round) until each has run ``duration_s`` seconds and at least ``iterations`` times, so clock and thermal
drift hit every model alike. Peak memory comes from a fresh process per model and batch. Ratios are taken to
the backbone's medians. A case that fails records an ``error`` and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bap.core.env import versions
from bap.errors import ConfigError, IncompatibleArtifactError

__all__ = ["BENCH_FORMAT", "BenchConfig", "bench", "latency_stats", "percentile", "validate_bench"]

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


def _multi_macs(manifest: dict[str, Any], domains: list[str]) -> float:
    """MACs per sample of a multi-domain model over an even mix of ``domains`` (routed: each runs its branch)."""
    per = manifest.get("macs_executed")
    if isinstance(per, dict) and all(d in per for d in domains):
        return sum(per[d] for d in domains) / len(domains)
    return manifest["macs"]["model"]


def _models(cfg: BenchConfig, manifest: dict[str, Any], root: Path, domains: list[str]) -> list[dict[str, Any]]:
    """The models to compare: multi-domain, backbone, specialised ones present in the export, compared exports."""
    from bap.exporter.manifest import read_manifest

    out = [
        {
            "role": "multi-domain",
            "file": root / manifest["model"],
            "macs": _multi_macs(manifest, domains),
            "multi": True,
        },
        {"role": "backbone", "file": root / "backbone.onnx", "macs": manifest["macs"]["backbone"], "multi": False},
    ]
    served = [d["name"] for d in manifest["domains"]]
    if len({Path(o).resolve() for o in cfg.compare}) < len(cfg.compare):
        raise ConfigError("--compare lists an export twice", "list distinct export directories")
    for other in cfg.compare:
        m = read_manifest(other)
        if [d["name"] for d in m["domains"]] != served:
            raise ConfigError(
                f"--compare {other} serves other domains than {root}", "compare exports of the same run and domains"
            )
        label = f"compare:{m.get('graph') or Path(other).resolve().name}"  # short: the bench table fits 80 columns
        if label in {o["role"] for o in out}:  # two compared exports with one graph: name them by directory
            label = f"compare:{Path(other).resolve().parent.name}/{Path(other).resolve().name}"
        out.append({"role": label, "file": Path(other) / m["model"], "macs": _multi_macs(m, domains), "multi": True})
    if cfg.specialised:
        for name, info in sorted(manifest.get("specialised", {}).items()):
            if (root / info["file"]).is_file():
                out.append(
                    {"role": f"specialised:{name}", "file": root / info["file"], "macs": info["macs"], "multi": False}
                )
    return out


def _onnx_params(path: Path) -> int:
    """Float weights stored in the ONNX file (0 if it cannot be read: that case records its own error)."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return 0
    return int(sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in (1, 10, 16)))


def _runner(cfg: BenchConfig, path: Path):
    from bap.runtime.backends import BACKENDS

    if cfg.backend == "trt":
        plan = path.with_suffix(".plan")
        if not plan.is_file():
            raise IncompatibleArtifactError(
                f"no TensorRT engine {plan.name} next to {path.name}", "build engines with bap export --target trt"
            )
        return BACKENDS.get("trt")(plan, cfg.device)
    return BACKENDS.get("ort")(path, cfg.device, cfg.threads)


def _probe_memory(cfg: BenchConfig, path: Path, batch: int, size: int, domains: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bap.runtime._rss_probe", str(path), "--batch", str(batch), "--size", str(size),
           "--domains", str(domains), "--device", cfg.device]  # fmt: skip
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["probe failed"])[-1][:300]}
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        return {"error": f"memory probe failed: {e}"}


def bench(cfg: BenchConfig, callback: Any = None) -> dict[str, Any]:
    """Benchmark an export as configured and return the ``bap.bench/1`` document.

    Raises:
        UnsupportedDeviceError: ``--device cuda`` / ``jetson`` on a machine without one (no silent fallback).
        IncompatibleArtifactError: missing or invalid export.
    """
    from bap.exporter.manifest import read_manifest
    from bap.runtime.devices import DEVICES

    device = DEVICES.get(cfg.device)
    device.check()
    if cfg.backend not in device.backends:
        raise ConfigError(
            f"--backend {cfg.backend} is not available on --device {cfg.device}", f"use one of {device.backends}"
        )
    root = Path(cfg.export)
    manifest = read_manifest(root)
    served = [d["name"] for d in manifest["domains"]]
    for d in cfg.domains:
        if d not in served:
            raise ConfigError(f"unknown domain {d!r}", f"the export serves: {', '.join(served)} (--domains)")
    dom_ids = [served.index(d) for d in cfg.domains] if cfg.domains else list(range(len(served)))
    size = cfg.input_size or int(manifest["input"]["shape"][2])
    specs = _models(cfg, manifest, root, [served[i] for i in dom_ids])
    for s in specs:
        if not s["file"].is_file():
            raise IncompatibleArtifactError(f"{s['file']} is missing", "re-export (bap export writes backbone.onnx)")
    rng = np.random.default_rng(cfg.seed)
    facts = {
        "device": cfg.device,
        "backend": cfg.backend,
        **device.facts(),
        "threads": cfg.threads,
        "chunk_pause_s": CHUNK_PAUSE_S,
        "domain_rotation": "iteration i feeds sample j domain (i + j) mod D of the served (or --domains) list",
        "versions": versions(),
    }
    sampler = None
    if cfg.device == "jetson":
        from bap.runtime.tegrastats import TegrastatsSampler

        if TegrastatsSampler.available():
            sampler = TegrastatsSampler().start()
        else:
            facts["tegrastats"] = "not found: power and RAM not sampled"
        if facts.get("jetson", {}).get("jetson_clocks") != "locked":
            log.warning("Jetson clocks are not locked: run 'sudo jetson_clocks' for stable numbers")

    runners: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for s in specs:
        try:
            runners[s["role"]] = _runner(cfg, s["file"])
        except Exception as e:
            errors[s["role"]] = f"{type(e).__name__}: {e}"
    if runners:
        facts["providers"] = next(iter(runners.values())).providers
    results: list[dict[str, Any]] = []
    try:
        for b in cfg.batch_sizes:
            x = rng.random((b, 3, size, size), dtype=np.float32)
            # every domain gets the same share of iterations, also at batch 1 (routed models run one branch)
            n = len(dom_ids)
            rotations = [np.array([dom_ids[(k + i) % n] for i in range(b)], dtype=np.int64) for k in range(n)]
            cases = []
            for s in specs:
                feeds = [{"image": x, "domain": r} for r in rotations] if s["multi"] else [{"image": x}]
                cases.append(_Case(s["role"], s["file"], runners.get(s["role"]), feeds, error=errors.get(s["role"])))
            _measure(cfg, cases, callback, b)
            for s, c in zip(specs, cases, strict=True):
                results.append(_result(cfg, s, c, b, size, len(served), sampler))
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


def _measure(cfg: BenchConfig, cases: list[_Case], callback: Any, batch: int) -> None:
    live = [c for c in cases if c.error is None]
    if callback:
        callback.on_phase(f"batch {batch}", 100)
    # warm-up: first runs allocate memory and pick kernels; discard them
    for c in live:
        try:
            t_end = time.perf_counter() + cfg.warmup_s
            c.run()
            while time.perf_counter() < t_end:
                c.run()
        except Exception as e:
            c.error = f"{type(e).__name__}: {str(e)[:300]}"
    live = [c for c in live if c.error is None]
    if not live:
        return
    # chunks of about 0.1 s alternate between models (after a short pause); the order rotates every round
    chunk = {}
    for c in live:
        t0 = time.perf_counter()
        c.run()
        chunk[c.role] = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
    rnd = 0
    while True:
        todo = [
            c for c in live if c.error is None and (sum(c.ms) < cfg.duration_s * 1000 or len(c.ms) < cfg.iterations)
        ]
        if not todo:
            break
        order = todo[rnd % len(todo) :] + todo[: rnd % len(todo)]
        for c in order:
            time.sleep(CHUNK_PAUSE_S)
            start = time.time()
            try:
                for _ in range(chunk[c.role]):
                    t0 = time.perf_counter()
                    c.run()
                    c.ms.append((time.perf_counter() - t0) * 1000.0)
            except Exception as e:
                c.error = f"{type(e).__name__}: {str(e)[:300]}"
            c.windows.append((start, time.time()))
        rnd += 1
        if callback:
            done = min(1.0, min(min(sum(c.ms) / (cfg.duration_s * 1000), len(c.ms) / cfg.iterations) for c in live))
            callback.on_advance(0, progress=done)
    if callback:
        callback.on_phase_end()


def _result(cfg: BenchConfig, spec: dict, c: _Case, batch: int, size: int, num_domains: int, sampler) -> dict[str, Any]:
    r: dict[str, Any] = {
        "model": spec["file"].name,
        "role": spec["role"],
        "batch": batch,
        "file_mb": spec["file"].stat().st_size / 2**20,
        "macs": round(spec["macs"]),
        "params": _onnx_params(spec["file"]),
    }
    if c.error or not c.ms:
        r["error"] = c.error or "no measurements"
        return r
    lat = latency_stats(c.ms)
    r["latency_ms"] = lat
    r["iterations"] = len(c.ms)
    r["throughput"] = batch * len(c.ms) / (sum(c.ms) / 1000.0)
    if cfg.memory:
        mem = _probe_memory(cfg, spec["file"], batch, size, num_domains if spec["multi"] else 0)
        if "error" in mem:
            r["memory_error"] = mem["error"]
        else:
            r["peak_rss_mb"] = mem["peak_rss_mb"]
            r["rss_delta_mb"] = mem["peak_rss_mb"] - mem["baseline_rss_mb"]
            for k in ("gpu_mem_delta_mb", "ram_delta_mb"):
                if k in mem:
                    r[k] = mem[k]
    if sampler is not None:
        w = sampler.window(c.windows)
        r["tegrastats"] = w
        if w.get("power_mw_mean"):
            r["power_w_mean"] = w["power_mw_mean"] / 1000.0
            r["energy_mj_per_image"] = w["power_mw_mean"] * lat["mean"] / 1000.0 / batch
    return r


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


def validate_bench(doc: Any) -> dict[str, Any]:
    """Check a ``bap.bench/1`` document; raises :class:`IncompatibleArtifactError` naming the bad key."""

    def fail(msg: str) -> IncompatibleArtifactError:
        return IncompatibleArtifactError(f"bench JSON: {msg}", "re-run bap bench")

    if not isinstance(doc, dict) or doc.get("format") != BENCH_FORMAT:
        raise fail(f"format must be {BENCH_FORMAT}")
    if not isinstance(doc.get("device"), dict):
        raise fail("device must be an object")
    res = doc.get("results")
    if not isinstance(res, list) or not res:
        raise fail("results must be a non-empty list")
    for i, r in enumerate(res):
        for k, t in (("model", str), ("batch", int), ("file_mb", float), ("macs", int), ("params", int)):
            if not isinstance(r.get(k), (t, int) if t is float else t):
                raise fail(f"results[{i}].{k} missing or of the wrong type")
        if "error" in r:
            continue
        lat = r.get("latency_ms")
        if not isinstance(lat, dict) or any(
            not isinstance(lat.get(k), (int, float)) for k in ("min", "mean", "median", "p90", "p95", "p99")
        ):
            raise fail(f"results[{i}].latency_ms must hold min/mean/median/p90/p95/p99")
        if not lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"]:
            raise fail(f"results[{i}].latency_ms percentiles are not ordered")
        if not isinstance(r.get("throughput"), (int, float)) or r["throughput"] <= 0:
            raise fail(f"results[{i}].throughput must be > 0")
    rat = doc.get("ratios")
    if not isinstance(rat, list):
        raise fail("ratios must be a list")
    for i, q in enumerate(rat):
        for k in ("batch", "latency", "throughput", "macs", "params", "file_size", "peak_rss"):
            if k not in q:
                raise fail(f"ratios[{i}].{k} is missing")
    return doc
