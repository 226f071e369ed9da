import json
import shutil

import pytest

from bap.core.io import file_sha256
from bap.errors import ConfigError, UnsupportedDeviceError
from bap.exporter.manifest import read_manifest
from bap.runtime.bench import BenchConfig, bench, latency_stats, percentile, validate_bench
from bap.runtime.devices import DEVICES, cuda_present, detect_jetson, parse_jetson_clocks


def test_trtexec_percentiles():
    ms = [float(i) for i in range(1, 101)]
    # trtexec: sorted[n - 1 - int((1 - p/100) * n)] in float32; for n = 100, p99 rounds to the largest sample
    assert percentile(ms, 90) == 90.0 and percentile(ms, 95) == 95.0 and percentile(ms, 99) == 100.0
    assert percentile(ms, 50) == 50.0 and percentile([5.0], 99) == 5.0
    s = latency_stats([3.0, 1.0, 2.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["mean"] == 2.5


@pytest.fixture(scope="module")
def bench_doc(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    export_dir = out / "export"
    shutil.copytree(tiny_export[0], export_dir)
    # this case must fail alone: a file that passes the integrity check (its manifest entry matches) but cannot run
    bad = export_dir / "specialised-faces.onnx"
    bad.write_bytes(b"not an onnx file")
    doc = json.loads((export_dir / "manifest.json").read_text())
    doc["files"][bad.name].update(bytes=bad.stat().st_size, sha256=file_sha256(bad))
    (export_dir / "manifest.json").write_text(json.dumps(doc))
    cfg = BenchConfig(
        export=str(export_dir), batch_sizes=(1, 4), warmup_s=0.05, duration_s=0.2, iterations=5, threads=1
    )
    return bench(cfg)


def test_bench_json_validates_and_ratios_are_ratios_of_medians(bench_doc):
    doc = validate_bench(json.loads(json.dumps(bench_doc)))
    base = {r["batch"]: r for r in doc["results"] if r["role"] == "backbone"}
    by = {(r["batch"], r["model"]): r for r in doc["results"]}
    assert doc["ratios"]
    for q in doc["ratios"]:
        r, b = by[(q["batch"], q["model"])], base[q["batch"]]
        assert q["latency"] == pytest.approx(r["latency_ms"]["median"] / b["latency_ms"]["median"])
        assert q["throughput"] == pytest.approx(r["throughput"] / b["throughput"])
        assert q["macs"] == pytest.approx(r["macs"] / b["macs"])
        assert q["file_size"] == pytest.approx(r["file_mb"] / b["file_mb"])
        assert q["peak_rss"] == pytest.approx(r["peak_rss_mb"] / b["peak_rss_mb"])
    md = [q for q in doc["ratios"] if q["role"] == "multi-domain"]
    assert [q["batch"] for q in md] == [1, 4]
    assert all(q["macs"] < 1 for q in md)
    for r in doc["results"]:
        if "error" not in r:
            assert r["iterations"] >= 5 and r["peak_rss_mb"] > 0
            lat = r["latency_ms"]
            assert lat["min"] <= lat["median"] <= lat["p99"] <= lat["max"]
    assert doc["device"]["device"] == "cpu" and doc["device"]["providers"] == ["CPUExecutionProvider"]


def test_a_failing_case_is_recorded_not_fatal(bench_doc):
    bad = [r for r in bench_doc["results"] if r["role"] == "specialised:faces"]
    assert len(bad) == 2 and all("error" in r for r in bad)
    assert all("error" not in r for r in bench_doc["results"] if r["role"] != "specialised:faces")


def _ort_has(provider):
    import onnxruntime as ort

    return provider in ort.get_available_providers()


def test_devices_do_what_detection_says_on_this_machine(tiny_export):
    """Holds on any machine: a device detection says is absent refuses, one it says is present runs."""
    cuda, jetson = DEVICES.get("cuda"), DEVICES.get("jetson")
    assert cuda.available() == cuda_present()
    assert jetson.available() == (detect_jetson() is not None)
    quick = dict(export=str(tiny_export[0]), batch_sizes=(1,), warmup_s=0, duration_s=0.05, iterations=2, memory=False)
    if not cuda.available():
        with pytest.raises(UnsupportedDeviceError, match="no NVIDIA GPU"):
            bench(BenchConfig(**quick, device="cuda"))
    elif not _ort_has("CUDAExecutionProvider"):  # a GPU, but ONNX Runtime without CUDA: refused, not run on the CPU
        with pytest.raises(UnsupportedDeviceError, match="CUDAExecutionProvider"):
            bench(BenchConfig(**quick, device="cuda"))
    else:
        doc = bench(BenchConfig(**quick, device="cuda"))
        assert doc["device"]["providers"][0] == "CUDAExecutionProvider"
    if not jetson.available():
        with pytest.raises(UnsupportedDeviceError, match="not a Jetson"):
            bench(BenchConfig(**quick, device="jetson"))
    with pytest.raises(ConfigError, match="--backend trt needs"):
        BenchConfig(export="x", backend="trt")


def test_jetson_detection_from_files(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n"
    )
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_text(
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00"
    )
    info = detect_jetson(str(tmp_path))
    assert info["model"].startswith("NVIDIA Jetson Orin Nano") and "R36" in info["l4t_release"]


def test_jetson_clocks_parser():
    locked = "cpu0: Online=1 Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000\nGPU MinFreq=1020000000 MaxFreq=1020000000 CurrentFreq=1020000000"
    free = "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=729600"
    assert parse_jetson_clocks(locked) == "locked"
    assert parse_jetson_clocks(free) == "not locked"
    assert parse_jetson_clocks("") == "unknown"


def test_compare_times_another_layout_and_domains_rotate(tiny_export, tiny_run, tmp_path, monkeypatch):
    from bap.exporter import ExportConfig, export
    from bap.runtime import bench as bench_mod

    tables = tmp_path / "other-export"
    export(ExportConfig(run_dir=str(tiny_run[0]), budget=0.5, out=str(tables), graph="tables", validation_images=4))
    seen = []
    real = bench_mod._Case.run

    def spy(self):
        if self.role == "multi-domain":
            seen.append(self.feeds[self.calls % len(self.feeds)]["domain"].tolist())
        real(self)

    monkeypatch.setattr(bench_mod._Case, "run", spy)
    doc = bench(
        BenchConfig(
            export=str(tiny_export[0]),
            compare=(str(tables),),
            batch_sizes=(1,),
            warmup_s=0.0,
            duration_s=0.05,
            iterations=10,
            threads=1,
            memory=False,
            specialised=False,
        )
    )
    roles = {r["role"]: r for r in doc["results"]}
    assert set(roles) == {"multi-domain", "backbone", "compare:tables"}  # labelled by the compared export's graph
    manifest = read_manifest(tiny_export[0])
    assert manifest.graph == "routed"
    executed = manifest.macs_executed
    assert roles["multi-domain"]["macs"] == round(sum(executed.values()) / len(executed))  # even mix of branches
    assert roles["compare:tables"]["macs"] == read_manifest(tables).macs.model
    # at batch 1 the domain rotates per call: every domain gets (nearly) the same share of the iterations
    counts = [sum(1 for s in seen if s == [d]) for d in range(len(executed))]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1
    assert doc["device"]["chunk_pause_s"] > 0
    with pytest.raises(ConfigError, match="twice"):
        bench(BenchConfig(export=str(tiny_export[0]), compare=(str(tables), str(tables)), batch_sizes=(1,)))


def test_memory_probe_does_not_inherit_the_parents_peak(tiny_export):
    from bap.runtime.bench import _models, _probe_memory

    ballast = bytearray(600 * 2**20)  # the bench process is large (torch, several sessions)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page so it is resident
    cfg = BenchConfig(export=str(tiny_export[0]), threads=1)
    specs = _models(cfg, read_manifest(tiny_export[0]), tiny_export[0], ["mnist"])
    mem = _probe_memory(cfg, next(s for s in specs if s.role == "backbone"), 1, 32, 0)
    assert 0 < mem["baseline_rss_mb"] <= mem["peak_rss_mb"] < 400, mem  # measures the probe, not its parent
    del ballast
