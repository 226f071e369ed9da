"""Presets carry the paper's batch sizes and lambda_PS, explicit flags win, the CLI says what a preset set."""

import json

import pytest
import torch

from bap.errors import ConfigError
from bap.trainer import TrainConfig
from bap.trainer.config import PRESETS


def test_presets_hold_the_papers_batch_sizes_and_lambda_ps():
    dec = TrainConfig(preset="paper-decathlon").with_preset()
    i2s = TrainConfig(preset="paper-i2s").with_preset()
    assert (dec.batch_size, dec.epochs, dec.lr_milestones, dec.steps_per_epoch) == (32, 60, (45,), 0)
    assert (dec.lr_head, dec.lr_switch, dec.lambda_ps) == (1e-3, 1e-4, 1.0)
    assert (i2s.batch_size, i2s.epochs, i2s.lr_milestones, i2s.lambda_ps) == (12, 45, (15, 30), 0.125)
    assert (i2s.lr_head, i2s.lr_switch) == (5e-4, 5e-5)


def test_an_explicit_field_beats_the_preset():
    # a value that differs from the default is explicit by itself
    cfg = TrainConfig(preset="paper-decathlon", batch_size=16, epochs=3).with_preset()
    assert (cfg.batch_size, cfg.epochs, cfg.lr_head) == (16, 3, 1e-3)
    # a value equal to the default is explicit when named (the CLI names what the command line gave)
    cfg = TrainConfig(preset="paper-i2s", batch_size=64, explicit=("batch_size",)).with_preset()
    assert (cfg.batch_size, cfg.lambda_ps) == (64, 0.125)
    changes, kept = TrainConfig(preset="paper-i2s", lambda_ps=0.5).preset_changes()
    assert kept == {"lambda_ps": 0.5} and changes["batch_size"] == 12 and "lambda_ps" not in changes
    # applying twice changes nothing more (the run directory stores the applied config)
    once = TrainConfig(preset="paper-i2s", explicit=("batch_size",)).with_preset()
    assert once.with_preset() == once
    assert TrainConfig.from_dict(json.loads(json.dumps(once.to_dict()))) == once


def test_no_preset_changes_nothing():
    cfg = TrainConfig()
    assert cfg.with_preset() is cfg and cfg.preset_changes() == ({}, {})
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig(preset="paper-imagenet")


def _capture_train(monkeypatch):
    """Replace the trainer by a stub that records the config and stops the command (no training)."""
    seen = {}

    def fake_train(cfg, callback=None):
        seen["cfg"] = cfg
        raise ConfigError("stub: not training in this test", "none")

    import bap.trainer

    monkeypatch.setattr(bap.trainer, "train", fake_train)
    return seen


def test_cli_explicit_batch_size_beats_the_preset_and_the_preset_line_says_so(run_cli, monkeypatch):
    seen = _capture_train(monkeypatch)
    r = run_cli(["train", "--preset", "paper-decathlon", "--batch-size", "64", "--out", "unused"])
    cfg = seen["cfg"]
    assert "batch_size" in cfg.explicit and "epochs" not in cfg.explicit
    applied = cfg.with_preset()
    assert (applied.batch_size, applied.epochs, applied.lr_head) == (64, 60, 1e-3)  # 64 is the default, yet it wins
    lines = [x for x in r.err.splitlines() if x.startswith("preset ")]
    assert len(lines) == 1, r.err
    assert "batch_size" not in lines[0].split(";")[0] and "epochs=60" in lines[0]
    assert "kept from the command line: batch_size=64" in lines[0]
    assert "preset " not in r.out  # status on stderr only


def test_cli_preset_alone_takes_the_paper_batch_size(run_cli, monkeypatch):
    seen = _capture_train(monkeypatch)
    r = run_cli(["train", "--preset", "paper-i2s", "--out", "unused"])
    applied = seen["cfg"].with_preset()
    assert (applied.batch_size, applied.lambda_ps, applied.epochs) == (12, 0.125, 45)
    (line,) = [x for x in r.err.splitlines() if x.startswith("preset ")]
    assert "batch_size=12" in line and "lambda_ps=0.125" in line and "kept" not in line
    r = run_cli(["train", "--preset", "paper-i2s", "--out", "unused", "--quiet"])
    assert "preset " not in r.err  # --quiet: no status lines


def test_every_preset_field_is_a_config_field():
    cfg = TrainConfig()
    for values in PRESETS.values():
        assert set(values) <= set(cfg.to_dict())


def _random_domains(n_domains=2, n=24, size=32):
    from bap.data.types import Domain, DomainSet, Preprocess, TensorSplit

    g = torch.Generator().manual_seed(0)

    def split():
        return TensorSplit(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                           torch.arange(n) % 3)  # fmt: skip

    pre = Preprocess(load_size=size, crop=size)
    doms = [Domain(f"r{i}", ["a", "b", "c"], split(), split(), split(), (0.5,) * 3, (0.25,) * 3, pre)
            for i in range(n_domains)]  # fmt: skip
    return DomainSet(doms, {"kind": "test"})


def test_quick_validation_leaves_the_training_bn_statistics_alone():
    from bap.core.graph import analyze
    from bap.models import create_backbone
    from bap.trainer.distributed import DistContext
    from bap.trainer.tasks import SwitchTask, TaskContext, _bn_buffers

    torch.manual_seed(0)
    bb = create_backbone("test_cnn").eval()
    ds = _random_domains()
    ctx = TaskContext(
        TrainConfig(backbone="test_cnn"), ds, bb, analyze(bb, 32), torch.device("cpu"), DistContext(), None
    )
    task = SwitchTask(ctx, 0.5)
    for bn in task.model.domain_bns():  # pretend training moved the statistics
        for b in bn.bns:
            b.running_mean.fill_(0.3)
            b.running_var.fill_(2.0)
    before = _bn_buffers(task.model)
    acc = task.quick_validate()
    assert set(acc) == set(ds.names) and all(0.0 <= a <= 1.0 for a in acc.values())
    after = _bn_buffers(task.model)
    assert len(before) == 3 * 2 * len(list(task.model.domain_bns()))  # mean, var, count per BN row
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
