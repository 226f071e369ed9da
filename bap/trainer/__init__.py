"""``bap train``: budget-aware multi-domain switch training with the parameter-sharing loss.

Public API: :class:`TrainConfig`, :func:`train`, :func:`load_run`.
"""

from bap.trainer.config import TrainConfig

__all__ = ["TrainConfig", "load_run", "train"]


def train(cfg: TrainConfig, callback=None) -> dict:
    """Run training as configured and return the report (see :func:`bap.trainer.loop.train`)."""
    from bap.trainer.loop import train as _train

    return _train(cfg, callback)


def load_run(run_dir, budget: float | None = None, **kwargs):
    """Load a trained budget of a run directory (see :func:`bap.trainer.artifacts.load_run`)."""
    from bap.trainer.artifacts import load_run as _load

    return _load(run_dir, budget, **kwargs)
