"""bap: budget-aware pruning for multi-domain CNNs.

Train per-domain channel switches on a frozen backbone (:mod:`bap.trainer`), export one compact
multi-domain ONNX model (:mod:`bap.exporter`) and run / benchmark it (:mod:`bap.runtime`).

Importing :mod:`bap` is cheap: torch, onnx and TensorRT are imported by the subpackages that need them.
``pip install bap`` is the runtime (load, predict, eval, bench on ONNX Runtime, no torch); training and export
need ``pip install 'bap[train]'``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
