"""The inference API: open an export (directory or self-describing ``model.onnx``), validate inputs, run.

Inputs are checked before the runtime sees them (dtype, rank, channels, spatial size, NaN/Inf, empty batch,
domain names / ids), and every problem is a one-line :class:`~bap.errors.InputError`. The export's files are
checked against the manifest's sha256 before they are opened.

Needs only numpy, Pillow and ONNX Runtime: neither torch nor onnx is imported, also while loading and predicting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from bap.data.imaging import decode_image, resize_array, resize_center_crop_array, to_rgb_array
from bap.errors import ConfigError, IncompatibleArtifactError, InputError

if TYPE_CHECKING:
    from bap.exporter.manifest import Manifest

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


# (predicate, problem, fix) per structural check of a batch, in the order they are tried
_BatchCheck = tuple[Callable[[np.ndarray], bool], Callable[[np.ndarray], str], str]
_BATCH_CHECKS: tuple[_BatchCheck, ...] = (
    (
        lambda x: x.ndim != 4,
        lambda x: f"expected rank 4 [B,3,H,W], got shape {tuple(x.shape)}",
        "add a batch axis: x[None]",
    ),
    (lambda x: x.shape[0] == 0, lambda x: "empty batch (B = 0)", "pass at least one image"),
    (
        lambda x: x.shape[1] != 3,
        lambda x: f"expected 3 channels (RGB, NCHW), got shape {tuple(x.shape)}",
        "convert to RGB; use predict() for grayscale/RGBA files",
    ),
    (
        lambda x: x.shape[2] < 1 or x.shape[3] < 1,
        lambda x: f"empty spatial size {tuple(x.shape[2:])}",
        "pass real images",
    ),
    (lambda x: not np.all(np.isfinite(x)), lambda x: "input contains NaN or Inf", "clean the input"),
)


def _as_numpy(x: Any) -> Any:
    """A torch tensor as numpy, without importing torch (a tensor exists only if the caller imported it)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype.kind != "f":
        raise InputError(f"dtype {x.dtype} is not supported", "pass float32 in [0,1] or uint8 in [0,255]")
    return x


def _array_to_chw(image: np.ndarray) -> np.ndarray:
    """``[H,W]``, ``[H,W,C]`` or ``[C,H,W]`` (C = 1, 3, 4; uint8 or float in [0, 1]) -> float32 ``[3,H,W]``."""
    a = image
    if a.ndim == 2:
        a = np.repeat(a[None], 3, 0)
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3):
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3 or a.shape[0] not in (1, 3, 4):
        raise InputError(f"cannot read an image from an array of shape {a.shape}", "pass [H,W], [H,W,C] or [C,H,W]")
    a = a[:3] if a.shape[0] == 4 else np.repeat(a, 3, 0) if a.shape[0] == 1 else a
    a = a.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    if not np.all(np.isfinite(a)):
        raise InputError("image array contains NaN or Inf", "clean the input")
    return np.clip(a, 0.0, 1.0)


