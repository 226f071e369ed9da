"""Domain sampling: batches per domain, their interleaving, the matching multiplier steps; uniform unchanged."""

import itertools

import pytest

from bap.errors import ConfigError
from bap.trainer import TrainConfig
from bap.trainer.sampling import domain_order, domain_steps, epoch_schedule, multiplier_scales

SIZES = [3500, 3500, 1078, 120, 600]  # the embedded suite's training splits


def test_uniform_gives_every_domain_the_same_rounds():
    assert domain_steps(SIZES, 32, 64, "uniform", one_pass=False) == [32] * 5
    assert domain_steps(SIZES, 55, 64, "uniform", one_pass=True) == [55] * 5


def test_proportional_shares_the_epoch_by_size_and_keeps_its_length():
    steps = domain_steps(SIZES, 32, 64, "proportional", one_pass=False)
    assert sum(steps) == 32 * 5 and min(steps) >= 1
    assert steps == [64, 64, 19, 2, 11]  # 160 x N_d / 8798 = 63.7, 63.7, 19.6, 2.2, 10.9: largest remainders
    # per image, every domain is now visited about equally often
    per_image = [s / n for s, n in zip(steps, SIZES, strict=True)]
    assert max(per_image) / min(per_image) < 1.2


def test_proportional_one_pass_is_one_epoch_of_each_dataset():
    assert domain_steps(SIZES, 55, 64, "proportional", one_pass=True) == [55, 55, 17, 2, 10]  # ceil(N_d / 64)


def test_sqrt_sits_between_uniform_and_proportional():
    sq = domain_steps(SIZES, 32, 64, "sqrt", one_pass=False)
    pr = domain_steps(SIZES, 32, 64, "proportional", one_pass=False)
    assert sum(sq) == 160
    assert sq[3] > pr[3] and sq[3] < 32 and sq[0] < pr[0] and sq[0] > 32
    assert domain_steps(SIZES, 55, 64, "sqrt", one_pass=True) == [55, 55, 31, 10, 23]  # round(55 sqrt(N_d / N_max))


def test_multiplier_steps_scale_with_the_share_of_steps():
    assert multiplier_scales([32] * 5) == [1.0] * 5
    scales = multiplier_scales([64, 64, 20, 2, 10])
    assert scales[:3] == pytest.approx([0.5, 0.5, 1.6]) and scales[4] == pytest.approx(3.2)
    assert scales[3] == 8.0  # 16, clipped: a step of 8 x eta already moves as far as eta = 0.8


def test_uniform_schedule_is_todays_round_robin():
    rounds = epoch_schedule([4] * 3, 0, "0.5", 2)
    assert rounds == [[(d, r) for d in domain_order(3, 0, "0.5", 2, r)] for r in range(4)]


def test_non_uniform_schedule_visits_every_batch_once_spread_over_the_epoch():
    steps = [64, 64, 20, 2, 10]
    rounds = epoch_schedule(steps, 1, "0.5", 0)
    assert [len(r) for r in rounds] == [5] * 32
    flat = [v for r in rounds for v in r]
    for d, n in enumerate(steps):
        ks = [k for dd, k in flat if dd == d]
        assert ks == list(range(n))  # each batch once, in order
        pos = [i for i, (dd, _) in enumerate(flat) if dd == d]
        if n >= 10:  # evenly spread: no gap much longer than the average spacing
            gaps = [b - a for a, b in itertools.pairwise(pos)]
            assert max(gaps) <= 2 * len(flat) / n + 1
    assert epoch_schedule(steps, 1, "0.5", 0) == rounds  # deterministic (resume replays it)
    assert epoch_schedule(steps, 1, "0.5", 1) != rounds  # and differs between epochs


def test_dgprune_needs_uniform_sampling():
    with pytest.raises(ConfigError, match="needs --domain-sampling uniform"):
        TrainConfig(method="dgprune", domain_sampling="proportional")
    with pytest.raises(ConfigError, match="unknown domain sampling"):
        TrainConfig(domain_sampling="balanced")
    assert TrainConfig(method="ba2", domain_sampling="sqrt").domain_sampling == "sqrt"


class _Count:
    """Counts the training steps the loop reports."""

    def __init__(self):
        self.total, self.steps = 0, 0

    def on_phase(self, name, total):
        self.total += total

    def on_advance(self, n=1, **k):
        self.steps += n

    def on_phase_end(self, *a):
        pass

    def on_budget_end(self, *a):
        pass


def _tiny_data(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from bap.core.io import save_state_dict
    from bap.models import create_backbone

    rng = np.random.default_rng(0)
    for d, n_train in (("big", 24), ("small", 6)):
        for split, n in (("train", n_train), ("val", 2), ("test", 2)):
            for c in ("x", "y"):
                (tmp_path / "data" / d / split / c).mkdir(parents=True)
                for i in range(n // 2):
                    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(img).save(tmp_path / "data" / d / split / c / f"{i}.png")
    torch.manual_seed(0)
    save_state_dict(tmp_path / "w.safetensors", create_backbone("test_cnn").state_dict(), {"backbone": "test_cnn"})
    return dict(backbone="test_cnn", data_root=str(tmp_path / "data"), weights=str(tmp_path / "w.safetensors"),
                budgets=(0.5,), epochs=2, steps_per_epoch=5, batch_size=4, bn_recal_images=8,
                domain_sampling="proportional", quiet=True)  # fmt: skip


def test_a_proportional_run_gives_each_domain_its_share(tmp_path):
    from bap.trainer import train

    cb = _Count()
    run = train(TrainConfig(out=str(tmp_path / "run"), **_tiny_data(tmp_path)), cb)["runs"][0]
    assert run["domain_sampling"] == {"mode": "proportional", "steps_per_epoch": {"big": 8, "small": 2}}
    assert cb.total == cb.steps == 2 * 10  # 10 batches per epoch, shared 24 : 6
    assert all(u <= 0.5 + 1e-9 for u in run["active_fraction"].values())


class _StopAt(_Count):
    """Sends SIGINT after ``n`` steps (as Ctrl-C would)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def on_advance(self, n=1, **k):
        import signal

        super().on_advance(n, **k)
        if self.steps == self.n:
            signal.raise_signal(signal.SIGINT)


def test_an_interrupted_proportional_run_resumes_exactly_and_keeps_one_metrics_row_per_epoch(tmp_path):
    import json

    import torch

    from bap.core.io import load_state_dict
    from bap.errors import TrainingInterrupted
    from bap.trainer import train

    kw = _tiny_data(tmp_path)
    ref = train(TrainConfig(out=str(tmp_path / "ref"), **kw))["runs"][0]
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(out=str(tmp_path / "cut"), **kw), _StopAt(10 + 4))  # epoch 2, after round 2 of 5
    cont = train(TrainConfig(out=str(tmp_path / "cut"), resume=True, quiet=True))["runs"][0]
    assert cont["accuracy"] == ref["accuracy"] and cont["and_fraction"] == ref["and_fraction"]
    a = load_state_dict(tmp_path / "ref" / "budgets" / "0.5" / "state.safetensors")
    b = load_state_dict(tmp_path / "cut" / "budgets" / "0.5" / "state.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # the completed epoch's row survives the resume
