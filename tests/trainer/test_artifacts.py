"""Integrity of run directories: a damaged ``config.json`` or ``report.json`` stops ``bap export`` up front."""

from __future__ import annotations

import shutil

import pytest

from bap.errors import IncompatibleArtifactError
from bap.trainer.artifacts import load_run


def _copy(run_dir, dst):
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.parametrize("name", ["report.json", "config.json"])
def test_export_refuses_a_run_whose_json_does_not_parse(tiny_run, tmp_path, run_cli, name):
    run = _copy(tiny_run[0], tmp_path / "run")
    (run / name).write_text('{"format": "bap.train-report/1", "runs": [')  # truncated mid-write
    out = tmp_path / "out"
    res = run_cli(["export", run, "--budget", "0.5", "--out", out])
    assert res.code == 2, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0], res.err
    assert not out.exists()


def test_load_run_parses_the_report_before_loading_any_weights(tiny_run, tmp_path):
    run = _copy(tiny_run[0], tmp_path / "run")
    (run / "report.json").write_text("[1, 2")
    (run / "backbone.safetensors").write_bytes(b"not weights")  # would fail later, with another message
    with pytest.raises(IncompatibleArtifactError, match=r"report\.json"):
        load_run(run, 0.5)


def test_a_run_without_a_report_still_loads(tiny_run, tmp_path):
    """A run still training (or written by bap.testing.write_run_dir) has no report yet; its budgets load."""
    run = _copy(tiny_run[0], tmp_path / "run")
    (run / "report.json").unlink()
    assert load_run(run, 0.5).budget == 0.5
