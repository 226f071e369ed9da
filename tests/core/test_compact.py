import pytest
import torch

from bap.core.compact import build_compact, build_specialised, count_conv_macs, plan_channels
from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, build_multidomain
from bap.models import create_backbone
from bap.testing import SMALL_INPUT, cpu_sized_backbones, random_multidomain, random_switches_


def _max_diff(ref, out):
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(out))
    return float((ref[fin] - out[fin]).abs().max())


# every registered backbone the CPU suite can afford (a size rule over the registry, not a hand-kept list)
@pytest.mark.parametrize("backbone", cpu_sized_backbones())
@pytest.mark.parametrize("round_to", [1, 8])
def test_compact_equals_masked(backbone, round_to):
    m, _, g, _ = random_multidomain(backbone, size=SMALL_INPUT)
    names = [d.name for d in m.domains]
    x = torch.rand(7, 3, SMALL_INPUT, SMALL_INPUT)
    mixed = torch.tensor([0, 2, 1, 1, 0, 2, 1])
    for seed, p_on in ((0, 0.6), (1, 0.3)):  # random switch patterns (and BN statistics), dense and sparse
        on = random_switches_(m, p_on=p_on, seed=seed)
        plan = plan_channels(g, on, names, round_to=round_to)
        cm = build_compact(m, plan)
        with torch.no_grad():
            for d in range(len(names)):  # batch 1, every domain
                assert _max_diff(m(x[:1], torch.tensor([d])), cm(x[:1], torch.tensor([d]))) <= 1e-5
            assert _max_diff(m(x, mixed), cm(x, mixed)) <= 1e-5
        if round_to == 8:
            for lp in plan.layers.values():
                assert len(lp.in_keep) % 8 == 0 or len(lp.in_keep) == lp.in_total


def test_kept_channels_are_the_union_of_switches_hand_checked():
    bb = create_backbone("test_cnn").eval()
    g = analyze(bb, 32)
    m = build_multidomain(
        bb, g, [DomainSpec("a", 2, (0.5,) * 3, (0.2,) * 3), DomainSpec("b", 3, (0.5,) * 3, (0.2,) * 3)]
    )
    for dbn in m.domain_bns():  # distinct BN per domain: tables stay per-domain (equal rows would fold)
        dbn.bns[1].running_var.fill_(2.0)
    on = torch.ones(2, g.num_switches, dtype=torch.bool)
    c2 = g.conv("layers.0.0.conv2")  # chain: input = layers.0.0.conv1's 8 outputs
    sl = slice(c2.offset, c2.offset + c2.in_channels)
    on[0, sl] = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    on[1, sl] = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    m.switches.set_binary_(on)
    plan = plan_channels(g, on, ["a", "b"])
    assert plan.layers[c2.name].in_keep == (0, 1, 3, 4)  # union {0,1,4} | {0,3}
    assert plan.layers[c2.producer].out_keep == (0, 1, 3, 4)  # producer filters follow
    assert plan.bn_keep[c2.fold_bn] == (0, 1, 3, 4)  # and its BN entries
    cm = build_compact(m.eval(), plan)
    conv1 = cm.body.get_submodule(c2.producer)
    conv2 = cm.body.get_submodule(c2.name)
    assert conv1.weight.shape[0] == 4 and conv2.weight.shape[1] == 4  # channels 2,5,6,7 gone from both sides
    assert torch.equal(conv2.weight, m.body.get_submodule(c2.name).weight[:, [0, 1, 3, 4]])
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(m(x, torch.tensor([0, 1, 0])), cm(x, torch.tensor([0, 1, 0]))) <= 1e-5


def test_stream_consumers_gather_and_keep_producers_full_width():
    m, _, g, on = random_multidomain("cifar_resnet14", p_on=0.5)
    plan = plan_channels(g, on, [d.name for d in m.domains])
    for c in g.convs:
        lp = plan.layers[c.name]
        if g.chain_consumer(c.name) is None:
            assert len(lp.out_keep) == c.out_channels  # residual streams keep their width


def test_specialised_equals_masked_domain_and_is_smaller():
    m, _, g, _ = random_multidomain("cifar_resnet14")
    x = torch.rand(4, 3, 32, 32)
    full = count_conv_macs(build_specialised(m, 0, all_on=True).body, torch.zeros(1, 3, 32, 32), 0)
    assert full == g.total_macs
    for d in range(3):
        sm = build_specialised(m, d)
        with torch.no_grad():
            torch.testing.assert_close(sm(x), m(x, d), atol=1e-5, rtol=1e-5)
        assert count_conv_macs(sm.body, sm.input(x[:1], 0), 0) < g.total_macs


def test_thop_macs_equal_the_layer_formula():
    from bap.exporter.pipeline import plan_summary

    m, _, g, on = random_multidomain("cifar_resnet14")
    names = [d.name for d in m.domains]
    plan = plan_channels(g, on, names)
    summary = plan_summary(g, plan, on)
    cm = build_compact(m, plan)
    x = torch.zeros(1, 3, 32, 32)
    assert count_conv_macs(cm.body, cm.input(x, 0), 0) == sum(r["macs_executed"] for r in summary)
    for d, name in enumerate(names):
        sm = build_specialised(m, d)
        assert count_conv_macs(sm.body, sm.input(x, 0), 0) == sum(r["macs"][name] for r in summary)


def test_tables_equal_in_every_domain_collapse_and_fold_into_convs():
    """A shared network (dgprune, or identical BN): no per-domain tables or gathers left, outputs unchanged."""
    from bap.core.compact import DomainAffine

    bb = create_backbone("test_cnn").eval()
    g = analyze(bb, 32)
    specs = [DomainSpec(n, 3, (0.5,) * 3, (0.2,) * 3) for n in "ab"]
    m = build_multidomain(bb, g, specs).eval()
    random_switches_(m, seed=3)
    for dbn in m.domain_bns():  # every domain: domain 0's BN
        dbn.bns[1].load_state_dict(dbn.bns[0].state_dict())
    on = m.switches.binary()[:1].expand(2, -1).clone()
    m.switches.set_binary_(on)
    cm = build_compact(m, plan_channels(g, on, ["a", "b"]))
    assert not [x for x in cm.body.modules() if isinstance(x, DomainAffine)]
    x = torch.rand(4, 3, 32, 32)
    dom = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        assert _max_diff(m(x, dom), cm(x, dom)) <= 1e-5


def test_a_shared_unpruned_network_counts_exactly_the_backbone_parameters():
    """feature baseline accounting: all channels on, one BN set (folded into the convs) -> rel params 1.0."""
    from bap.core.metrics import structure_metrics

    bb = create_backbone("test_bottleneck").eval()
    m = build_multidomain(bb, analyze(bb, 32), [DomainSpec(n, 3, (0.5,) * 3, (0.2,) * 3) for n in "ab"]).eval()
    res = structure_metrics(m, shared_bn=True)
    assert res["params"]["model_params"] == res["params"]["backbone_params"]
    assert res["rel_params"] == 1.0
