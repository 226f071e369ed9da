"""Review fixes of ``bap bench`` and ``bap summary``: files verified before timing, outputs checked before timing,
an export's ONNX file standing for its directory, failures printed in full, and a summary that does not crash on
odd but valid inputs."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from bap.core.io import file_sha256
from bap.errors import ConfigError, IncompatibleArtifactError, IntegrityError, MissingDependencyError

QUICK = ["--batch-sizes", "1", "--duration-s", "0.05", "--warmup-s", "0", "--iterations", "2", "--no-memory"]


def _copy(tiny_export, tmp_path, name="export"):
    dst = tmp_path / name
    shutil.copytree(tiny_export[0], dst)
    return dst


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(export, fn):
    doc = json.loads((export / "manifest.json").read_text())
    fn(doc)
    (export / "manifest.json").write_text(json.dumps(doc))


@pytest.fixture
def no_timing(monkeypatch):
    """Fail the test if the timing run starts (every check must come before it)."""
    from bap.runtime import bench as bench_mod

    def refuse(*args, **kw):
        raise AssertionError("the bench ran before the inputs were checked")

    monkeypatch.setattr(bench_mod, "_measure", refuse)


# ------------------------------------------------------------------------------------------------ 1. integrity
def test_a_modified_specialised_model_is_refused_before_timing(tiny_export, tmp_path, run_cli, no_timing):
    bad = _copy(tiny_export, tmp_path)
    name = sorted(p.name for p in bad.glob("specialised-*.onnx"))[0]
    _flip(bad / name)
    out = tmp_path / "b.json"
    code, stdout, err, error = run_cli(["bench", bad, *QUICK, "--json", out])
    assert code == 2 and isinstance(error, IntegrityError), err
    assert len(err.strip().splitlines()) == 1 and name in err and "modified" in err, err
    assert not out.exists() and not stdout.strip()


def test_a_missing_listed_specialised_model_is_refused(tiny_export, tmp_path, run_cli, no_timing):
    bad = _copy(tiny_export, tmp_path)
    name = sorted(p.name for p in bad.glob("specialised-*.onnx"))[0]
    (bad / name).unlink()
    code, _, err, error = run_cli(["bench", bad, *QUICK])
    assert code == 2 and isinstance(error, IntegrityError) and name in err and "missing" in err, err


def test_a_modified_compared_export_is_refused_before_timing(tiny_export, tmp_path, run_cli, no_timing):
    other = _copy(tiny_export, tmp_path, "other")
    _flip(other / "model.onnx")
    out = tmp_path / "b.json"
    code, _, err, error = run_cli(["bench", tiny_export[0], *QUICK, "--compare", other, "--json", out])
    assert code == 2 and isinstance(error, IntegrityError), err
    assert len(err.strip().splitlines()) == 1 and str(other / "model.onnx") in err, err
    assert not out.exists()


def _undetectable_damage(export, name):
    """A file that passes the integrity check (its manifest entry is updated) but cannot run."""
    bad = export / name
    bad.write_bytes(b"not an onnx file")
    _edit_manifest(export, lambda d: d["files"][name].update(bytes=bad.stat().st_size, sha256=file_sha256(bad)))


def test_a_backbone_that_fails_at_run_time_is_a_row_and_exits_non_zero(tiny_export, tmp_path, run_cli):
    bad = _copy(tiny_export, tmp_path)
    _undetectable_damage(bad, "backbone.onnx")
    out = tmp_path / "b.json"
    code, stdout, err, error = run_cli(["bench", bad, *QUICK, "--json", out])
    assert code == 2 and isinstance(error, IncompatibleArtifactError), err
    assert "the backbone failed at batch 1" in err and "no ratios" in err, err
    rows = {r["role"]: r for r in json.loads(out.read_text())["results"]}  # the record is complete
    assert "error" in rows["backbone"] and "error" not in rows["multi-domain"]
    assert "failed: backbone at batch 1:" in stdout, stdout


def test_a_specialised_model_that_fails_at_run_time_is_printed_in_full(tiny_export, tmp_path, run_cli, width80):
    bad = _copy(tiny_export, tmp_path)
    name = sorted(p.name for p in bad.glob("specialised-*.onnx"))[0]
    role = "specialised:" + name.removeprefix("specialised-").removesuffix(".onnx")
    _undetectable_damage(bad, name)
    out = tmp_path / "b.json"
    code, stdout, err, _ = run_cli(["bench", bad, *QUICK, "--json", out])
    assert code == 0, err
    row = next(r for r in json.loads(out.read_text())["results"] if r["role"] == role)
    assert len(row["error"]) > 60
    squeezed = "".join(stdout.split())  # rich folds the long line at 80 columns: whole, not cut into a cell
    assert "".join(f"failed: {role} at batch 1: {row['error']}".split()) in squeezed, stdout
    assert "…" not in stdout


@pytest.fixture
def width80(monkeypatch):
    from bap.cli import _console

    monkeypatch.setattr(_console.console, "_width", 80)
    monkeypatch.setattr(_console.err_console, "_width", 80)


# ------------------------------------------------------------------------------------------------ 2. output paths
@pytest.mark.parametrize("flag", ["--json", "--plot"])
@pytest.mark.parametrize("where", ["proc", "directory", "no-parent"])
def test_bad_output_paths_are_refused_before_timing(tiny_export, tmp_path, run_cli, no_timing, flag, where):
    path = {"proc": "/proc/x.out", "directory": tmp_path, "no-parent": tmp_path / "nope" / "x.out"}[where]
    code, _, err, error = run_cli(["bench", tiny_export[0], *QUICK, flag, path])
    assert code == 2 and isinstance(error, ConfigError), err
    assert len(err.strip().splitlines()) == 1 and flag in err, err


def test_plot_without_matplotlib_is_refused_before_timing(tiny_export, tmp_path, run_cli, no_timing, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err, error = run_cli(["bench", tiny_export[0], *QUICK, "--plot", tmp_path / "p.png"])
    assert code == 2 and isinstance(error, MissingDependencyError) and "pip install 'bap[plot]'" in err, err


def test_the_table_prints_before_the_plot(tiny_export, tmp_path, run_cli, monkeypatch):
    from bap.runtime import plots

    def broken(doc, path):
        raise MissingDependencyError("plot failed on purpose", "nothing to do")

    monkeypatch.setattr(plots, "plot_bench", broken)
    code, stdout, err, _ = run_cli(["bench", tiny_export[0], *QUICK, "--plot", tmp_path / "p.png"])
    assert code == 2 and "plot failed on purpose" in err
    assert "multi-domain" in stdout and "backbone" in stdout  # the measured table survived the failed plot


# ------------------------------------------------------------------------------------------------ 3. a file for EXPORT
def test_bench_of_an_exports_model_onnx_uses_its_directory(tiny_export, tmp_path, run_cli):
    out = tmp_path / "b.json"
    code, _, err, _ = run_cli(["bench", tiny_export[0] / "model.onnx", *QUICK, "--json", out])
    assert code == 0, err
    assert json.loads(out.read_text())["export"] == str(tiny_export[0].resolve())


@pytest.mark.parametrize("command", ["bench", "summary"])
def test_another_file_for_export_says_to_pass_the_directory(tiny_run, tiny_export, tmp_path, run_cli, command):
    lone = tmp_path / "model.onnx"  # an ONNX file outside any export
    shutil.copy(tiny_export[0] / "model.onnx", lone)
    for path in (lone, tiny_export[0] / "backbone.onnx.txt", tiny_run[0] / "report.json"):
        if not path.exists():
            path = tmp_path / path.name
            path.write_text("x")
        args = ["bench", path, *QUICK] if command == "bench" else ["summary", "--run", tiny_run[0], "--export", path]
        code, _, err, error = run_cli(args)
        assert code == 2 and isinstance(error, ConfigError), err
        assert "needs an export directory" in err and "pass the directory bap export wrote" in err, err
        assert "not valid JSON" not in err


def test_summary_of_an_exports_model_onnx_uses_its_directory(tiny_run, tiny_export, run_cli):
    code, out, err, _ = run_cli(["summary", "--run", tiny_run[0], "--export", tiny_export[0] / "model.onnx"])
    assert code == 0, err
    assert "Summary" in out and not err.strip()  # the run and export belong together: no warning


# ------------------------------------------------------------------------------------------------ 4-6. bap summary
def _bench_doc(export, *, backbone_ok=True):
    lat = {"min": 1.0, "mean": 1.1, "median": 1.1, "p90": 1.2, "p95": 1.3, "p99": 1.4, "max": 1.5, "std": 0.1}
    row = {"model": "model.onnx", "role": "multi-domain", "batch": 1, "file_mb": 0.1, "macs": 50, "params": 10,
           "latency_ms": lat, "iterations": 5, "throughput": 900.0}  # fmt: skip
    base = {**row, "model": "backbone.onnx", "role": "backbone", "macs": 100}
    if not backbone_ok:
        base = {k: v for k, v in base.items() if k not in ("latency_ms", "iterations", "throughput")}
        base["error"] = "RuntimeError: out of memory"
    ratios = [] if not backbone_ok else [{"batch": 1, "model": "model.onnx", "role": "multi-domain", "latency": 1.0,
              "throughput": 1.0, "macs": 0.5, "params": 1.0, "file_size": 1.0, "peak_rss": None}]  # fmt: skip
    return {"format": "bap.bench/1", "export": str(export.resolve()), "device": {"cpu": "test", "logical_cpus": 2},
            "input_size": 32, "results": [row, base], "ratios": ratios}  # fmt: skip


def _write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_summary_without_gather_threshold_says_export_settings(tiny_run, tiny_export, tmp_path, run_cli):
    exp = _copy(tiny_export, tmp_path)
    _edit_manifest(exp, lambda d: d["export_config"].pop("gather_threshold"))
    bench = _write(tmp_path / "b.json", _bench_doc(exp))
    code, out, err, _ = run_cli(["summary", "--run", tiny_run[0], "--export", exp, "--bench", bench])
    assert code == 0, err
    flat = " ".join(out.split())
    assert "export settings (round-to" in flat and "export defaults" not in flat and "gather" not in flat, out
    # the defaults again (the fixture exports --graph routed explicitly; the default is auto)
    _edit_manifest(exp, lambda d: d["export_config"].update(gather_threshold=0.5, graph="auto"))
    code, out, err, _ = run_cli(["summary", "--run", tiny_run[0], "--export", exp, "--bench", bench])
    assert code == 0 and "export defaults (round-to 8, gather threshold 0.5)" in " ".join(out.split()), out


def test_summary_refuses_a_report_that_is_not_an_object(tiny_export, tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text("[1, 2]")
    code, _, err, error = run_cli(["summary", "--run", run, "--export", tiny_export[0]])
    assert code == 2 and isinstance(error, IncompatibleArtifactError), err
    assert "is not a JSON object" in err and "re-create it" in err and len(err.strip().splitlines()) == 1, err


def test_summary_names_a_run_directory_that_does_not_exist(tiny_export, tmp_path, run_cli):
    code, _, err, error = run_cli(["summary", "--run", tmp_path / "nope", "--export", tiny_export[0]])
    assert code == 2 and isinstance(error, IncompatibleArtifactError), err
    assert "does not exist" in err and "nope" in err and len(err.strip().splitlines()) == 1, err


def test_summary_of_a_bench_json_without_a_shared_batch_says_so(tiny_run, tiny_export, tmp_path, run_cli):
    bench = _write(tmp_path / "b.json", _bench_doc(tiny_export[0], backbone_ok=False))
    code, out, err, _ = run_cli(["summary", "--run", tiny_run[0], "--export", tiny_export[0], "--bench", bench])
    assert code == 0, err
    flat = " ".join(out.split())
    assert "no batch where both the backbone and the model ran" in flat and "no bench JSON given" not in flat, out


def test_summary_warns_when_the_files_do_not_belong_together(tiny_run, tiny_export, tmp_path, run_cli):
    other_run = tmp_path / "run"
    other_run.mkdir()
    shutil.copy(tiny_run[0] / "report.json", other_run / "report.json")
    bench = _write(tmp_path / "b.json", _bench_doc(tmp_path / "elsewhere"))
    code, out, err, _ = run_cli(["summary", "--run", other_run, "--export", tiny_export[0], "--bench", bench])
    assert code == 0 and "Summary" in out, err
    flat = " ".join(err.split())
    assert flat.count("warning:") == 2 and "not from --run" in flat and "not --export" in flat, err
