"""Peak memory of one model in a fresh process (run by ``bap bench``; imports only numpy and the runtime).

    python -m bap.runtime._rss_probe MODEL.onnx --batch 8 --size 32 --domains 5 [--threads N] [--device cpu]

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
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--domains", type=int, default=0, help="number of domains (0: single-domain model)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)
    import numpy as np
    import onnxruntime as ort

    providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}.get(
        a.device, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    providers = [x for x in providers if x in ort.get_available_providers()]
    base_rss, base_gpu, base_avail = _rss_mb(), _gpu_used_mb(), _mem_available_mb()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if a.threads:
        so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, so, providers=providers)
    rng = np.random.default_rng(0)
    feeds = {"image": rng.random((a.batch, 3, a.size, a.size), dtype=np.float32)}
    names = {i.name for i in sess.get_inputs()}
    for i in range(max(a.runs, a.domains)):
        if a.domains:  # rotate as the timed runs do: every branch of a routed model runs at least once
            feeds["domain"] = ((np.arange(a.batch) + i) % a.domains).astype(np.int64)
        sess.run(None, {k: v for k, v in feeds.items() if k in names})
    out = {
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": base_rss,
        "providers": sess.get_providers(),
    }
    gpu = _gpu_used_mb()
    if gpu is not None and base_gpu is not None:
        out["gpu_mem_delta_mb"] = gpu - base_gpu
    avail = _mem_available_mb()
    if a.device == "jetson" and avail is not None and base_avail is not None:
        out["ram_delta_mb"] = base_avail - avail
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
