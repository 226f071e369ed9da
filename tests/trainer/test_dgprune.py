"""``--method dgprune``: the Taylor importance, the variance term, MAC-targeted pruning, and the end-to-end path."""

import json

import onnx
import pytest
import torch
import torch.nn.functional as F

from bap.core.compact import build_specialised, count_conv_macs
from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, build_multidomain
from bap.errors import ConfigError
from bap.models import create_backbone
from bap.testing import random_switches_
from bap.trainer import TrainConfig
from bap.trainer.dgprune import dg_importance, prune_to_macs, taylor_loss_increase


@pytest.fixture(scope="module")
def probe():
    """A tiny masked network with random BN statistics, two fixed batches and its loss as a function of the gate."""
    torch.manual_seed(0)
    bb = create_backbone("test_cnn").eval()
    g = analyze(bb, 32)
    m = build_multidomain(bb, g, [DomainSpec("a", 4, (0.5,) * 3, (0.25,) * 3)]).eval()
    random_switches_(m, p_on=1.0, shared=1.0, seed=1)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(16, 3, 32, 32, generator=gen), torch.randint(0, 4, (16,), generator=gen)) for _ in range(2)]

    @torch.no_grad()
    def loss(gate):
        return sum(float(F.cross_entropy(m.heads(m.body(m.normalize(x, 0), 0, gate), 0), y)) for x, y in batches) / 2

    return m, g, batches, loss


def test_taylor_importance_matches_measured_loss_change_of_zeroing(probe):
    """Tolerance: every position within 0.3 x the largest measured change, Pearson r >= 0.95 (first order only)."""
    m, g, batches, loss = probe
    gate = torch.ones(g.num_switches)
    est = taylor_loss_increase(m, gate, batches, head=0)
    base = loss(gate)
    measured = []
    for k in range(g.num_switches):
        gk = gate.clone()
        gk[k] = 0.0
        measured.append(loss(gk) - base)
    measured = torch.tensor(measured)
    assert (est - measured).abs().max() <= 0.3 * measured.abs().max()
    assert torch.corrcoef(torch.stack([est, measured]))[0, 1] >= 0.95
    # in the small-step limit the estimate is the exact derivative (checks the gradient itself, tightly)
    eps = 1e-3
    for k in range(0, g.num_switches, 7):
        gk = gate.clone()
        gk[k] = 1.0 - eps
        assert (loss(gk) - base) / eps == pytest.approx(float(est[k]), rel=0.05, abs=2e-3)


def test_taylor_importance_is_zero_for_positions_already_off(probe):
    m, g, batches, _ = probe
    gate = torch.ones(g.num_switches)
    gate[10:20] = 0.0
    est = taylor_loss_increase(m, gate, batches, head=0)
    assert torch.all(est[10:20] == 0)


def test_variance_term_ranks_uneven_filter_above_even_one():
    # position 0 hurts domain 0 by 0.2 and domain 1 by 0.0; position 1 hurts both by 0.1: same mean
    delta = torch.tensor([[0.2, 0.1], [0.0, 0.1]])
    plain = dg_importance(delta, 0.0)
    assert plain[0] == pytest.approx(float(plain[1]))
    dg = dg_importance(delta, 1.0)
    assert dg[0] > dg[1]
    assert dg[1] == pytest.approx(0.1)  # no spread: the variance term adds nothing
    assert dg[0] == pytest.approx(0.1 + 0.01 / 0.1)  # var 0.01, scale = mean |mean| = 0.1


def test_masked_macs_agree_with_thop_on_the_specialised_model():
    bb = create_backbone("test_bottleneck").eval()
    g = analyze(bb, 32)
    m = build_multidomain(bb, g, [DomainSpec("a", 3, (0.5,) * 3, (0.2,) * 3)]).eval()
    random_switches_(m, p_on=0.6, seed=4)
    spec = build_specialised(m, 0)
    x = torch.zeros(1, 3, 32, 32)
    assert sum(g.masked_macs(m.switches.binary()[0]).values()) == count_conv_macs(spec.body, spec.input(x, 0), 0)


