"""The one config dataclass of ``bap train``: validated on construction, round-trips through JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from bap.errors import ConfigError

__all__ = ["METHODS", "PRESETS", "SHARED_METHODS", "TrainConfig", "budget_key"]

METHODS = ("bap", "ba2", "feature", "finetune", "dgprune")
DG_HEADS = ("auto", "shared", "per-domain")
BUDGET_UNITS = ("switches", "macs")
DEVICES = ("auto", "cpu", "cuda")
SWITCH_METHODS = ("bap", "ba2")
SHARED_METHODS = ("feature", "dgprune")  # one network for all domains: no per-domain switch bits

# paper settings (DESIGN.md section 1); epochs are real epochs there, so steps_per_epoch = 0 means "one pass"
PRESETS: dict[str, dict[str, Any]] = {
    "paper-decathlon": {
        "lr_head": 1e-3,
        "lr_switch": 1e-4,
        "epochs": 60,
        "lr_milestones": (45,),
        "steps_per_epoch": 0,
        "batch_size": 128,
    },
    "paper-i2s": {
        "lr_head": 5e-4,
        "lr_switch": 5e-5,
        "epochs": 45,
        "lr_milestones": (15, 30),
        "steps_per_epoch": 0,
        "batch_size": 32,
    },
}


def budget_key(beta: float) -> str:
    """Canonical directory / JSON key of a budget: ``1``, ``0.75``, ``0.5``, ``0.25``."""
    return f"{beta:.6g}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``bap train`` does, in one validated, JSON-serialisable object.

    Attributes:
        out: run directory.
        method: ``bap`` (sharing loss), ``ba2`` (joint, ``lambda_ps = 0``), ``feature`` (frozen backbone, heads
            only), ``finetune`` (whole network per domain).
        budgets: switch budgets beta in (0, 1]; one switch/BN/head set is trained per budget.
        budget_unit: ``switches`` (the paper: plain mean of switches) or ``macs`` (each switch weighted by the
            MACs it controls, so beta bounds each domain's compute).
        lambda_ps: weight of the parameter-sharing loss (``bap`` only).
        ps_scale: ``none`` or ``lambda`` (multiply the sharing weight by ``max(1, lambda_d)``, so it keeps pace
            with the budget multiplier at small budgets).
        lambda_lr: step of the Lagrange multiplier's projected ascent; ``None`` picks 0.1 for beta >= 0.5 and
            0.5 below (measured on the embedded suite; 1.0 overshoots).
        epochs, steps_per_epoch: an epoch is ``steps_per_epoch`` rounds, each round one batch of every domain
            in random order; 0 means one pass over the largest domain.
        lr_milestones: epochs at which all learning rates are multiplied by 0.1.
        lr_head: SGD learning rate of the heads; ``None`` scales 0.1 by 64 / feature width.
        bn_recal_images: training images per domain used to re-estimate BN statistics after training.
        round_to: channel rounding used for the compact-structure metrics (the exporter has its own flag).
        pretrain_source: domain (or ``union``) the backbone is pretrained on when no weights are given; ``None``
            uses the data's default (``mnist`` for the embedded suite).
        dg_variance_weight: ``dgprune``: weight of the across-domain variance of the importance (0: plain Taylor).
        dg_head: ``dgprune``: ``auto`` (one shared head iff the label spaces agree), ``shared`` or ``per-domain``.
        dg_importance_batches: ``dgprune``: batches per domain used to score the channels at each pruning step.
        resume: continue the interrupted run in ``out``.

    ``dgprune`` budgets are always fractions of the backbone's MACs (``budget_unit`` is set to ``macs``).
    """

    out: str = "runs/default"
    method: str = "bap"
    budgets: tuple[float, ...] = (1.0, 0.5)
    budget_unit: str = "switches"
    backbone: str = "cifar_resnet14"
    weights: str | None = None
    data_root: str | None = None
    layout: str = "imagefolder"
    domains: tuple[str, ...] = ()
    seed: int = 0
    epochs: int = 6
    steps_per_epoch: int = 32
    batch_size: int = 64
    lr_head: float | None = None
    lr_bn: float = 0.01
    lr_switch: float = 1e-4
    lr_finetune: float = 0.01
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = (5,)
    lambda_ps: float = 1.0
    ps_scale: str = "none"
    lambda_lr: float | None = None
    bn_recal_images: int = 2048
    pretrain_epochs: int = 6
    pretrain_source: str | None = None
    round_to: int = 1
    device: str = "auto"
    amp: bool = True
    preset: str | None = None
    dg_variance_weight: float = 4.0
    dg_head: str = "auto"
    dg_importance_batches: int = 4
    resume: bool = False
    quiet: bool = False

    version: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}", f"choose one of: {', '.join(METHODS)} (--method)")
        if not self.budgets:
            raise ConfigError("no budgets given", "pass --budgets, e.g. 1.0,0.5")
        for b in self.budgets:
            if not (isinstance(b, (int, float)) and math.isfinite(b) and 0.0 < b <= 1.0):
                raise ConfigError(f"budget {b} is outside (0, 1]", "pass budgets like 1.0,0.75,0.5,0.25 (--budgets)")
        if len({budget_key(b) for b in self.budgets}) != len(self.budgets):
            raise ConfigError(f"budgets {list(self.budgets)} repeat a value", "list each budget once")
        if self.method == "dgprune":
            object.__setattr__(self, "budget_unit", "macs")  # frozen dataclass: normalise, do not refuse
        if self.dg_head not in DG_HEADS:
            raise ConfigError(f"unknown dg_head {self.dg_head!r}", f"choose one of: {', '.join(DG_HEADS)} (--dg-head)")
        if self.budget_unit not in BUDGET_UNITS:
            raise ConfigError(f"unknown budget unit {self.budget_unit!r}", "use --budget-unit switches or macs")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}", "use --device auto, cpu or cuda")
        if self.ps_scale not in ("none", "lambda"):
            raise ConfigError(f"unknown ps_scale {self.ps_scale!r}", "use none or lambda")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}", f"choose one of: {', '.join(PRESETS)}")
        ints = {"epochs": 1, "batch_size": 1, "steps_per_epoch": 0, "bn_recal_images": 1, "pretrain_epochs": 0,
                "dg_importance_batches": 1}  # fmt: skip
        for name, lo in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}", f"fix --{name.replace('_', '-')}")
        for name in ("lr_head", "lr_bn", "lr_switch", "lr_finetune"):
            v = getattr(self, name)
            if v is None and name == "lr_head":
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, got {v!r}", f"fix --{name.replace('_', '-')}")
        for name in ("lambda_ps", "weight_decay", "dg_variance_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be >= 0, got {v!r}", f"fix --{name.replace('_', '-')}")
        if self.lambda_lr is not None and not (math.isfinite(self.lambda_lr) and self.lambda_lr > 0):
            raise ConfigError(f"lambda_lr must be > 0, got {self.lambda_lr}", "fix --lambda-lr")
        if self.round_to not in (1, 8, 16, 32):
            raise ConfigError(f"round_to must be 1, 8, 16 or 32, got {self.round_to}", "fix --round-to")
        if self.data_root is None and self.layout != "imagefolder":
            raise ConfigError(f"--layout {self.layout} needs --data-root", "pass --data-root DIR")
        if self.layout not in ("imagefolder", "decathlon"):
            raise ConfigError(f"unknown layout {self.layout!r}", "use --layout imagefolder or decathlon")
        if not self.out:
            raise ConfigError("empty --out", "pass a run directory")

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def trains_switches(self) -> bool:
        """True for ``bap`` and ``ba2``."""
        return self.method in SWITCH_METHODS

    @property
    def effective_budgets(self) -> tuple[float, ...]:
        """Budgets actually trained: baselines without switches train once, at 1.0."""
        return self.budgets if self.trains_switches or self.method == "dgprune" else (1.0,)

    @property
    def effective_lambda_ps(self) -> float:
        """The sharing weight in use (0 for ``ba2``)."""
        return self.lambda_ps if self.method == "bap" else 0.0

    def head_lr(self, feature_dim: int) -> float:
        """SGD learning rate of the heads: ``lr_head``, or 0.1 scaled by 64 / feature width.

        0.1 suits 64-d features; wider features give proportionally larger logits, and 0.1 diverges on ResNet-50's
        2048-d ones.
        """
        if self.lr_head is not None:
            return self.lr_head
        return 0.1 * min(1.0, 64.0 / feature_dim)

    def lambda_step(self, beta: float) -> float:
        """Projected-ascent step of the budget multiplier for budget ``beta``."""
        if self.lambda_lr is not None:
            return self.lambda_lr
        return 0.1 if beta >= 0.5 else 0.5

    def with_preset(self) -> TrainConfig:
        """This config with the preset's values applied (explicit fields are overridden by the preset)."""
        if not self.preset:
            return self
        return dataclasses.replace(self, **PRESETS[self.preset])

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused, a newer version is refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}", "was this written by a newer bap?")
        if int(d.get("version", 1)) > 1:
            raise ConfigError(f"train config version {d['version']} is newer than this bap", "upgrade bap")
        kw = dict(d)
        for k in ("budgets", "domains", "lr_milestones"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)
