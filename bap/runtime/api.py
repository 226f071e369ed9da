"""The inference API: open an export (directory or self-describing ``model.onnx``), validate inputs, run.

Inputs are checked before the runtime sees them (dtype, rank, channels, spatial size, NaN/Inf, empty batch,
domain names / ids), and every problem is a one-line :class:`~bap.errors.InputError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from bap.core.io import file_sha256
from bap.errors import ConfigError, IncompatibleArtifactError, InputError

__all__ = ["ImageLike", "Model", "Prediction", "load"]

log = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, "np.ndarray", Any]  # path, array [H,W,C]/[C,H,W], or PIL image


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one sample."""

    domain: str
    top_k: list[tuple[str, float]]
    source: str | None = None

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.top_k[0][0]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "source": self.source,
            "domain": self.domain,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
        }


def _softmax_valid(logits: np.ndarray, k: int) -> np.ndarray:
    z = logits[:k].astype(np.float64)
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


class Model:
    """An exported bap model ready to run.

    Attributes:
        manifest: the validated ``bap.export/1`` manifest.
        domains: served domain names (index = domain id).
        backend: the inference backend (``providers`` says what actually runs).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], backend: Any):
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.domains = [d["name"] for d in manifest["domains"]]
        self.classes = {d["name"]: list(d["classes"]) for d in manifest["domains"]}
        self.preprocess = manifest["input"]["preprocess"]

    def __repr__(self) -> str:
        return f"Model({self.path}, domains={self.domains}, backend={self.backend.name}, providers={self.backend.providers})"

    # ------------------------------------------------------------------------------------------- domains
    def domain_index(self, domain: str | int) -> int:
        """Resolve a domain name or id, refusing unknown names and out-of-range ids."""
        if isinstance(domain, (bool, np.bool_)):
            raise InputError(f"domain {domain!r} is not a name or an integer id", f"use one of {self.domains}")
        if isinstance(domain, (int, np.integer)):
            if not 0 <= int(domain) < len(self.domains):
                raise InputError(
                    f"domain id {int(domain)} is out of range [0, {len(self.domains) - 1}]",
                    f"ids: {dict(enumerate(self.domains))}",
                )
            return int(domain)
        if isinstance(domain, str):
            if domain not in self.domains:
                raise InputError(f"unknown domain {domain!r}", f"choose one of: {', '.join(self.domains)}")
            return self.domains.index(domain)
        raise InputError(f"domain {domain!r} is not a name or an integer id", f"use one of {self.domains}")

    def domain_ids(self, domains: str | int | Sequence[str | int] | np.ndarray, n: int) -> np.ndarray:
        """One int64 id per sample (a single name / id is broadcast)."""
        if isinstance(domains, (str, bytes)) or np.ndim(domains) == 0:
            return np.full(n, self.domain_index(domains), dtype=np.int64)
        seq = list(np.asarray(domains).tolist()) if isinstance(domains, np.ndarray) else list(domains)
        if len(seq) != n:
            raise InputError(f"{len(seq)} domains for {n} samples", "pass one domain, or one per sample")
        return np.array([self.domain_index(d) for d in seq], dtype=np.int64)

    def input_size(self, domain: str | int) -> int:
        """The square input size of ``domain`` (its center crop)."""
        return int(self.preprocess[self.domains[self.domain_index(domain)]]["crop"])

    # ------------------------------------------------------------------------------------------- arrays
    def check_batch(self, x: Any) -> np.ndarray:
        """Validate a batch ``[B, 3, H, W]`` of pixels in [0, 1] and return it as float32.

        uint8 input is accepted and scaled by 1/255; any other non-float dtype, another rank or channel count,
        NaN/Inf, an empty batch or values far outside [0, 1] are refused.
        """
        if not isinstance(x, np.ndarray):
            try:
                import torch

                if isinstance(x, torch.Tensor):
                    x = x.detach().cpu().numpy()
            except ImportError:
                pass
        if not isinstance(x, np.ndarray):
            raise InputError(
                f"expected a numpy array [B,3,H,W], got {type(x).__name__}", "use predict() for images or files"
            )
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif x.dtype.kind != "f":
            raise InputError(f"dtype {x.dtype} is not supported", "pass float32 in [0,1] or uint8 in [0,255]")
        if x.ndim != 4:
            raise InputError(f"expected rank 4 [B,3,H,W], got shape {tuple(x.shape)}", "add a batch axis: x[None]")
        if x.shape[0] == 0:
            raise InputError("empty batch (B = 0)", "pass at least one image")
        if x.shape[1] != 3:
            raise InputError(
                f"expected 3 channels (RGB, NCHW), got shape {tuple(x.shape)}",
                "convert to RGB; use predict() for grayscale/RGBA files",
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise InputError(f"empty spatial size {tuple(x.shape[2:])}", "pass real images")
        if not np.all(np.isfinite(x)):
            raise InputError("input contains NaN or Inf", "clean the input")
        lo, hi = self.manifest["input"]["pixel_range"]
        if float(x.min()) < lo - 1e-3 or float(x.max()) > hi + 1e-3:
            raise InputError(
                f"pixel values span [{float(x.min()):.3g}, {float(x.max()):.3g}], outside [{lo}, {hi}]",
                "pass unnormalised pixels in [0,1] (the model normalises per domain)",
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def logits(self, x: Any, domains: str | int | Sequence[str | int] | np.ndarray, resize: bool = False) -> np.ndarray:
        """Logits ``[B, K_max]`` (``-inf`` beyond each sample's classes) for a validated batch.

        Args:
            x: ``[B, 3, H, W]`` pixels in [0, 1].
            domains: a domain (name or id) for all samples, or one per sample.
            resize: resize images whose size differs from their domain's input size (else that is an error).
        """
        x = self.check_batch(x)
        ids = self.domain_ids(domains, x.shape[0])
        sizes = np.array([self.input_size(int(i)) for i in ids])
        if not np.all(sizes == sizes[0]) or x.shape[2:] != (sizes[0], sizes[0]):
            if not resize:
                raise InputError(
                    f"images are {x.shape[2]}x{x.shape[3]} but domain {self.domains[int(ids[0])]!r} expects {sizes[0]}x{sizes[0]}",
                    "resize them, pass resize=True, or use predict() which preprocesses",
                )
        out = np.empty((x.shape[0], self._k_max()), dtype=np.float32)
        for s in np.unique(sizes):  # one run per input size (Decathlon mixes 64 and 72 px domains)
            sel = np.flatnonzero(sizes == s)
            xs = x[sel]
            if xs.shape[2:] != (s, s):
                xs = _resize_batch(xs, int(s))
            out[sel] = self.backend.run({"image": xs, "domain": ids[sel]})
        return out

    def _k_max(self) -> int:
        return max(len(c) for c in self.classes.values())

    # ------------------------------------------------------------------------------------------- images
    def load_image(self, image: ImageLike, domain: str | int) -> np.ndarray:
        """Decode (guarded) and preprocess one image for ``domain``: ``[3, S, S]`` float32 in [0, 1]."""
        import torch

        from bap.data.images import decode_image, resize_center_crop, to_rgb_float

        pre = self.preprocess[self.domains[self.domain_index(domain)]]
        if isinstance(image, (str, os.PathLike)):
            t = to_rgb_float(decode_image(image))
        elif isinstance(image, np.ndarray):
            a = image
            if a.ndim == 2:
                a = np.repeat(a[None], 3, 0)
            elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3):
                a = np.moveaxis(a, -1, 0)
            if a.ndim != 3 or a.shape[0] not in (1, 3, 4):
                raise InputError(
                    f"cannot read an image from an array of shape {a.shape}", "pass [H,W], [H,W,C] or [C,H,W]"
                )
            a = a[:3] if a.shape[0] == 4 else np.repeat(a, 3, 0) if a.shape[0] == 1 else a
            a = a.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
            if not np.all(np.isfinite(a)):
                raise InputError("image array contains NaN or Inf", "clean the input")
            t = torch.from_numpy(np.clip(a, 0.0, 1.0))
        elif hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
            t = to_rgb_float(image)
        else:
            raise InputError(
                f"cannot read an image from {type(image).__name__}", "pass a file path, PIL image or array"
            )
        if t.shape[1] < 1 or t.shape[2] < 1:
            raise InputError("image has no pixels", "pass a real image")
        t = resize_center_crop(t, int(pre["load_size"]))
        crop, s = int(pre["crop"]), int(pre["load_size"])
        o = (s - crop) // 2
        return t[:, o : o + crop, o : o + crop].contiguous().numpy()

    def predict(
        self, images: Sequence[ImageLike] | ImageLike, domains: str | int | Sequence[str | int], top_k: int = 5
    ) -> list[Prediction]:
        """Top-k (class name, probability) per image; ``domains`` is one domain or one per image."""
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
            images = [images]
        images = list(images)
        if not images:
            raise InputError("no images given", "pass at least one image")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}", "e.g. top_k=5")
        ids = self.domain_ids(domains, len(images))
        batch = [self.load_image(im, int(d)) for im, d in zip(images, ids, strict=True)]
        out: list[Prediction | None] = [None] * len(batch)
        shapes = [b.shape for b in batch]
        for shp in sorted(set(shapes)):
            sel = [i for i, s in enumerate(shapes) if s == shp]
            z = self.logits(np.stack([batch[i] for i in sel]), ids[sel])
            for row, i in zip(z, sel, strict=True):
                name = self.domains[int(ids[i])]
                k = len(self.classes[name])
                p = _softmax_valid(row, k)
                order = np.argsort(-p)[: min(top_k, k)]
                src = str(images[i]) if isinstance(images[i], (str, os.PathLike)) else None
                out[i] = Prediction(name, [(self.classes[name][j], float(p[j])) for j in order], src)
        return out  # type: ignore[return-value]


def _resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1).numpy()


def _verify_files(root: Path, manifest: dict[str, Any], names: Sequence[str]) -> None:
    files = manifest.get("files", {})
    for name in names:
        p = root / name
        if not p.is_file():
            raise IncompatibleArtifactError(f"{p} is missing from the export", "re-export the model")
        info = files.get(name)
        if isinstance(info, dict) and info.get("sha256") and file_sha256(p) != info["sha256"]:
            raise IncompatibleArtifactError(
                f"{p} does not match the hash in manifest.json (modified or corrupt)", "re-export the model"
            )


def _check_onnx(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, ValidationError, OSError
        raise IncompatibleArtifactError(
            f"{path} is not a valid ONNX model ({type(e).__name__})", "re-export the model"
        ) from None
    return model


def load(path: str | os.PathLike, backend: str = "ort", device: str = "cpu", threads: int | None = None) -> Model:
    """Open an export directory (``manifest.json``) or a self-describing ``model.onnx``.

    Args:
        backend: ``ort`` (ONNX Runtime) or ``trt`` (the export's TensorRT engine ``model.plan``).
        device: ``cpu``, ``cuda`` or ``jetson`` (ONNX Runtime execution providers follow it).
        threads: intra-op threads of ONNX Runtime (default: its own choice).

    Raises:
        IncompatibleArtifactError: missing, corrupt, modified or foreign export / manifest / ONNX file.
    """
    from bap.exporter.manifest import manifest_from_onnx, read_manifest
    from bap.runtime.backends import BACKENDS

    path = Path(path)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}", "e.g. --threads 2")
    if not path.exists():
        raise IncompatibleArtifactError(f"{path} does not exist", "pass an export directory or model.onnx")
    if path.is_dir():
        manifest = read_manifest(path)
        model_file = path / manifest["model"]
        _verify_files(path, manifest, [manifest["model"]])
        _check_onnx(model_file)
        root = path
    else:
        if path.suffix != ".onnx":
            raise IncompatibleArtifactError(
                f"{path} is not an .onnx file or export directory", "pass an export directory or model.onnx"
            )
        manifest = manifest_from_onnx(_check_onnx(path))
        model_file, root = path, path.parent
    cls = BACKENDS.get(backend)
    if backend == "trt":
        engine = root / "model.plan"
        if not engine.is_file():
            raise IncompatibleArtifactError(
                f"{root} has no TensorRT engine (model.plan)", f"build it: bap export RUN --target trt --out {root}"
            )
        be = cls(engine, device)
    else:
        be = cls(model_file, device, threads)
    return Model(model_file, manifest, be)