def _image_to_chw(image: ImageLike) -> np.ndarray:
    """A file path, array or PIL image as float32 ``[3, H, W]`` in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        return to_rgb_array(decode_image(image))
    if isinstance(image, np.ndarray):
        return _array_to_chw(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        return to_rgb_array(image)
    raise InputError(f"cannot read an image from {type(image).__name__}", "pass a file path, PIL image or array")


def _is_single_image(images: Any) -> bool:
    """True for one image (path, ``[H,W]`` / ``[H,W,C]`` / ``[C,H,W]`` array, PIL image), not a sequence of them."""
    if isinstance(images, (str, os.PathLike)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim <= 3
    return hasattr(images, "convert") and hasattr(images, "size")  # PIL image


class Model:
    """An exported bap model ready to run.

    Attributes:
        manifest: the validated ``bap.export/1`` manifest (:class:`~bap.exporter.manifest.Manifest`).
        domains: served domain names (index = domain id).
        backend: the inference backend (``providers`` says what actually runs).
    """

    def __init__(self, path: Path, manifest: Manifest, backend: Any):
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.domains = manifest.domain_names
        self.classes = manifest.classes
        self.preprocess = manifest.input.preprocess

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
        """One int64 id per sample (a single name / id is broadcast).

        Raises:
            InputError: an unknown name, an id outside ``[0, D)``, or a sequence whose length is not ``n`` (for
                the last two, the graph itself would return NaN rows: ``docs/design.md`` section 3).
        """
        domains = _as_numpy(domains)  # a torch tensor of ids, like a tensor batch
        if isinstance(domains, (str, bytes)) or np.ndim(domains) == 0:
            one = domains.item() if isinstance(domains, np.ndarray) else domains  # a 0-d array is its one id
            return np.full(n, self.domain_index(one), dtype=np.int64)
        seq = list(np.asarray(domains).tolist()) if isinstance(domains, np.ndarray) else list(domains)
        if len(seq) != n:
            raise InputError(
                f"{len(seq)} domains for {n} samples",
                f"pass one domain for the whole batch, or exactly one per sample ({n})",
            )
        return np.array([self.domain_index(d) for d in seq], dtype=np.int64)

    def input_size(self, domain: str | int) -> int:
        """The square input size of ``domain`` (its center crop)."""
        return int(self.preprocess[self.domains[self.domain_index(domain)]].crop)

    # ------------------------------------------------------------------------------------------- arrays
    def check_batch(self, x: Any) -> np.ndarray:
        """Validate a batch ``[B, 3, H, W]`` of pixels in [0, 1] and return it as float32.

        uint8 input is accepted and scaled by 1/255; any other non-float dtype, another rank or channel count,
        NaN/Inf, an empty batch or values far outside [0, 1] are refused.
        """
        x = _as_numpy(x)
        if not isinstance(x, np.ndarray):
            raise InputError(
                f"expected a numpy array [B,3,H,W], got {type(x).__name__}", "use predict() for images or files"
            )
        x = _to_float(x)
        for bad, problem, fix in _BATCH_CHECKS:
            if bad(x):
                raise InputError(problem(x), fix)
        lo, hi = self.manifest.input.pixel_range
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
                xs = np.clip(resize_array(xs, int(s), int(s)), 0.0, 1.0)
            out[sel] = self.backend.run({"image": xs, "domain": ids[sel]})
        return out

    def _k_max(self) -> int:
        return self.manifest.k_max

    # ------------------------------------------------------------------------------------------- images
    def load_image(self, image: ImageLike, domain: str | int) -> np.ndarray:
        """Decode (guarded) and preprocess one image for ``domain``: ``[3, S, S]`` float32 in [0, 1].

        Resize the shorter side to ``load_size`` (antialiased bilinear), center-crop ``load_size``, then center-crop
        ``crop``: the evaluation view of training.
        """
        pre = self.preprocess[self.domains[self.domain_index(domain)]]
        a = _image_to_chw(image)
        if a.shape[1] < 1 or a.shape[2] < 1:
            raise InputError("image has no pixels", "pass a real image")
        a = resize_center_crop_array(a, int(pre.load_size))
        o = (int(pre.load_size) - int(pre.crop)) // 2
        return np.ascontiguousarray(a[:, o : o + pre.crop, o : o + pre.crop])

    def predict(
        self, images: Sequence[ImageLike] | ImageLike, domains: str | int | Sequence[str | int], top_k: int = 5
    ) -> list[Prediction]:
        """Top-k (class name, probability) per image; ``domains`` is one domain or one per image."""
        if _is_single_image(images):
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


def _embedded_manifest(path: Path) -> Manifest:
    """The manifest embedded in a self-describing ``model.onnx``, read through ONNX Runtime's model metadata.

    The session is created without graph optimisations: it only reads metadata (and proves the file loads), so
    no optimiser the manifest may disable runs before its settings are known.
    """
    import onnxruntime as ort

    from bap.exporter.manifest import manifest_from_onnx

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        meta = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_modelmeta()
        metadata = meta.custom_metadata_map  # decodes the metadata: a damaged file fails here (UnicodeDecodeError)
    except Exception as e:  # ORT raises its own exception types for invalid models
        why = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise IncompatibleArtifactError(
            f"{path} is not a valid bap ONNX model ({why})", "re-export the model (bap export)"
        ) from None
    return manifest_from_onnx(metadata)


def _sibling_manifest(path: Path) -> Manifest | None:
    """The ``manifest.json`` beside a lone ``.onnx`` file if it is a bap manifest listing that file, else ``None``.

    A JSON file of another kind (not ``bap.export/*``) is ignored; a bap manifest that cannot be read is an error.
    """
    import json

    from bap.exporter.manifest import read_manifest

    mpath = path.parent / "manifest.json"
    if not mpath.is_file():
        return None
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None  # read_manifest below names the problem
    if isinstance(doc, dict) and not str(doc.get("format", "")).startswith("bap.export/"):
        return None
    manifest = read_manifest(mpath)
    return manifest if path.name in manifest.files else None


def _lone_file_manifest(path: Path) -> Manifest:
    """The manifest of a lone ``.onnx`` file: its export's ``manifest.json`` when that lists it, else the embedded one.

    Raises:
        IntegrityError: the file differs from the size / sha256 its ``manifest.json`` records.
    """
    sibling = _sibling_manifest(path)
    if sibling is not None and sibling.model == path.name:
        return sibling  # open_backend checks the file against it before anything opens it
    if sibling is not None:
        sibling.verify_files(path.parent, [path.name])
    # the file's own name is the model (the manifest records the name at export time)
    return dataclasses.replace(_embedded_manifest(path), model=path.name)


def load(path: str | os.PathLike, backend: str = "ort", device: str = "cpu", threads: int | None = None) -> Model:
    """Open an export directory (``manifest.json``) or a self-describing ``model.onnx``.

    The file the backend runs is checked against the manifest's size and sha256 first; the manifest's
    ONNX Runtime settings (``runtime.onnxruntime``) are applied to the session.

    A lone ``.onnx`` file is verified only when its export's ``manifest.json`` sits beside it and lists it (that
    manifest is then used); otherwise its embedded manifest is used, which cannot carry the file's own checksum,
    so a modified lone file is not detected.

    Args:
        path: export directory, or a ``.onnx`` file written by ``bap export`` (its manifest is embedded).
        backend: ``ort`` (ONNX Runtime) or ``trt`` (the TensorRT engine with the ONNX file's stem, ``model.plan``).
        device: ``cpu``, ``cuda`` or ``jetson`` (ONNX Runtime execution providers follow it); a device that is
            unknown, absent here or not run by ``backend`` is refused, never replaced by the CPU.
        threads: intra-op threads of ONNX Runtime (default: its own choice).

    Raises:
        ConfigError: bad ``threads``, an unknown backend or device, or a backend the device does not run.
        UnsupportedDeviceError: the device is not on this machine (no NVIDIA GPU, not a Jetson).
        IntegrityError: a file of the export is missing, truncated or modified.
        IncompatibleArtifactError: corrupt or foreign export / manifest / ONNX file.
    """
    from bap.exporter.manifest import read_manifest
    from bap.runtime.backends import BACKENDS, check_device, open_backend

    path = Path(path)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}", "e.g. --threads 2")
    BACKENDS.get(backend)  # unknown names and an absent device fail before any file is read
    check_device(backend, device)
    if not path.exists():
        raise IncompatibleArtifactError(f"{path} does not exist", "pass an export directory or model.onnx")
    if path.is_dir():
        manifest, root = read_manifest(path), path
    elif path.suffix == ".onnx":
        manifest, root = _lone_file_manifest(path), path.parent
    else:
        raise IncompatibleArtifactError(
            f"{path} is not an .onnx file or export directory", "pass an export directory or model.onnx"
        )
    be = open_backend(backend, root, manifest, "multi-domain", device, threads)
    log.debug("loaded %s with %s (%s)", root / manifest.model, backend, be.providers)
    return Model(root / manifest.model, manifest, be)
