import torch

from bap.core.metrics import budget_usage
from bap.testing import random_multidomain
from bap.trainer.finalize import project_to_budget_


def test_projection_enforces_the_budget_by_switching_off_lowest_t():
    m, _, g, _ = random_multidomain("cifar_resnet14", p_on=1.0)
    with torch.no_grad():
        for i, t in enumerate(m.switches.logits):
            t.copy_(
                torch.linspace(-0.1, 1.0, t.numel())[
                    torch.randperm(t.numel(), generator=torch.Generator().manual_seed(i))
                ]
            )
    w = torch.full((g.num_switches,), 1.0 / g.num_switches)
    before = budget_usage(m.switches.binary(), w.double())
    changed = project_to_budget_(m, 0.5, w)
    after = budget_usage(m.switches.binary(), w.double())
    assert all(u > 0.5 for u in before) and all(u <= 0.5 for u in after)
    assert set(changed) == {0, 1, 2}
    for t in m.switches.logits:  # the kept switches are the largest ones
        kept = t.detach() > 0
        assert float(t.detach()[kept].min()) >= float(t.detach()[~kept].max()) - 1e-12


def test_projection_with_mac_weights_bounds_compute():
    m, _, g, _ = random_multidomain("cifar_resnet14", p_on=1.0)
    w = g.mac_weights().float()
    w = w / w.sum()
    project_to_budget_(m, 0.3, w)
    assert all(u <= 0.3 + 1e-9 for u in budget_usage(m.switches.binary(), w.double()))
