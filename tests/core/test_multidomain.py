import torch

from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, binarize_ste, build_multidomain
from bap.models import create_backbone
from bap.testing import random_multidomain


def test_budget_one_all_on_reproduces_the_backbone():
    bb = create_backbone("cifar_resnet14").eval()
    g = analyze(bb, 32)
    specs = [DomainSpec("a", 10, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), DomainSpec("b", 2, (0.1,) * 3, (0.3,) * 3)]
    m = build_multidomain(bb, g, specs).eval()
    assert bool(m.switches.binary().all())  # init 1e-3 > 0: every switch on
    x = torch.rand(5, 3, 32, 32)
    for d, s in enumerate(specs):
        ref = bb((x - torch.tensor(s.mean).view(1, 3, 1, 1)) / torch.tensor(s.std).view(1, 3, 1, 1))
        torch.testing.assert_close(m.features(x, d), ref)


def test_straight_through_estimator_passes_gradients():
    t = torch.tensor([0.5, -0.2, 1e-3, -1e-3], requires_grad=True)
    s = binarize_ste(t)
    assert s.tolist() == [1.0, 0.0, 1.0, 0.0]
    (s * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert t.grad.tolist() == [1.0, 2.0, 3.0, 4.0]  # ds/dt := 1, also for switches that are off


def test_switched_off_gradient_reaches_switches_through_the_network():
    m, _, _g, _ = random_multidomain()
    m.train()
    x = torch.rand(4, 3, 32, 32)
    m(x, 1).sum().backward()
    grad = m.switches.logits[1].grad
    assert grad is not None and grad.abs().sum() > 0
    off = ~m.switches.binary()[1]
    assert grad[off].abs().sum() > 0  # an off switch still learns (straight-through)
    assert m.switches.logits[0].grad is None  # other domains untouched


def test_per_sample_domains_equal_single_domain_batches():
    m, _, _, _ = random_multidomain()
    x = torch.rand(6, 3, 32, 32)
    d = torch.tensor([0, 2, 1, 1, 0, 2])
    mixed = m(x, d)
    for k in range(3):
        idx = (d == k).nonzero().flatten()
        single = m(x[idx], k)
        torch.testing.assert_close(mixed[idx, : single.shape[1]], single)
        assert torch.isneginf(mixed[idx, single.shape[1] :]).all()


def test_only_trainable_parts_have_gradients():
    m, _, _g, _ = random_multidomain()
    frozen = m.frozen_keys()
    for name, p in m.named_parameters():
        assert p.requires_grad == (name not in frozen), name
    assert not (set(m.trainable_state()) & frozen)
