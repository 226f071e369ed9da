"""The sharing-aware projection frees minority positions and keeps |AND|; today's projection stays behind a flag."""

import pytest
import torch

from bap.core.metrics import budget_usage, sharing_fractions
from bap.core.multidomain import SwitchBank
from bap.trainer.finalize import project_to_budget_


class _Switches(torch.nn.Module):
    """Just enough of a MultiDomainNet for the projection: ``switches``."""

    def __init__(self, t):
        super().__init__()
        self.switches = SwitchBank(len(t), len(t[0]))
        with torch.no_grad():
            for p, row in zip(self.switches.logits, t, strict=True):
                p.copy_(torch.tensor(row))


def _two_domains():
    # domain 0 uses positions 0 (shared with domain 1, lowest t), 1 and 2; domain 1 uses 0 and 3
    return _Switches([[0.001, 0.003, 0.002, -0.001], [0.002, -0.001, -0.001, 0.002]])


def test_the_issue_example_lowest_switches_off_the_shared_position():
    m = _two_domains()
    changed = project_to_budget_(m, 0.5, torch.full((4,), 0.25), "lowest")
    on = m.switches.binary()
    assert changed == {0: 1} and on[0].tolist() == [False, True, True, False]
    assert sharing_fractions(on) == (0.0, 1.0)  # |AND|/M 0.25 -> 0, |OR|/M stays 1


def test_the_issue_example_sharing_switches_off_a_unique_position():
    m = _two_domains()
    changed = project_to_budget_(m, 0.5, torch.full((4,), 0.25), "sharing")
    on = m.switches.binary()
    assert changed == {0: 1} and on[0].tolist() == [True, True, False, False]  # position 2: unique, lowest t
    assert sharing_fractions(on) == (0.25, 0.75)  # |AND| kept, |OR| 1.0 -> 0.75


def test_and_positions_go_only_when_nothing_else_is_left():
    # domain 0 holds 3 positions: two every domain uses and one unique; beta 0.25 of M = 4 leaves one
    m = _Switches([[0.001, 0.002, 0.003, -0.1], [0.005, 0.005, -0.1, 0.005]])
    project_to_budget_(m, 0.25, torch.full((4,), 0.25), "sharing")
    on = m.switches.binary()
    assert on[0].tolist() == [False, True, False, False]  # the unique one first, then the lower-t shared one
    # domain 1 then gives up the two positions it is now alone on, and both domains end on one shared position
    assert on[1].tolist() == [False, True, False, False] and sharing_fractions(on) == (0.25, 0.25)


def test_counts_update_between_domains():
    # position 1 is used by domains 0 and 1 only; once domain 0 leaves it, domain 1 uses it alone and leaves it next
    m = _Switches([[0.001, 0.001, -0.1, 0.003], [0.001, 0.009, 0.002, -0.1], [0.001, -0.1, 0.004, 0.003]])
    project_to_budget_(m, 0.5, torch.full((4,), 0.25), "sharing")
    on = m.switches.binary()
    assert on.any(0).tolist() == [True, False, True, True]  # position 1 freed, although domain 1 ranked it highest
    assert all(u <= 0.5 for u in budget_usage(on, torch.full((4,), 0.25)).tolist())


@pytest.mark.parametrize("seed", range(5))
def test_sharing_never_keeps_fewer_shared_or_more_used_positions_than_lowest(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, 300, generator=g) * 1e-3 + 5e-4  # about 70% on in each domain, independently
    w = torch.full((300,), 1 / 300)
    results = {}
    for mode in ("lowest", "sharing"):
        m = _Switches(base.tolist())
        project_to_budget_(m, 0.4, w, mode)
        on = m.switches.binary()
        assert all(u <= 0.4 + 1e-9 for u in budget_usage(on, w.double()).tolist())
        results[mode] = sharing_fractions(on)
    (and_l, or_l), (and_s, or_s) = results["lowest"], results["sharing"]
    assert and_s >= and_l and or_s <= or_l
    assert or_s < or_l  # and strictly better here: the lowest projection ignores who else uses a position


def test_mac_weighted_sharing_projection_bounds_compute():
    from bap.testing import random_multidomain

    m, _, g, _ = random_multidomain("cifar_resnet14", p_on=1.0)
    w = g.mac_weights().float()
    w = w / w.sum()
    project_to_budget_(m, 0.3, w, "sharing")
    assert all(u <= 0.3 + 1e-9 for u in budget_usage(m.switches.binary(), w.double()))
    with pytest.raises(ValueError, match="unknown projection"):
        project_to_budget_(m, 0.3, w, "random")


def test_swap_trades_a_unique_position_for_one_all_others_use_at_fixed_usage():
    from bap.trainer.finalize import swap_to_shared_

    t = [[0.005, 0.004, 0.001, -0.002, -0.5, -0.5], [0.005, -0.1, -0.1, 0.003, 0.002, -0.1],
         [0.005, -0.1, -0.1, 0.003, -0.1, 0.002]]  # fmt: skip
    m = _Switches(t)
    w = torch.full((6,), 1 / 6)
    before = budget_usage(m.switches.binary(), w.double())
    assert swap_to_shared_(m, 0.5, w) == {0: 1}
    on = m.switches.binary()
    # domain 0's lowest unique position (2) went for position 3, which both others use; 1 (t 0.004) stays
    assert on[0].tolist() == [True, True, False, True, False, False]
    assert sharing_fractions(on) == pytest.approx((2 / 6, 5 / 6))  # |AND| 1 -> 2, |OR| 6 -> 5
    assert torch.equal(budget_usage(on, w.double()), before)
    assert swap_to_shared_(m, 0.5, w) == {}  # nothing left to trade


def test_swap_projection_holds_the_budget_and_shares_at_least_as_much_as_sharing():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(4, 300, generator=g) * 1e-3 + 5e-4
    w = torch.full((300,), 1 / 300)
    res = {}
    for mode in ("sharing", "swap"):
        m = _Switches(base.tolist())
        project_to_budget_(m, 0.4, w, mode)
        on = m.switches.binary()
        assert all(u <= 0.4 + 1e-9 for u in budget_usage(on, w.double()).tolist())
        res[mode] = sharing_fractions(on)
    assert res["swap"][0] > res["sharing"][0] and res["swap"][1] < res["sharing"][1]
