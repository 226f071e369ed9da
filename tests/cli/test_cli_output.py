"""CLI output (issue 18): every table is complete at 80 columns, results on stdout, progress on stderr.

Rich cuts a cell that does not fit with ``…``; an 80-column terminal and a file (rich's default width when output
is redirected) are where that happened. Nothing here depends on timing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from rich.console import Console

from bap.cli._tables import Grid, fit, print_grid

ELLIPSIS = "…"
BAR = "━"  # rich's progress bar


@pytest.fixture
def width80(monkeypatch):
    """The CLI's consoles at 80 columns, whatever the terminal running the tests is."""
    from bap.cli import _console

    monkeypatch.setattr(_console.console, "_width", 80)
    monkeypatch.setattr(_console.err_console, "_width", 80)


def _render(fn, *args, width: int = 80) -> str:
    c = Console(width=width, file=io.StringIO(), highlight=False)
    fn(*args, c)
    return c.file.getvalue()


def _assert_fits(text: str, width: int = 80) -> None:
    assert ELLIPSIS not in text, text
    too_long = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not too_long, too_long


def _fake_report(domains: list[str], runs: list[tuple[str, float]]) -> dict:
    def run(method, budget):
        return {
            "method": method,
            "budget": budget,
            "active_fraction": dict.fromkeys(domains, budget),
            "accuracy": {d: 0.123 + i / 100 for i, d in enumerate(domains)},
            "mean_accuracy": 0.5,
            "s_score": 1234.0,
            "rel_macs_mean": 0.456,
            "rel_params": 1.105,
            "and_fraction": 0.25,
            "prunable_fraction": 0.04,
        }

    return {"domains": [{"name": d} for d in domains], "runs": [run(m, b) for m, b in runs]}


# ------------------------------------------------------------------------------------------------ tables as data
def test_a_grid_wider_than_the_console_is_split_with_the_key_column_repeated():
    g = Grid(["name", *(f"column {i}" for i in range(12))], title="t", caption="c", right=set(range(1, 13)))
    g.add_row("row", *(f"{i * 1.111:.3f}" for i in range(12)))
    c = Console(width=40, file=io.StringIO())
    tables = fit(g, c)
    assert len(tables) > 1
    assert all(t.columns[0].header == "name" for t in tables)
    assert sum(len(t.columns) - 1 for t in tables) == 12
    text = _render(lambda c: print_grid(g, c), width=40)
    _assert_fits(text, 40)
    for i in range(12):
        assert f"{i * 1.111:.3f}" in text


def test_free_text_columns_wrap_at_words_instead_of_being_cut():
    g = Grid(["name", "description"], wrap={1})
    g.add_row("a", "a long description that cannot fit in forty columns, so it wraps at spaces")
    text = _render(lambda c: print_grid(g, c), width=40)
    _assert_fits(text, 40)
    assert "spaces" in text


# ------------------------------------------------------------------------------------------------ bap train
@pytest.mark.parametrize(
    ("domains", "runs"),
    [
        (["mnist", "mnist_m", "digits", "faces", "textures"], [("bap", 1.0), ("bap", 0.5)]),
        ([f"domain_{i}" for i in range(10)], [(m, b) for m in ("bap", "ba2", "finetune") for b in (1.0, 0.5, 0.25)]),
    ],
    ids=["demo", "decathlon-sized"],
)
def test_train_results_fit_80_columns(domains, runs):
    from bap.cli.train import print_results

    report = _fake_report(domains, runs)
    text = _render(print_results, report)
    _assert_fits(text)
    for d in domains:
        assert d in text
    assert "1234" in text and "0.456" in text and "1.105" in text


def test_train_results_are_one_wide_table_when_the_terminal_is_wide():
    from bap.cli.train import print_results

    report = _fake_report(["mnist", "mnist_m", "digits", "faces", "textures"], [("bap", 1.0), ("bap", 0.5)])
    wide = _render(print_results, report, width=160)
    header = next(line for line in wide.splitlines() if line.startswith("method"))
    assert "prunable" in header and "mnist_m" in header
    assert "bap β=0.5" in _render(print_results, report)  # transposed at 80: one column per method x budget


def test_the_tiny_runs_results_fit(tiny_run):
    from bap.cli.train import print_results

    _, report = tiny_run
    _assert_fits(_render(print_results, report))


# ------------------------------------------------------------------------------------------------ bap export
def test_export_plan_fits_80_columns(tiny_export):
    from bap.cli.export import print_plan
    from bap.exporter.manifest import read_manifest

    m = read_manifest(tiny_export[0])
    for width in (80, 50):
        text = _render(print_plan, m, width=width)
        _assert_fits(text, width)
        for name in m.domain_names:
            assert name in text
        assert "total" in text


def test_bap_export_prints_the_plan_on_stdout_and_status_on_stderr(tiny_run, tmp_path, run_cli, width80):
    r = run_cli(["export", tiny_run[0], "--budget", "0.5", "--out", tmp_path / "exp", "--validation-images", "2"])
    assert r.code == 0, r.err[-2000:]
    _assert_fits(r.out)
    assert "channel plan" in r.out and "exported" in r.out
    assert "top-1 agreement" in r.err and "top-1 agreement" not in r.out  # validation lines are status
    q = run_cli(["export", tiny_run[0], "--budget", "0.5", "--out", tmp_path / "q", "--validation-images", "2", "-q"])
    assert q.code == 0, q.err[-2000:]
    assert "channel plan" in q.out and not q.err.strip()


