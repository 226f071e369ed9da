"""Run exported models: the inference API, ``bap eval`` / ``bap predict`` and ``bap bench``.

>>> import bap.runtime as rt
>>> model = rt.load("exports/default-b0.5")           # or a single self-describing model.onnx
>>> model.predict(["cat.png", "7.png"], domains=["textures", "mnist"], top_k=3)
"""

from bap.runtime.api import Model, Prediction, load

__all__ = ["Model", "Prediction", "load"]
