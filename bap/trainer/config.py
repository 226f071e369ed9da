"""The one config dataclass of ``bap train``: validated on construction, round-trips through JSON."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bap.errors import ConfigError

if TYPE_CHECKING:
    from bap.trainer.tasks import _Task

__all__ = ["PRESETS", "TrainConfig", "budget_key", "method_names", "method_traits"]

DG_HEADS = ("auto", "shared", "per-domain")
BUDGET_UNITS = ("switches", "macs")
DEVICES = ("auto", "cpu", "cuda")
SHARING_LOSSES = ("intersection", "union", "jaccard")  # bap.trainer.objectives has the formulas
PS_WEIGHTS = ("fixed", "learned")
PROJECTIONS = ("lowest", "sharing", "swap")  # bap.trainer.finalize.project_to_budget_
DOMAIN_SAMPLINGS = ("uniform", "proportional", "sqrt")  # bap.trainer.sampling
DG_VARIANCE = ("approx", "exact")  # dgprune: Var_d(dL_d) alone, or 2 Cov_d(L_d, dL_d) + Var_d(dL_d)
DG_SCORES = ("taylor", "squared")  # dgprune: first-order loss change, or its square (Molchanov et al. 2019)

# paper settings (docs/design.md section 1; batch sizes and lambda_PS from the ICIAP 2023 paper); epochs are real
# epochs there, so steps_per_epoch = 0 means "one pass". A preset never overrides a field given explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-decathlon": {
        "lr_head": 1e-3,
        "lr_switch": 1e-4,
        "epochs": 60,
        "lr_milestones": (45,),
        "steps_per_epoch": 0,
        "batch_size": 32,
    },
    "paper-i2s": {
        "lr_head": 5e-4,
        "lr_switch": 5e-5,
        "epochs": 45,
        "lr_milestones": (15, 30),
        "steps_per_epoch": 0,
        "batch_size": 12,
        "lambda_ps": 0.125,
    },
}


def budget_key(beta: float) -> str:
    """Canonical directory / JSON key of a budget: ``1``, ``0.75``, ``0.5``, ``0.25``."""
    return f"{beta:.6g}"


def method_names() -> list[str]:
    """The registered ``--method`` names, in registration order."""
    from bap.trainer.tasks import TASKS  # lazy: the tasks import this module

    return TASKS.names()


def method_traits(method: str) -> type[_Task]:
    """The task class of ``method``; its class attributes are the method's traits (``shared_network``, ...).

    Raises:
        ConfigError: ``method`` is not registered (the message lists the registered names).
    """
    from bap.trainer.tasks import TASKS

    if method not in TASKS:
        names = ", ".join(TASKS.names())
        raise ConfigError(f"unknown method {method!r}", f"choose one of: {names} (--method)")
    return TASKS.get(method)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# One validation rule: (field, ok(value), problem, fix). ``field`` None means ok() gets the whole config.
# Messages are format templates over ``v`` (the value), ``name`` and ``flag`` (its CLI flag). Rules run in order
# and the first that fails is raised, so the order is part of the behaviour.
_Rule = tuple[str | None, Callable[[Any], bool], str, str]

_INT_MINIMA = {"epochs": 1, "batch_size": 1, "steps_per_epoch": 0, "bn_recal_images": 1, "pretrain_epochs": 0,
               "dg_importance_batches": 1, "ps_ramp_epochs": 0}  # fmt: skip

_RULES: tuple[_Rule, ...] = (
    ("dg_variance", lambda v: v in DG_VARIANCE, "unknown dg_variance {v!r}", "use --dg-variance approx or exact"),
    ("dg_score", lambda v: v in DG_SCORES, "unknown dg_score {v!r}", "use --dg-score taylor or squared"),
    (
        None,
        lambda c: not (c.dg_variance == "exact" and c.dg_score == "squared"),
        "--dg-variance exact is the change of the risk's variance: it needs --dg-score taylor",
        "drop one of the two flags",
    ),
    ("dg_head", lambda v: v in DG_HEADS, "unknown dg_head {v!r}", f"choose one of: {', '.join(DG_HEADS)} (--dg-head)"),
    ("budget_unit", lambda v: v in BUDGET_UNITS, "unknown budget unit {v!r}", "use --budget-unit switches or macs"),
    ("device", lambda v: v in DEVICES, "unknown device {v!r}", "use --device auto, cpu or cuda"),
    ("ps_scale", lambda v: v in ("none", "lambda"), "unknown ps_scale {v!r}", "use none or lambda"),
    (
        "sharing_loss",
        lambda v: v in SHARING_LOSSES,
        "unknown sharing loss {v!r}",
        f"choose one of: {', '.join(SHARING_LOSSES)} (--sharing-loss)",
    ),
    ("ps_weight", lambda v: v in PS_WEIGHTS, "unknown ps_weight {v!r}", "use --ps-weight fixed or learned"),
    (
        "union_softness",
        lambda v: _is_number(v) and 0 <= v < 1,
        "union_softness must be in [0, 1), got {v!r}",
        "fix --union-softness (0: the exact union)",
    ),
    ("projection", lambda v: v in PROJECTIONS, "unknown projection {v!r}", "use --projection lowest, sharing or swap"),
    (
        "domain_sampling",
        lambda v: v in DOMAIN_SAMPLINGS,
        "unknown domain sampling {v!r}",
        f"choose one of: {', '.join(DOMAIN_SAMPLINGS)} (--domain-sampling)",
    ),
    (
        None,
        lambda c: c.domain_sampling == "uniform" or method_traits(c.method).any_domain_sampling,
        "--method {v.method} needs --domain-sampling uniform (one batch of every domain per step)",
        "drop --domain-sampling",
    ),
    ("preset", lambda v: v is None or v in PRESETS, "unknown preset {v!r}", f"choose one of: {', '.join(PRESETS)}"),
    *(
        (
            name,
            lambda v, lo=lo: isinstance(v, int) and v >= lo,
            f"{{name}} must be an integer >= {lo}, got {{v!r}}",
            "fix --{flag}",
        )
        for name, lo in _INT_MINIMA.items()
    ),
    (
        "lr_head",
        lambda v: v is None or (_is_number(v) and v > 0),
        "{name} must be a positive number, got {v!r}",
        "fix --{flag}",
    ),
    *(
        (name, lambda v: _is_number(v) and v > 0, "{name} must be a positive number, got {v!r}", "fix --{flag}")
        for name in ("lr_bn", "lr_switch", "lr_finetune")
    ),
    *(
        (name, lambda v: _is_number(v) and v >= 0, "{name} must be >= 0, got {v!r}", "fix --{flag}")
        for name in ("lambda_ps", "weight_decay", "dg_variance_weight")
    ),
    (
        "lambda_lr",
        lambda v: v is None or (math.isfinite(v) and v > 0),
        "lambda_lr must be > 0, got {v}",
        "fix --lambda-lr",
    ),
    ("round_to", lambda v: v in (1, 8, 16, 32), "round_to must be 1, 8, 16 or 32, got {v}", "fix --round-to"),
    (
        None,
        lambda c: c.data_root is not None or c.layout == "imagefolder",
        "--layout {v.layout} needs --data-root",
        "pass --data-root DIR",
    ),
    (
        "layout",
        lambda v: v in ("imagefolder", "decathlon"),
        "unknown layout {v!r}",
        "use --layout imagefolder or decathlon",
    ),
    ("out", bool, "empty --out", "pass a run directory"),
)


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
        sharing_loss: ``intersection`` (ICIAP 2023), ``union`` or ``jaccard`` (the journal version's three losses,
            in our forms: see :mod:`bap.trainer.objectives`).
        ps_weight: ``fixed`` (``lambda_ps``) or ``learned`` (``lambda_ps * exp(-rho)``, ``rho`` learned, the weight
            kept within [lambda_ps / 10, 10 lambda_ps]).
        union_softness: ``q`` of the relaxed ``|OR|`` of the union and Jaccard losses: each other domain's switch
            counts as ``1 - q``, so a position used by ``c`` other domains is pushed off with strength ``q ** c``
            (0: the exact union, which pushes off only the positions no other domain uses).
        ps_ramp_epochs: the sharing weight rises linearly from 0 (first epoch) to full at this epoch (0: no ramp).
        projection: how a domain above its budget after training is brought onto it: ``lowest`` (its lowest-``t``
            switches), ``sharing`` (the positions used by the fewest domains first) or ``swap`` (``sharing``, then
            each domain's unique positions traded for positions all other domains use, at fixed usage; see
            :mod:`bap.trainer.finalize`).
        domain_sampling: batches per epoch of each domain: ``uniform`` (the same for all), ``proportional`` (to its
            training size: the paper's protocol) or ``sqrt``; multiplier steps are scaled to match (see
            :mod:`bap.trainer.sampling`).
        lambda_lr: step of the Lagrange multiplier's projected ascent; ``None`` picks 0.1 for beta >= 0.5 and
            0.5 below (measured on the embedded suite; 1.0 overshoots).
        epochs, steps_per_epoch: an epoch is ``steps_per_epoch`` rounds, each round one batch of every domain
            in random order (uniform sampling); 0 means one pass over the largest domain.
        lr_milestones: epochs at which all learning rates are multiplied by 0.1.
        lr_head: SGD learning rate of the heads; ``None`` scales 0.1 by 64 / feature width.
        bn_recal_images: training images per domain used to re-estimate BN statistics after training.
        round_to: channel rounding used for the compact-structure metrics (the exporter has its own flag).
        pretrain_source: domain (or ``union``) the backbone is pretrained on when no weights are given; ``None``
            uses the data's default (``mnist`` for the embedded suite).
        dg_variance_weight: ``dgprune``: weight of the across-domain variance of the importance (0: plain Taylor).
        dg_variance: ``dgprune``: ``approx`` (``Var_d(dL_d)``) or ``exact`` (``2 Cov_d(L_d, dL_d) + Var_d(dL_d)``).
        dg_score: ``dgprune``: ``taylor`` (first-order loss change) or ``squared`` (its square).
        dg_head: ``dgprune``: ``auto`` (one shared head iff the label spaces agree), ``shared`` or ``per-domain``.
        dg_importance_batches: ``dgprune``: batches per domain used to score the channels at each pruning step.
        reference_errors: JSON file ``{domain: error}`` defining S (default: the embedded suite's own reference,
            or the Visual Decathlon's fine-tuned baseline for ``--layout decathlon``).
        resume: continue the interrupted run in ``out``.
        preset: ``paper-decathlon`` or ``paper-i2s``: the paper's learning rates, epochs, batch size (and lambda_PS
            for ImageNet-to-Sketch) for every field not given explicitly (see :meth:`with_preset`).
        explicit: names of fields given explicitly (the CLI fills it from the command line); a preset does not
            override them, nor any field that differs from its default.

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
    sharing_loss: str = "intersection"
    ps_weight: str = "fixed"
    ps_ramp_epochs: int = 0
    union_softness: float = 0.5
    projection: str = "lowest"
    domain_sampling: str = "uniform"
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
    dg_variance: str = "approx"
    dg_score: str = "taylor"
    dg_importance_batches: int = 4
    reference_errors: str | None = None
    resume: bool = False
    quiet: bool = False
    explicit: tuple[str, ...] = ()

    version: int = 1

    def __post_init__(self) -> None:
        task = method_traits(self.method)
        self._check_budgets()
        if task.budget_unit is not None:
            object.__setattr__(self, "budget_unit", task.budget_unit)  # frozen dataclass: normalise, do not refuse
        for name, ok, problem, fix in _RULES:
            v = self if name is None else getattr(self, name)
            if not ok(v):
                flag = (name or "").replace("_", "-")
                raise ConfigError(problem.format(v=v, name=name, flag=flag), fix.format(v=v, name=name, flag=flag))

    def _check_budgets(self) -> None:
        if not self.budgets:
            raise ConfigError("no budgets given", "pass --budgets, e.g. 1.0,0.5")
        for b in self.budgets:
            if not (_is_number(b) and 0.0 < b <= 1.0):
                raise ConfigError(f"budget {b} is outside (0, 1]", "pass budgets like 1.0,0.75,0.5,0.25 (--budgets)")
        if len({budget_key(b) for b in self.budgets}) != len(self.budgets):
            raise ConfigError(f"budgets {list(self.budgets)} repeat a value", "list each budget once")

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def trains_switches(self) -> bool:
        """True for methods that learn per-domain switches (``bap``, ``ba2``)."""
        return method_traits(self.method).per_domain_switches

    @property
    def effective_budgets(self) -> tuple[float, ...]:
        """Budgets actually trained: methods that do not train budgets (baselines) train once, at 1.0."""
        return self.budgets if method_traits(self.method).trains_budgets else (1.0,)

    @property
    def effective_lambda_ps(self) -> float:
        """The sharing weight in use (0 for methods without the sharing loss, e.g. ``ba2``)."""
        return self.lambda_ps if method_traits(self.method).uses_sharing_loss else 0.0

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

    def explicit_fields(self) -> set[str]:
        """Fields a preset must not override: those named in ``explicit`` and those that differ from the default."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return set(self.explicit) | {k for k, v in defaults.items() if getattr(self, k) != v}

    def preset_changes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(set, kept)``: the preset values this config takes, and the preset fields it keeps because they were given."""
        if not self.preset:
            return {}, {}
        keep = self.explicit_fields()
        values = PRESETS[self.preset]
        return {k: v for k, v in values.items() if k not in keep}, {k: getattr(self, k) for k in values if k in keep}

    def with_preset(self) -> TrainConfig:
        """This config with the preset's values applied to the fields that were not given explicitly.

        Idempotent: a field the preset set now differs from its default, so a second application keeps it.
        """
        changes, _ = self.preset_changes()
        return dataclasses.replace(self, **changes) if changes else self

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
        for k in ("budgets", "domains", "lr_milestones", "explicit"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)
