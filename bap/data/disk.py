"""Loaders for multi-domain data on disk: ImageFolder-per-domain and the Visual Decathlon devkit layout.

Preprocessing follows the papers (see ``docs/design.md`` section 6): Decathlon images are resized to 72 and
randomly cropped to 64 with flips for training (center 64 for test); gtsrb, omniglot and svhn use the
center 72 crop and no flip, and dtd is not flipped either (the ICIAP 2023 paper does not flip it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from bap.core.registry import Registry
from bap.data.imaging import IMAGE_EXTENSIONS
from bap.data.types import Domain, DomainSet, FileSplit, Preprocess
from bap.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "LAYOUTS", "load_decathlon", "load_imagefolder"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Rebuffi et al. (residual_adapters, imdbfolder_coco.py): these three keep the 72 px center crop, no flip
DECATHLON_FULL_CROP = ("gtsrb", "omniglot", "svhn")
DECATHLON_NO_FLIP = (*DECATHLON_FULL_CROP, "dtd")  # the paper does not flip DTD either
DECATHLON_DATASETS = (
    "imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd",
    "gtsrb", "vgg-flowers", "omniglot", "svhn", "ucf101",
)  # fmt: skip

LAYOUTS: Registry = Registry("layout", "--layout")


def _estimate_mean_std(split: FileSplit, n: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(split), generator=g)[: min(n, len(split))]
    x = split.get_images(idx)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3))), tuple(round(float(v), 4) for v in std)


def _domain(name: str, classes: list[str], splits: dict[str, FileSplit], pre: Preprocess, source: str) -> Domain:
    for s in SPLITS:
        if len(splits[s]) == 0:
            raise DataError(f"domain {name!r} has no images in its {s} split", "add images or drop the domain")
    mean, std = _estimate_mean_std(splits["train"])
    return Domain(name, classes, splits["train"], splits["val"], splits["test"], mean, std, pre, source=source)  # type: ignore[arg-type]


def _imagefolder_split(sdir: Path, train_dir: Path, cidx: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image paths and labels of one split folder ``<domain>/<split>/<class>/*``, classes named as in train."""
    if not sdir.is_dir():
        raise DataError(f"{sdir} is missing", "every domain needs train, val and test folders")
    paths, labels = [], []
    for cdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
        if cdir.name not in cidx:
            raise DataError(f"class {cdir.name!r} in {sdir} is not in {train_dir}", "use the train class names")
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(f))
                labels.append(cidx[cdir.name])
    return paths, labels


def _imagefolder_domain(root: Path, name: str, load_size: int, crop: int, flip: bool) -> Domain:
    """One domain ``ROOT/<name>/{train,val,test}/<class>/*``."""
    droot = root / name
    if not droot.is_dir():
        raise DataError(f"domain {name!r} not found under {root}", f"choose from the folders in {root}")
    train_dir = droot / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir} is missing", "expected ROOT/<domain>/{train,val,test}/<class>/")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"domain {name!r} has no class folders in {train_dir}", "add ROOT/<domain>/train/<class>/")
    cidx = {c: i for i, c in enumerate(classes)}
    splits = {s: FileSplit(*_imagefolder_split(droot / s, train_dir, cidx), load_size) for s in SPLITS}
    pre = Preprocess(load_size=load_size, crop=crop, pad=0, flip=flip)
    return _domain(name, classes, splits, pre, f"imagefolder:{droot}")


@LAYOUTS.register("imagefolder")
def load_imagefolder(
    root: str | Path, domains: Sequence[str] | None = None, load_size: int = 72, crop: int = 64, flip: bool = True
) -> DomainSet:
    """Load ``ROOT/<domain>/{train,val,test}/<class>/*.{jpg,png,...}``.

    Class names come from the ``train`` folders (sorted); ``val``/``test`` may hold a subset of them.

    Raises:
        DataError: unreadable root, missing split, empty domain, or a class in val/test unknown to train.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a readable directory", "pass --data-root DIR")
    names = list(domains) if domains else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"no domain folders under {root}", "expected ROOT/<domain>/{train,val,test}/<class>/*.jpg")
    out = [_imagefolder_domain(root, name, load_size, crop, flip) for name in names]
    return DomainSet(out, {"kind": "imagefolder", "root": str(root.resolve()), "domains": names}, "union")


def _read_coco(path: Path, root: Path) -> tuple[list[str], list[int], dict[int, str]]:
    try:
        doc = json.loads(path.read_text())
        cats = {int(c["id"]): str(c.get("name", c["id"])) for c in doc.get("categories", [])}
        label_of = {int(a["image_id"]): int(a["category_id"]) for a in doc.get("annotations", [])}
        images = doc["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read Decathlon annotation file {path} ({e})", "check the devkit annotations") from None
    paths, labels = [], []
    for im in images:
        iid = int(im["id"])
        if iid not in label_of:
            continue
        rel = str(im["file_name"])
        p = root / rel
        if not p.exists() and (root / "data" / rel).exists():
            p = root / "data" / rel
        paths.append(str(p))
        labels.append(label_of[iid])
    return paths, labels, cats


@LAYOUTS.register("decathlon")
def load_decathlon(root: str | Path, domains: Sequence[str] | None = None) -> DomainSet:
    """Load the Visual Decathlon devkit: ``ROOT/annotations/<dataset>_{train,val,test}.json`` (COCO style).

    ``file_name`` entries are resolved against ``ROOT`` (or ``ROOT/data``). Labels are ``category_id`` mapped to
    0..K-1 in id order, as in the devkit. If a test file has no annotations (the original release), the
    validation split is used as test and a warning says so.
    """
    root = Path(root)
    ann = root / "annotations"
    if not ann.is_dir():
        raise DataError(f"{ann} not found", "pass the Decathlon root that contains annotations/ (--layout decathlon)")
    available = sorted(p.name[: -len("_train.json")] for p in ann.glob("*_train.json"))
    names = list(domains) if domains else [d for d in DECATHLON_DATASETS if d in available] or available
    out = []
    for name in names:
        if name not in available:
            raise DataError(
                f"domain {name!r} has no {name}_train.json in {ann}", f"choose from: {', '.join(available)}"
            )
        parts = {}
        for s in SPLITS:
            f = ann / f"{name}_{s}.json"
            parts[s] = _read_coco(f, root) if f.is_file() else ([], [], {})
        cats = parts["train"][2]
        ids = sorted(cats) if cats else sorted(set(parts["train"][1]))
        cmap = {cid: i for i, cid in enumerate(ids)}
        classes = [cats.get(cid, str(cid)) for cid in ids]
        if not parts["test"][0]:
            log.warning("%s: test annotations absent, using the validation split as test", name)
            parts["test"] = parts["val"]
        full = name in DECATHLON_FULL_CROP
        pre = Preprocess(load_size=72, crop=72 if full else 64, pad=0, flip=name not in DECATHLON_NO_FLIP)
        splits = {}
        for s in SPLITS:
            paths, labels, _ = parts[s]
            unknown = sorted({lab for lab in labels if lab not in cmap})
            if unknown:
                raise DataError(f"{name}_{s}.json uses category ids {unknown[:5]} absent from train", "fix annotations")
            splits[s] = FileSplit(paths, [cmap[lab] for lab in labels], pre.load_size)
        out.append(_domain(name, classes, splits, pre, f"decathlon:{root}"))
    return DomainSet(
        out,
        {"kind": "decathlon", "root": str(root.resolve()), "domains": names},
        "imagenet12" if "imagenet12" in names else None,
    )
