"""Interruption and concurrency: SIGKILL during training and export, run-directory locks, fuzzed inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bap.core.io import RunLock, load_state_dict
from bap.errors import IncompatibleArtifactError, InputError, RunLockedError
from bap.exporter.manifest import validate_manifest

pytestmark = pytest.mark.reliability

# --device cpu: the property is resume == uninterrupted, bit for bit, which CUDA kernels do not promise
TRAIN = ["--backbone", "test_cnn", "--budgets", "0.5", "--epochs", "3", "--steps-per-epoch", "4", "--batch-size", "16",
         "--lr-milestones", "3", "--pretrain-epochs", "1", "--device", "cpu", "--quiet"]  # fmt: skip


def _bap(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "bap", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _wait_for(path: Path, proc, timeout=240):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path} appeared: {proc.stderr.read()[-1000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


def test_sigkill_during_training_then_resume_equals_uninterrupted(tmp_path, tiny_run):
    ref = _bap("train", *TRAIN, "--out", tmp_path / "ref")
    assert ref.wait(600) == 0, ref.stderr.read()[-1000:]
    p = _bap("train", *TRAIN, "--out", tmp_path / "cut")
    _wait_for(tmp_path / "cut" / "checkpoint.pt", p)  # first epoch done
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "cut" / "report.json").exists()
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] >= 1 and ck["step"] == 0  # SIGKILL loses at most the current epoch
    # the stale lock of the killed process is detected and taken over
    assert json.loads((tmp_path / "cut" / ".lock").read_text())["pid"] == p.pid
    r = _bap("train", "--resume", "--out", tmp_path / "cut", "--quiet")
    assert r.wait(600) == 0, r.stderr.read()[-1000:]
    a = load_state_dict(tmp_path / "ref" / "budgets" / "0.5" / "state.safetensors")
    b = load_state_dict(tmp_path / "cut" / "budgets" / "0.5" / "state.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "ref" / "report.json").read_text())["runs"][0]["accuracy"]
    rb = json.loads((tmp_path / "cut" / "report.json").read_text())["runs"][0]["accuracy"]
    assert ra == rb


EXPORT_STAGES = {
    # kill as soon as ... (polled on the filesystem, so the point does not depend on how fast the machine is)
    "staging-created": lambda stage: True,
    "first-file-staged": lambda stage: any(f.is_file() for f in stage.rglob("*")),
    "manifest-staged": lambda stage: (stage / "manifest.json").exists(),
}


def _staging_dirs(out: Path) -> list[Path]:
    return [d for d in out.parent.glob(f".{out.name}.staging.*") if d.is_dir()]


def _kill_when(proc, out: Path, stage_ready, timeout: float = 600) -> str:
    """SIGKILL ``proc`` once a staging dir of ``out`` satisfies ``stage_ready``; say where it was killed."""
    t0 = time.time()
    while proc.poll() is None:
        if any(stage_ready(d) for d in _staging_dirs(out)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"export into {out} neither staged nor finished in {timeout}s")
        time.sleep(0.002)
    return "finished"  # faster than the poll: the export completed, which must then be a complete one


def _assert_complete_or_nothing(out: Path, when: str) -> str:
    """The export property: ``out`` is absent / empty, or a complete export every file of which matches the manifest."""
    from bap.exporter.manifest import read_manifest

    if not out.exists() or not any(out.iterdir()):
        return "nothing"
    m = read_manifest(out)  # a partial export would fail here (no manifest) or below (missing / truncated file)
    assert "model.onnx" in m.files, f"{when}: the manifest of {out} lists no model.onnx"
    m.verify_files(out)  # raises IntegrityError on a missing, truncated or modified file
    return "complete"


@pytest.mark.parametrize("stage", list(EXPORT_STAGES))
def test_sigkill_during_export_never_publishes_a_partial_export(tmp_path, tiny_run, stage):
    out = tmp_path / "exp"
    p = _bap("export", tiny_run[0], "--budget", "0.5", "--out", out, "--specialise", "all", "--quiet")
    how = _kill_when(p, out, EXPORT_STAGES[stage])
    if how == "finished":
        assert p.returncode == 0, p.stderr.read()[-1000:]
    state = _assert_complete_or_nothing(out, f"killed at {stage}")
    if how == "finished":
        assert state == "complete"


@pytest.mark.parametrize("stage", ["first-file-staged", "manifest-staged"])
def test_sigkill_during_re_export_keeps_a_complete_export(tmp_path, tiny_run, tiny_export, stage):
    """An existing export is never left partial: killed before the swap it is untouched, after it is the new one."""
    import shutil

    from bap.core.io import staging_dir

    keep = tmp_path / "keep"
    shutil.copytree(tiny_export[0], keep)
    before = {f.name: f.read_bytes() for f in keep.iterdir()}
    p = _bap("export", tiny_run[0], "--budget", "0.5", "--out", keep, "--specialise", "all", "--quiet")
    how = _kill_when(p, keep, EXPORT_STAGES[stage])
    before_swap = how == "killed" and bool(_staging_dirs(keep))  # the staging dir was not swapped in yet
    if not keep.exists():
        # killed between the two renames of the swap: the old export waits next to it and the next export
        # (or anything that stages into ``keep``) puts it back
        with staging_dir(keep):
            pass
    assert _assert_complete_or_nothing(keep, f"re-export killed at {stage}") == "complete"
    after = {f.name: f.read_bytes() for f in keep.iterdir()}
    if before_swap:
        assert after == before


def test_run_directory_lock(tmp_path):
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match="in use by pid"):
        RunLock(tmp_path).acquire()
    lock.release()
    # a lock left by a dead process is stale and taken over
    (tmp_path / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 12345}))
    RunLock(tmp_path).acquire().release()
    assert not (tmp_path / ".lock").exists()


def test_train_refuses_a_locked_run_dir(tmp_path, tiny_run, run_cli):
    import shutil

    out = tmp_path / "locked"
    shutil.copytree(tiny_run[0], out)
    lock = RunLock(out).acquire()  # held by this (live) process, as a concurrent bap train would
    try:
        code, _, err, _ = run_cli(["train", "--resume", "--out", out])
    finally:
        lock.release()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "in use by pid" in err


# ------------------------------------------------------------------------------------------------ fuzzing
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=json_values)
def test_fuzz_manifest_parsing_never_crashes(doc):
    try:
        validate_manifest(doc)
    except IncompatibleArtifactError as e:
        assert "\n" not in e.one_line()


@pytest.fixture(scope="module")
def valid_manifest(tiny_export):
    return json.loads((tiny_export[0] / "manifest.json").read_text())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_manifests(valid_manifest, data):
    doc = json.loads(json.dumps(valid_manifest))
    keys = sorted(doc)
    key = data.draw(st.sampled_from(keys))
    doc[key] = data.draw(json_values)
    try:
        out = validate_manifest(doc)
        assert out is doc
    except IncompatibleArtifactError as e:
        assert "manifest" in e.one_line()


@pytest.fixture(scope="module")
def runtime_model(tiny_export):
    import bap.runtime as rt

    return rt.load(tiny_export[0])


arrays = st.builds(
    lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
    st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple),
    st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64, np.bool_]),
    st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, np.nan, np.inf, 255.0]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=arrays, domain=st.one_of(st.integers(-3, 8), st.sampled_from(["mnist", "faces", "svhn", ""]), st.floats()))
def test_fuzz_runtime_input_validation(runtime_model, x, domain):
    try:
        arr = runtime_model.check_batch(x)
        ids = runtime_model.domain_ids(domain, arr.shape[0])
    except InputError as e:
        assert "\n" not in e.one_line()
        return
    assert arr.dtype == np.float32 and arr.ndim == 4 and arr.shape[1] == 3 and np.isfinite(arr).all()
    assert ((0 <= ids) & (ids < len(runtime_model.domains))).all()


def test_internal_errors_exit_1_with_the_traceback_logged(monkeypatch, run_cli, tmp_path):
    import bap.data

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(bap.data, "load_domains", boom)
    monkeypatch.setenv("BAP_CACHE_DIR", str(tmp_path))
    code, _, err, _ = run_cli(["data", "list"])
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error: RuntimeError: simulated bug" in lines[0]
    log = lines[0].rsplit("traceback in ", 1)[1].strip()
    text = Path(log).read_text()
    assert "Traceback" in text and "simulated bug" in text


def test_newer_artifact_versions_are_refused(tmp_path):
    from bap.errors import ConfigError
    from bap.trainer import TrainConfig
    from bap.trainer.artifacts import RunDir

    with pytest.raises(ConfigError, match="newer than this bap"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "version": 2})
    (tmp_path / "config.json").write_text(json.dumps({"format": "bap.run/2"}))
    with pytest.raises(IncompatibleArtifactError, match=r"expected bap\.run/1"):
        RunDir(tmp_path).read_config()
