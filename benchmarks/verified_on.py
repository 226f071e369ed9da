"""Regenerate README.md's "Verified on" block from measurement, not from memory.

The block between ``<!-- verified-on:start -->`` and ``<!-- verified-on:end -->`` in README.md's section
"Verified on / not verified on" gets two parts:

- this machine now: OS, CPU, cores, RAM, GPU and the library versions (``_common.machine_facts``, the facts every
  benchmark script records);
- per result file in ``benchmarks/results/*.json``: the date, CPU, onnxruntime and torch it was measured with (the
  ``machine`` key the scripts write, or the ``device`` key of a ``bap bench --json`` file).

The hand-written parts of the section (what has not been run on hardware) stay outside the markers.

    python benchmarks/verified_on.py           # rewrite the block in README.md
    python benchmarks/verified_on.py --check   # exit 1 if the results part is stale (tests/test_readme.py checks it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START = "<!-- verified-on:start -->"
END = "<!-- verified-on:end -->"
REGENERATE = "python benchmarks/verified_on.py"
NOT_RECORDED = "not recorded"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _date(value: Any) -> str:
    """``2026-11-22 08:13 UTC`` or ``2026-11-23T09:00:07+0000`` -> ``2026-11-22``; anything else as recorded."""
    if not isinstance(value, str) or not value:
        return NOT_RECORDED
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").astimezone(dt.timezone.utc).strftime("%Y-%m-%d")
    except ValueError:
        return value.split()[0].split("T")[0]


def recorded_machine(doc: dict[str, Any]) -> dict[str, Any] | None:
    """What a result file says it was measured on: ``{date, cpu, versions}``, or None if it does not say."""
    if isinstance(doc.get("machine"), dict):  # benchmarks/*.py (write_results)
        m = doc["machine"]
        return {"date": m.get("date"), "cpu": m.get("cpu"), "versions": m.get("versions") or {}}
    if str(doc.get("format", "")).startswith("bap.bench/") and isinstance(doc.get("device"), dict):  # bap bench --json
        d = doc["device"]
        return {"date": doc.get("created"), "cpu": d.get("cpu"), "versions": d.get("versions") or {}}
    return None


def result_rows(results: Path = RESULTS) -> list[list[str]]:
    """One row per ``results/*.json``: file, date, CPU, onnxruntime, torch (sorted by file name)."""
    rows = []
    for path in sorted(results.glob("*.json")):
        m = recorded_machine(json.loads(path.read_text()))
        if m is None:
            rows.append([f"`{path.name}`", NOT_RECORDED, NOT_RECORDED, NOT_RECORDED, NOT_RECORDED])
            continue
        v = m["versions"]
        rows.append(
            [
                f"`{path.name}`",
                _date(m["date"]),
                str(m["cpu"] or NOT_RECORDED),
                str(v.get("onnxruntime", NOT_RECORDED)),
                str(v.get("torch", NOT_RECORDED)),
            ]
        )
    return rows


def results_part(results: Path = RESULTS) -> str:
    """The part of the block that follows from the result files alone (the same on every machine)."""
    rows = result_rows(results)

    def distinct(i: int) -> str:
        return ", ".join(sorted({r[i] for r in rows if r[i] != NOT_RECORDED})) or NOT_RECORDED

    head = (
        f"**Benchmark results** (`benchmarks/results/*.json`, {len(rows)} files) were measured on CPU "
        f"{distinct(2)}; onnxruntime {distinct(3)}; torch {distinct(4)}:"
    )
    return head + "\n\n" + _table(["result file", "date", "CPU", "onnxruntime", "torch"], rows)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu() -> str:
    try:
        from bap.runtime.devices import cuda_present

        return "an NVIDIA GPU" if cuda_present() else "no GPU"
    except Exception:  # the GPU probe is a fact to report, never a reason to fail
        return "GPU unknown"


def machine_part(facts: dict[str, Any]) -> str:
    """This machine now (differs between machines, so the tests never compare it)."""
    flags = _cpu_flags()
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    ram = f"{facts['ram_gib']} GiB RAM" if facts.get("ram_gib") else "RAM unknown"
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items() if v != "absent")
    absent = [k for k, v in facts["versions"].items() if v == "absent"]
    line = (
        f"**This machine** (block generated {facts['date']}): {facts['os']} ({facts.get('arch', '?')}), "
        f"{facts['cpu']} ({simd}), {facts['logical_cpus']} logical CPUs, {ram}, {_gpu()}; {versions}."
    )
    return line + (f" Not installed: {', '.join(absent)}." if absent else "")


def block(facts: dict[str, Any], results: Path = RESULTS) -> str:
    """The whole block, markers included."""
    note = f"<!-- generated by `{REGENERATE}` from this machine and benchmarks/results/*.json; do not edit -->"
    return "\n\n".join([START, note, machine_part(facts), results_part(results), END])


def extract(text: str) -> str | None:
    """The block in ``text`` (markers included), or None if the markers are missing."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        return None
    return text[i : j + len(END)]


def replace(text: str, new_block: str) -> str:
    """``text`` with its block replaced by ``new_block``."""
    old = extract(text)
    if old is None:
        raise SystemExit(f"README.md lacks the markers {START} ... {END} (in 'Verified on / not verified on')")
    return text.replace(old, new_block, 1)


def stale(text: str, results: Path = RESULTS) -> str | None:
    """Why the README's results part does not match the result files (a diff), or None if it does."""
    current = extract(text)
    want = results_part(results)
    if current is None:
        return f"README.md lacks the markers {START} ... {END}"
    if want in current:
        return None
    have = current.removesuffix(END).rstrip().split("**Benchmark results**", 1)[-1]
    diff = difflib.unified_diff(
        ("**Benchmark results**" + have).splitlines(), want.splitlines(), "README.md", "result files", lineterm=""
    )
    return "\n".join(diff)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if the results part of the block is stale")
    p.add_argument("--readme", type=Path, default=README)
    a = p.parse_args()
    text = a.readme.read_text()
    if a.check:
        why = stale(text)
        if why:
            print(f"{a.readme}: the verified-on block is stale; run `{REGENERATE}`\n{why}", file=sys.stderr)
            return 1
        print(f"{a.readme}: the verified-on block matches benchmarks/results/*.json")
        return 0
    from _common import machine_facts

    new = replace(text, block(machine_facts()))
    if new != text:
        from bap.core.io import atomic_write_text

        atomic_write_text(a.readme, new)
    print(extract(new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
