import pytest
import torch

from bap.core.multidomain import binarize_ste
from bap.trainer.objectives import and_fraction, budget_hinge, lagrange_step, sharing_loss


def test_multiplier_rises_while_violated_and_stays_zero_when_met():
    lam = 0.0
    history = []
    for usage in [0.9, 0.8, 0.7, 0.6]:  # above beta = 0.5: rises by eta * violation
        lam = lagrange_step(lam, usage, 0.5, 0.1)
        history.append(lam)
    assert history == pytest.approx([0.04, 0.07, 0.09, 0.10])
    for _ in range(20):  # met: projected back to 0 and kept there
        lam = lagrange_step(lam, 0.45, 0.5, 0.1)
    assert lam == 0.0
    assert lagrange_step(0.0, 0.3, 0.5, 1.0) == 0.0


def test_budget_hinge_only_pushes_down_when_violated():
    u = torch.tensor(0.7, requires_grad=True)
    budget_hinge(u, 0.5, 2.0).backward()
    assert u.grad == pytest.approx(2.0)
    u2 = torch.tensor(0.4, requires_grad=True)
    out = budget_hinge(u2, 0.5, 2.0)
    out.backward()
    assert float(out.detach()) == 0.0 and u2.grad == 0.0


def test_and_count_and_sharing_gradient_hand_computed():
    # 3 domains, M = 4 switches; domain 0 is the one taking a step
    t0 = torch.tensor([0.1, 0.1, -0.1, 0.1], requires_grad=True)
    s1 = torch.tensor([1.0, 1.0, 1.0, 0.0])
    s2 = torch.tensor([1.0, 0.0, 1.0, 1.0])
    w = torch.full((4,), 0.25)
    others = s1 * s2  # [1, 0, 1, 0]
    s0 = binarize_ste(t0)  # [1, 1, 0, 1]
    inter = and_fraction(s0, others, w)
    assert float(inter) == pytest.approx(0.25)  # only position 0 is on everywhere: |AND| / M = 1/4
    beta, lam_ps = 0.5, 1.0
    loss = sharing_loss(inter, beta, lam_ps)
    assert float(loss) == pytest.approx(1.0 * (1 - 0.25 / 0.5))
    loss.backward()
    # d/dt0_i = -lam_ps / (M beta) * prod_{other domains} s_i  (straight-through)
    assert t0.grad.tolist() == pytest.approx([-0.5, 0.0, -0.5, 0.0])


def test_sharing_loss_is_zero_when_and_reaches_budget():
    inter = torch.tensor(0.5, requires_grad=True)
    out = sharing_loss(inter, 0.5, 1.0)
    out.backward()
    assert float(out) == 0.0 and float(inter.grad) == 0.0
