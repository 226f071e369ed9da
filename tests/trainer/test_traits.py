"""Method traits live on the registered task classes; config, artifacts and the CLI ask them, not method names."""

from __future__ import annotations

import pytest

from bap.errors import BapError, ConfigError, TrainingInterrupted
from bap.trainer.config import TrainConfig, method_names, method_traits
from bap.trainer.tasks import TASKS


def test_the_registry_is_complete_and_in_registration_order():
    assert method_names() == ["bap", "ba2", "feature", "finetune", "dgprune"]


@pytest.mark.parametrize(
    ("method", "shared", "budgets", "switches", "sharing", "exportable"),
    [
        ("bap", False, True, True, True, True),
        ("ba2", False, True, True, False, True),
        ("feature", True, False, False, False, True),
        ("finetune", False, False, False, False, False),
        ("dgprune", True, True, False, False, True),
    ],
)
def test_traits_of_the_built_in_methods(method, shared, budgets, switches, sharing, exportable):
    t = TASKS.get(method)
    assert (t.shared_network, t.trains_budgets, t.per_domain_switches, t.uses_sharing_loss, t.exportable) == (
        shared,
        budgets,
        switches,
        sharing,
        exportable,
    )
    cfg = TrainConfig(method=method, budgets=(1.0, 0.5))
    assert cfg.effective_budgets == ((1.0, 0.5) if budgets else (1.0,))
    assert cfg.trains_switches == switches
    assert (cfg.effective_lambda_ps > 0) == sharing


def test_unknown_method_lists_the_registered_names_in_order():
    with pytest.raises(ConfigError, match=r"unknown method 'prune'.*bap, ba2, feature, finetune, dgprune \(--method\)"):
        TrainConfig(method="prune")
    with pytest.raises(ConfigError):
        method_traits("prune")


def test_training_interrupted_is_a_bap_error_with_exit_130():
    from bap.cli._errors import report_error

    exc = TrainingInterrupted("interrupted at budget 0.5, epoch 1, step 3")
    assert isinstance(exc, BapError) and exc.exit_code == 130
    assert exc.one_line() == "interrupted at budget 0.5, epoch 1, step 3; checkpoint saved, continue with --resume"
    assert report_error(exc) == 130
