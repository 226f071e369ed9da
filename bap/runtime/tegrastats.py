"""Parse ``tegrastats`` lines (JetPack 4 to 7) and sample them during benchmark windows.

The line format varies by L4T release (recorded lines from each release are in ``tests/runtime/test_tegrastats.py``): optional timestamp; ``RAM used/totalMB``;
optional ``SWAP``; ``CPU [..]`` or L4T 28's ``cpu [..]@MHz``; ``GR3D_FREQ p%``, ``p%@MHz``, ``p%@[MHz,MHz]`` (JetPack 7)
or ``GR3D p%@MHz`` (L4T 28); rails ``NAME inst/avg`` without unit (JetPack 4), ``NAMEmW/mW`` (5/6) or three values
(7). Unknown tokens are ignored. Board power is ``VDD_IN`` (Orin NX/Nano, Xavier NX), ``POM_5V_IN`` (Nano), else the
sum of rails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TegraSample", "TegrastatsSampler", "parse_tegrastats"]

_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kMG])B")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kMG])B")
_CPU = re.compile(r"\b[Cc][Pp][Uu] \[([^\]]*)\](?:@(\d+))?")
_GPU = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@(\[[\d,]+\]|\d+))?")
_GPU_ARRAY_ONLY = re.compile(r"\bGR3D_FREQ @\[([\d,]+)\]")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?[\d.]+)C(?:/(-?[\d.]+)C)?")
# NAME inst/avg[/x] with optional mW units; names are upper case (VDD_IN, POM_5V_IN, GPU, CPU, SYS5V, NC, ...)
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")
_UNIT = {"k": 1 / 1024, "M": 1.0, "G": 1024.0}
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


@dataclass
class TegraSample:
    """One parsed line."""

    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    swap_used_mb: float | None = None
    cpu_load: list[float | None] = field(default_factory=list)
    gpu_load: float | None = None
    gpu_mhz: list[int] = field(default_factory=list)
    rails_mw: dict[str, float] = field(default_factory=dict)
    temps_c: dict[str, float] = field(default_factory=dict)
    t: float = 0.0

    @property
    def board_power_mw(self) -> float | None:
        """``VDD_IN`` / ``POM_5V_IN`` when present, else the sum of rails (instantaneous, mW)."""
        for name in ("VDD_IN", "POM_5V_IN"):
            if name in self.rails_mw:
                return self.rails_mw[name]
        return sum(self.rails_mw.values()) if self.rails_mw else None


def _parse_memory(line: str, s: TegraSample) -> None:
    if m := _RAM.search(line):
        u = _UNIT[m.group(3)]
        s.ram_used_mb, s.ram_total_mb = float(m.group(1)) * u, float(m.group(2)) * u
    if m := _SWAP.search(line):
        s.swap_used_mb = float(m.group(1)) * _UNIT[m.group(3)]


def _parse_loads(line: str, s: TegraSample) -> None:
    if m := _CPU.search(line):
        toks = (tok.strip() for tok in m.group(1).split(","))
        s.cpu_load = [None if tok in ("off", "") else float(tok.split("%")[0]) for tok in toks]
    if m := _GPU.search(line):
        s.gpu_load = float(m.group(1))
        if m.group(2):
            s.gpu_mhz = [int(v) for v in m.group(2).strip("[]").split(",") if v]
    elif m := _GPU_ARRAY_ONLY.search(line):
        s.gpu_mhz = [int(v) for v in m.group(1).split(",") if v]


def _parse_rails(line: str) -> dict[str, float]:
    rails: dict[str, float] = {}
    for m in _RAIL.finditer(line):
        name = m.group(1)
        if name in _NOT_RAILS:
            continue
        if name in rails:  # repeated names (NC twice on AGX Orin): keep them apart
            k = 2
            while f"{name}_{k}" in rails:
                k += 1
            name = f"{name}_{k}"
        rails[name] = float(m.group(2))
    return rails


def parse_tegrastats(line: str) -> TegraSample:
    """Parse one tegrastats line into a :class:`TegraSample` (fields absent from the line stay ``None``)."""
    s = TegraSample(t=time.time())
    _parse_memory(line, s)
    _parse_loads(line, s)
    s.rails_mw = _parse_rails(line)
    for m in _TEMP.finditer(line):
        v = float(m.group(2))
        if v > -256:  # -256C means the sensor is off
            s.temps_c[m.group(1)] = v
    return s


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` in the background and keeps timestamped samples."""

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats"):
        self.interval_ms = interval_ms
        self.command = command
        self.samples: list[TegraSample] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available(command: str = "tegrastats") -> bool:
        """True if the tegrastats binary is on PATH."""
        return shutil.which(command) is not None

    def start(self) -> TegrastatsSampler:
        """Start sampling."""
        self._proc = subprocess.Popen(
            [self.command, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

        def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                self.samples.append(parse_tegrastats(line))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def window(self, windows: list[tuple[float, float]]) -> dict[str, Any]:
        """Mean board power, RAM and GPU load over the samples inside the given ``(start, end)`` windows."""
        sel = [s for s in self.samples if any(a <= s.t <= b for a, b in windows)]
        if not sel:
            return {"samples": 0}

        def mean(vals):
            vals = [v for v in vals if v is not None]
            return sum(vals) / len(vals) if vals else None

        return {
            "samples": len(sel),
            "power_mw_mean": mean([s.board_power_mw for s in sel]),
            "power_mw_max": max((s.board_power_mw or 0.0) for s in sel),
            "ram_used_mb_mean": mean([s.ram_used_mb for s in sel]),
            "gpu_load_mean": mean([s.gpu_load for s in sel]),
            "temps_c_max": {k: max(s.temps_c.get(k, -1e9) for s in sel) for k in sel[-1].temps_c},
        }
