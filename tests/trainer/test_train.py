import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bap.core.io import load_state_dict
from bap.errors import TrainingInterrupted
from bap.trainer import TrainConfig, train

SMALL = dict(
    backbone="test_cnn", budgets=(0.5,), epochs=2, steps_per_epoch=4, batch_size=16, lr_milestones=(2,),
    pretrain_epochs=1, bn_recal_images=128, quiet=True,
)  # fmt: skip


def test_report_schema_and_budgets_hold(tiny_run):
    run_dir, report = tiny_run
    assert report["format"] == "bap.train-report/1"
    assert set(report["backbone"]) >= {"name", "macs", "params"}
    assert [d["name"] for d in report["domains"]][:2] == ["mnist", "mnist_m"]
    assert {"name", "classes", "train", "test"} <= set(report["domains"][0])
    keys = {"method", "budget", "lambda_ps", "accuracy", "mean_accuracy", "s_score", "active_fraction", "and_fraction",
            "or_fraction", "rel_macs", "rel_macs_mean", "rel_params"}  # fmt: skip
    for r in report["runs"]:
        assert keys <= set(r)
        assert all(u <= r["budget"] + 1e-9 for u in r["active_fraction"].values())  # projection guarantees it
        assert 0.0 <= r["and_fraction"] <= min(r["active_fraction"].values()) <= r["or_fraction"] <= 1.0
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    r1 = next(r for r in report["runs"] if r["budget"] == 1.0)
    assert r1["rel_macs_executed"] == pytest.approx(1.0)
    assert r1["rel_params"] > 1.0  # per-domain BN + switch bits on top of the backbone
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(report["runs"]))
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["budget"], x["epoch"]) for x in lines] == [("1", 1), ("1", 2), ("0.5", 1), ("0.5", 2)]
    assert {"losses", "lambda", "usage", "and_fraction", "or_fraction", "val_accuracy"} <= set(lines[-1])
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / ".lock").exists()


class _InterruptAt:
    """Sends SIGINT to this process after ``n`` domain steps (as Ctrl-C would)."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def on_phase(self, *a):
        pass

    def on_phase_end(self, *a):
        pass

    def on_budget_end(self, *a):
        pass

    def on_advance(self, n=1, **k):
        self.seen += n
        if self.seen == self.n:
            signal.raise_signal(signal.SIGINT)


def test_sigint_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    ref = train(TrainConfig(out=str(tmp_path / "ref"), **SMALL))
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(out=str(tmp_path / "cut"), **SMALL), _InterruptAt(5 * 6))  # mid-epoch 2
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step"]) == (1, 2)
    res = train(TrainConfig(out=str(tmp_path / "cut"), resume=True, quiet=True))
    a = load_state_dict(tmp_path / "ref" / "budgets" / "0.5" / "state.safetensors")
    b = load_state_dict(tmp_path / "cut" / "budgets" / "0.5" / "state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res["runs"][0]["accuracy"] == ref["runs"][0]["accuracy"]


def test_two_process_torchrun_keeps_ranks_identical(tmp_path):
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="250")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), "-m", "bap",
           "train", "--backbone", "test_cnn", "--budgets", "0.5", "--epochs", "1", "--steps-per-epoch", "3",
           "--batch-size", "16", "--pretrain-epochs", "1", "--out", str(tmp_path / "ddp"), "--device", "cpu",
           "--verbose"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    agree = [line for line in (r.stdout + r.stderr).splitlines() if "agree across ranks" in line]
    assert len(agree) == 2, r.stdout[-2000:] + r.stderr[-2000:]
    # the ranks all-gather their checksums and fail loudly on any difference; both reported agreement
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["runs"][0]["ddp"]["world_size"] == 2


@pytest.mark.parametrize("method", ["feature", "finetune", "ba2"])
def test_baseline_methods_train_and_account(tmp_path, method):
    cfg = dict(SMALL, budgets=(1.0, 0.5))
    report = train(TrainConfig(out=str(tmp_path / method), method=method, **cfg))
    runs = report["runs"]
    d = len(report["domains"])
    if method == "ba2":
        assert [r["budget"] for r in runs] == [1.0, 0.5] and all(r["lambda_ps"] == 0.0 for r in runs)
        for r in runs:  # BA2's own accounting never prunes; the exporter's can only remove
            assert r["rel_params_unpruned"] > 1.0 and r["rel_params"] <= r["rel_params_unpruned"] + 1e-12
        return
    assert [r["budget"] for r in runs] == [1.0]  # no switches: budgets do not apply
    r = runs[0]
    if method == "feature":
        assert r["rel_params"] == pytest.approx(1.0) and r["rel_macs_mean"] == pytest.approx(1.0)
        assert all(u == 1.0 for u in r["active_fraction"].values())
    else:
        assert r["rel_params"] == pytest.approx(float(d))
    assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
