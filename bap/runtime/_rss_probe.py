"""Peak memory of one model in a fresh process (run by ``bap bench``; imports only numpy and the runtime).

    python -m bap.runtime._rss_probe EXPORT_DIR --role backbone --batch 8 --size 32 --domains 5 \
        [--backend ort] [--threads N] [--device cpu]

The model is opened as ``bap bench`` opens it (:func:`bap.runtime.backends.open_backend`: the role's file, the
manifest's ONNX Runtime settings); the bench has already verified the file's checksum.

Prints one JSON line: ``peak_rss_mb`` (the process's lifetime peak), ``baseline_rss_mb`` (after imports, before
the session) and, where measurable, ``gpu_mem_delta_mb`` (NVML, desktop GPUs) or ``ram_delta_mb`` (Jetson: unified
memory, from /proc/meminfo).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS:")


def _peak_rss_mb() -> float:
    """Peak RSS of this process image (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and exec, so every probe spawned by a
    large ``bap bench`` process reported at least the parent's size.
    """
    peak = _status_mb("VmHWM:")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _gpu_used_mb() -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used / 2**20
        pynvml.nvmlShutdown()
        return used
    except Exception:  # NVML absent (CPU machines, Jetson)
        return None


def main(argv: list[str] | None = None) -> None:
    """Open one model of an export, run it, print its memory facts as one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("export")
    p.add_argument("--role", default="multi-domain", help="multi-domain, backbone or specialised:<domain>")
    p.add_argument("--backend", default="ort")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--domains", type=int, default=0, help="number of domains (0: single-domain model)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)
    import numpy as np

    from bap.exporter.manifest import read_manifest
    from bap.runtime.backends import open_backend

    manifest = read_manifest(a.export)
    if a.backend == "ort":  # the baseline includes the runtime library: the delta is the session and its runs
        import onnxruntime  # noqa: F401
    base_rss, base_gpu, base_avail = _rss_mb(), _gpu_used_mb(), _mem_available_mb()
    be = open_backend(a.backend, a.export, manifest, a.role, a.device, a.threads or None, verify=False)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.random((a.batch, 3, a.size, a.size), dtype=np.float32)}
    for i in range(max(a.runs, a.domains)):
        if a.domains:  # rotate as the timed runs do: every branch of a routed model runs at least once
            feeds["domain"] = ((np.arange(a.batch) + i) % a.domains).astype(np.int64)
        be.run(feeds)
    out = {"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": base_rss, "providers": be.providers}
    gpu = _gpu_used_mb()
    if gpu is not None and base_gpu is not None:
        out["gpu_mem_delta_mb"] = gpu - base_gpu
    avail = _mem_available_mb()
    if a.device == "jetson" and avail is not None and base_avail is not None:
        out["ram_delta_mb"] = base_avail - avail
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
