"""Domain and split containers shared by the trainer, the exporter's validation and ``bap eval``."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bap.errors import DataError

__all__ = ["Domain", "DomainSet", "FileSplit", "Preprocess", "Split", "TensorSplit"]


@dataclass(frozen=True)
class Preprocess:
    """How images of a domain become network inputs.

    Loading resizes the shorter side to ``load_size`` and center-crops a ``load_size`` square. Training
    then takes a random ``crop`` (after zero-padding by ``pad``) with optional horizontal ``flip``;
    evaluation takes the center ``crop``. Pixels are floats in [0, 1]; per-domain mean/std
    normalisation happens inside the model.
    """

    load_size: int
    crop: int
    pad: int = 0
    flip: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in reports and manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["load_size"]), int(d["crop"]), int(d.get("pad", 0)), bool(d.get("flip", False)))


class Split(abc.ABC):
    """One split of one domain: indexable batches of float images in [0, 1] and int64 labels."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    @abc.abstractmethod
    def get_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Float32 images ``[B, 3, S, S]`` in [0, 1] at the domain's load size."""

    def get_batch(self, idx: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels for the given indices."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.get_images(idx), self.labels[idx]


class TensorSplit(Split):
    """A split held in memory as uint8 ``[N, 3, S, S]`` images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [N,3,H,W] images, got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != labels.numel():
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels.to(torch.long)

    def get_images(self, idx: torch.Tensor) -> torch.Tensor:
        """See :meth:`Split.get_images`."""
        return self.images[idx].float().div_(255.0)


class FileSplit(Split):
    """A split of image files decoded on demand (guarded decoding, see :mod:`bap.data.images`)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], load_size: int):
        self.paths = list(paths)
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.load_size = load_size

    def get_images(self, idx: torch.Tensor) -> torch.Tensor:
        """See :meth:`Split.get_images`."""
        from concurrent.futures import ThreadPoolExecutor

        from bap.data.images import load_image_tensor

        paths = [self.paths[int(i)] for i in idx]
        with ThreadPoolExecutor(max_workers=4) as pool:
            imgs = list(pool.map(lambda p: load_image_tensor(p, self.load_size), paths))
        return torch.stack(imgs) if imgs else torch.empty(0, 3, self.load_size, self.load_size)


@dataclass
class Domain:
    """One visual domain: class names, three splits, normalisation and preprocessing."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess: Preprocess
    source: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def split(self, name: str) -> Split:
        """The ``train``, ``val`` or ``test`` split."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}", "use train, val or test")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """What ``bap data list --json`` prints for this domain."""
        return {
            "name": self.name,
            "classes": self.num_classes,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "source": self.source,
            "input_size": self.preprocess.crop,
            "description": self.description,
        }


@dataclass
class DomainSet:
    """An ordered set of domains plus where they came from (recorded in run reports and manifests).

    ``source_domain`` names the domain the default backbone is pretrained on, or ``"union"`` for the union of
    every domain's training split.
    """

    domains: list[Domain]
    origin: dict[str, Any]
    source_domain: str | None = None

    def __post_init__(self) -> None:
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise DataError(f"duplicate domain names in {names}", "give each domain a unique name")

    @property
    def names(self) -> list[str]:
        """Domain names in order (the order is the domain index)."""
        return [d.name for d in self.domains]

    def __len__(self) -> int:
        return len(self.domains)

    def __iter__(self):
        return iter(self.domains)

    def __getitem__(self, i: int) -> Domain:
        return self.domains[i]

    def get(self, name: str) -> Domain:
        """The domain called ``name``."""
        for d in self.domains:
            if d.name == name:
                return d
        raise DataError(f"unknown domain {name!r}", f"choose from: {', '.join(self.names)}")

    def select(self, names: Sequence[str] | None) -> DomainSet:
        """A subset, in the order given (``None`` keeps all)."""
        if not names:
            return self
        picked = [self.get(n) for n in names]
        src = self.source_domain if self.source_domain == "union" or self.source_domain in names else None
        return DomainSet(picked, dict(self.origin, domains=list(names)), src)