# ------------------------------------------------------------------------------------------------ bap eval
def test_bap_eval_keeps_only_results_on_stdout(tiny_export, run_cli, width80):
    export = tiny_export[0]
    r = run_cli(["eval", export])
    assert r.code == 0, r.err[-2000:]
    _assert_fits(r.out)
    assert BAR not in r.out and "eval mnist" not in r.out
    assert "mean" in r.out and "accuracy" in r.out
    assert BAR in r.err  # progress bars on stderr
    q = run_cli(["eval", export, "-q"])
    assert q.code == 0
    assert "mean" in q.out and BAR not in q.out + q.err  # --quiet silences progress, not results


def test_bap_eval_redirected_to_a_file(tiny_export, tmp_path):
    """``COLUMNS=80 bap eval EXPORT > acc.txt``: the file holds the results only, complete."""
    out, err = tmp_path / "acc.txt", tmp_path / "err.txt"
    env = {**os.environ, "COLUMNS": "80"}
    with out.open("w") as fo, err.open("w") as fe:
        p = subprocess.run([sys.executable, "-m", "bap", "eval", str(tiny_export[0])], stdout=fo, stderr=fe, env=env)
    assert p.returncode == 0, err.read_text()[-2000:]
    text = out.read_text()
    _assert_fits(text)
    assert BAR not in text and "mnist_m" in text and "S-score" in text


# ------------------------------------------------------------------------------------------------ bap bench + summary
def test_bap_bench_and_summary_fit_80_columns(tiny_run, tiny_export, tmp_path, run_cli, width80):
    export = tiny_export[0]
    bench_json = tmp_path / "bench.json"
    r = run_cli(["bench", export, "--device", "cpu", "--batch-sizes", "1", "--warmup-s", "0.05", "--duration-s",
                 "0.1", "--iterations", "3", "--no-memory", "--json", bench_json])  # fmt: skip
    assert r.code == 0, r.err[-2000:]
    _assert_fits(r.out)
    assert "multi-domain" in r.out and "backbone" in r.out
    s = run_cli(["summary", "--run", tiny_run[0], "--export", export, "--bench", bench_json])
    assert s.code == 0, s.err[-2000:]
    _assert_fits(s.out)
    assert "mnist_m" in s.out and "colour photo crops" in s.out
    assert "held after load" in s.out and "MACs per sample" in s.out
    doc = json.loads(bench_json.read_text())
    ratio = next(q for q in doc["ratios"] if q["role"] == "multi-domain" and q["batch"] == 1)
    assert f"{ratio['latency']:.2f}" in s.out  # the measured ratio, as measured
    assert ("slower than the backbone" in s.out) == (ratio["latency"] > 1.0)


def test_summary_explains_slower_and_faster_honestly():
    from bap.cli.summary import LatencyRow, Summary, summary_lines

    def summary(latency: float, backbone_ms: float = 10.0) -> Summary:
        row = LatencyRow(224, 1, backbone_ms, backbone_ms * latency, latency, 0.6)
        return Summary("cifar_resnet14", "mnist", "bap", 0.5, "routed", {"mnist": 0.99, "mnist_m": 0.39}, 1500.0,
                       100, 300, 120, 0.6, 0.5, 10**6, [row], "cpu", 2, 32, 8, 0.5, 200)  # fmt: skip

    # a fast backbone (under 2 ms per image): operator overhead is the stated reason
    slow = " ".join(summary_lines(summary(1.2, backbone_ms=1.0))["latency"])
    assert "slower than the backbone at 224 px (1.20x at batch 1)" in slow and "per-operator overhead" in slow
    # the node count includes the constant nodes ONNX Runtime folds at load: it is not what runs per sample
    assert "has 200 ONNX nodes" in slow and "folds the latter" in slow and "operators to route" not in slow
    # a compute-bound backbone: overhead is not claimed
    slow = " ".join(summary_lines(summary(1.2))["latency"])
    assert "slower at 224 px (1.20x at batch 1)" in slow and "overhead" not in slow
    fast = " ".join(summary_lines(summary(0.7))["latency"])
    assert "slower" not in fast and "0.70x at batch 1" in fast
    acc = " ".join(summary_lines(summary(1.0))["accuracy"])
    assert "S = 1500 of 2000" in acc and "twice the fine-tuned baseline" in acc
    assert "mnist_m (the lowest accuracy)" in acc


# ------------------------------------------------------------------------------------------------ --help
COMMANDS = [[], ["train"], ["pretrain"], ["export"], ["eval"], ["predict"], ["bench"], ["summary"], ["data", "list"]]


@pytest.mark.parametrize("args", [*COMMANDS, ["models"]], ids=lambda a: "-".join(a) or "bap")
def test_help_at_80_columns_is_complete(args, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = run_cli([*args, "--help"])
    assert r.code == 0
    assert ELLIPSIS not in r.out, r.out
    assert "{" not in r.out.split("Usage:")[1].splitlines()[0], r.out  # no {run_dir}-style metavars