def test_prune_to_macs_meets_the_target_lowest_scores_first_and_keeps_the_image_channels():
    bb = create_backbone("test_bottleneck").eval()
    g = analyze(bb, 32)
    on = torch.ones(g.num_switches, dtype=torch.bool)
    prunable = torch.tensor([c.kind != "input" for c in g.convs for _ in range(c.in_channels)])
    scores = torch.rand(g.num_switches, generator=torch.Generator().manual_seed(0))
    for target in (0.75, 0.5, 0.3):  # the floor is 0.26 (stem and stream producers keep their width)
        new = prune_to_macs(g, on, scores, target * g.total_macs, prunable)
        macs = sum(g.masked_macs(new).values())
        assert macs <= target * g.total_macs
        assert torch.all(new[~prunable])  # RGB inputs never pruned
        for c in g.convs:
            assert new[c.offset : c.offset + c.in_channels].any()  # every conv keeps an input
        off = on & ~new
        assert int(off.sum()) > 0
        # lowest scores first: a kept prunable position scoring below the highest removed one must have been
        # skipped as its conv's last input
        for k in torch.nonzero(new & prunable & (scores < scores[off].max())).flatten().tolist():
            c = next(c for c in g.convs if c.offset <= k < c.offset + c.in_channels)
            assert int(new[c.offset : c.offset + c.in_channels].sum()) == 1
    assert torch.equal(prune_to_macs(g, on, scores, g.total_macs, prunable), on)  # already under: unchanged
    floor = prune_to_macs(g, on, scores, 0, prunable)  # unreachable target: the smallest valid structure
    assert all(int(floor[c.offset : c.offset + c.in_channels].sum()) == 1 for c in g.convs if c.kind != "input")


def test_dgprune_config_uses_mac_budgets_and_checks_its_flags():
    cfg = TrainConfig(method="dgprune", budgets=(0.5,))
    assert cfg.budget_unit == "macs" and cfg.effective_budgets == (0.5,) and cfg.effective_lambda_ps == 0.0
    with pytest.raises(ConfigError, match="dg_head"):
        TrainConfig(method="dgprune", dg_head="both")
    with pytest.raises(ConfigError, match="dg_variance_weight"):
        TrainConfig(method="dgprune", dg_variance_weight=-1.0)


@pytest.fixture(scope="module")
def dg_run(tmp_path_factory):
    from bap.trainer import train

    out = tmp_path_factory.mktemp("dg") / "run"
    cfg = TrainConfig(out=str(out), method="dgprune", budgets=(0.5,), backbone="test_cnn", domains=("mnist", "digits"),
                      epochs=3, steps_per_epoch=4, batch_size=32, pretrain_epochs=1, bn_recal_images=128, quiet=True,
                      lr_milestones=(3,))  # fmt: skip
    return out, train(cfg)


def test_dgprune_run_holds_its_mac_budget_and_records_the_criterion(dg_run):
    from bap.trainer import load_run

    out, report = dg_run
    (res,) = report["runs"]
    assert res["method"] == "dgprune" and res["budget_unit"] == "macs"
    assert max(res["rel_macs"].values()) <= 0.5
    assert res["criterion"] == {
        "name": "taylor+variance",
        "score": "taylor",
        "variance_change": "approx",
        "variance_weight": 4.0,
        "importance_batches": 4,
        "head": "shared",  # mnist and digits share the labels 0-9
        "normalisation": "mean of the training domains'",
    }
    # epoch 1 trains the heads (target 1.0: nothing pruned), epoch 2 prunes to the budget, epoch 3 fine-tunes
    assert [s["target"] for s in res["prune_schedule"]] == [0.5]
    run = load_run(out, 0.5)
    on = run.model.switches.binary()
    assert torch.equal(on[0], on[1])  # one shared network
    h = run.model.heads.heads
    assert torch.equal(h[0].weight, h[1].weight)
    # conv weights were fine-tuned: the run's budget state carries them, not the frozen backbone's
    bb = create_backbone("test_cnn", str(out / "backbone.safetensors"))
    assert not torch.equal(run.model.body.get_submodule("conv1").weight, bb.conv1.weight)


def test_dgprune_exports_and_validates_like_the_others(dg_run, tmp_path):
    from bap.exporter import ExportConfig, export

    out, report = dg_run
    res = export(
        ExportConfig(
            run_dir=str(out), budget=0.5, out=str(tmp_path / "x"), validation_images=8, gather_threshold=1.0, round_to=1
        )
    )  # always gather, no rounding: executed MACs = the mask's
    m = res.manifest
    assert m.validation.passed and m.method == "dgprune"
    assert m.criterion["variance_weight"] == 4.0
    assert m.rel_macs_executed == pytest.approx(report["runs"][0]["rel_macs_executed"], abs=1e-9)
    ops = json.loads(json.dumps(m.onnx_ops))
    assert ops.get("Mul", 0) <= 1  # only the input normalisation: BN folded into the convs, no per-domain tables
    g = onnx.load(str(tmp_path / "x" / "model.onnx"))
    assert not [i for i in g.graph.initializer if i.dims and i.dims[0] == 2 and len(i.dims) == 4]  # no [D,C,1,1]


def test_heldout_accuracy_uses_the_shared_network(dg_run, suite):
    from bap.trainer import load_run
    from bap.trainer.dgprune import heldout_accuracy
    from bap.trainer.evaluation import accuracy

    out, _ = dg_run
    run = load_run(out, 0.5)
    mnist = suite.get("mnist")
    assert heldout_accuracy(run.model, mnist) == pytest.approx(accuracy(run.model, mnist, 0))
    acc = heldout_accuracy(run.model, suite.get("mnist_m"))
    assert 0.0 <= acc <= 1.0
