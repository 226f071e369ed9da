"""dgprune options: heads trained before the first prune, the exact risk-variance change, the squared score."""

import pytest
import torch

from bap.errors import ConfigError
from bap.trainer import TrainConfig
from bap.trainer.dgprune import DGPruneTask, dg_importance


def test_exact_variance_change_is_two_cov_plus_var_by_hand():
    losses = torch.tensor([1.0, 3.0])
    delta = torch.tensor([[0.1, 0.2], [0.3, 0.2]])  # position 0 hurts the worse domain more; position 1 evenly
    approx = dg_importance(delta, 1.0)
    exact = dg_importance(delta, 1.0, losses=losses)
    scale = 0.2  # mean |mean_d delta|
    assert approx.tolist() == pytest.approx([0.2 + 0.01 / scale, 0.2])
    # Var(L + delta) - Var(L): [1.1, 3.3] -> 1.21 against 1.0 = 0.21 = 2 * 0.1 (Cov) + 0.01 (Var)
    assert exact.tolist() == pytest.approx([0.2 + 0.21 / scale, 0.2])
    direct = (losses + delta[:, 0]).var(unbiased=False) - losses.var(unbiased=False)
    assert float(direct) == pytest.approx(0.21)


def test_exact_change_can_favour_pruning_what_helps_the_worst_domain():
    # removing position 0 costs the best domain and spares the worst one: the risk variance shrinks
    losses = torch.tensor([0.5, 2.5])
    delta = torch.tensor([[0.3, 0.1], [0.0, 0.1]])
    exact = dg_importance(delta, 1.0, losses=losses)
    approx = dg_importance(delta, 1.0)
    assert approx[0] > approx[1]  # the approximation only sees the spread and keeps position 0
    assert exact[0] < exact[1]  # the exact change sees that the spread narrows the gap between domains


class _Ctx:
    def __init__(self, epochs):
        self.cfg = TrainConfig(method="dgprune", epochs=epochs)


@pytest.mark.parametrize(
    ("epochs", "targets"),
    [(6, [1.0, 0.875, 0.75, 0.625, 0.5, 0.5]), (3, [1.0, 0.5, 0.5]), (2, [1.0, 0.5]), (1, [1.0])],
)
def test_the_first_epoch_trains_the_heads_before_any_prune(epochs, targets):
    task = DGPruneTask.__new__(DGPruneTask)  # target() needs only the config and the budget
    task.ctx, task.beta = _Ctx(epochs), 0.5
    assert [task.target(e) for e in range(epochs)] == pytest.approx(targets)


def test_option_flags_are_checked():
    assert TrainConfig(method="dgprune", dg_variance="exact").dg_variance == "exact"
    assert TrainConfig(method="dgprune", dg_score="squared").dg_score == "squared"
    with pytest.raises(ConfigError, match="needs --dg-score taylor"):
        TrainConfig(method="dgprune", dg_variance="exact", dg_score="squared")
    with pytest.raises(ConfigError, match="dg-variance"):
        TrainConfig(method="dgprune", dg_variance="full")
    with pytest.raises(ConfigError, match="dg-score"):
        TrainConfig(method="dgprune", dg_score="l1")
