"""Registered backbones. Each maps a normalised image ``[B,3,H,W]`` to pooled features ``[B, C]``.

Every backbone is a plain ``nn.Module`` that ``torch.fx`` can trace: the channel-coupling analysis
(:mod:`bap.core.graph`) reads its structure from the traced graph, so no backbone needs special cases
in the trainer or exporter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bap.core.registry import Registry
from bap.errors import ConfigError, IncompatibleArtifactError

__all__ = ["BACKBONES", "BackboneSpec", "create_backbone", "list_backbones", "load_backbone_weights"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and the input resolution it is documented for."""

    name: str
    factory: Callable[[], nn.Module]
    input_size: int
    description: str
    torchvision_weights: str | None = None  # enum class name in torchvision.models, for named weights


BACKBONES: Registry[BackboneSpec] = Registry("backbone", "--backbone")


def register_backbone(name: str, input_size: int, description: str, torchvision_weights: str | None = None):
    """Decorator registering a zero-argument backbone factory."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        BACKBONES.register(name, BackboneSpec(name, fn, input_size, description, torchvision_weights))
        return fn

    return deco


# --------------------------------------------------------------------------------------------------- small ResNets
def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """The residual blocks' 1x1 projection shortcut, or ``None`` where the identity fits (same shape)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward."""
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck (expansion 4) with a 1x1 projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward."""
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + idt)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, stages of Basic/Bottleneck blocks, global average pooling.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        widths: block width per stage (stream width is ``width * block.expansion``).
        stem: stem width.
        strides: stride of the first block of each stage.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int],
        stem: int | None = None,
        strides: Sequence[int] | None = None,
    ):
        super().__init__()
        stem = stem or widths[0]
        strides = strides or [1] + [2] * (len(widths) - 1)
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        stages = []
        for n, w, s in zip(layers, widths, strides, strict=True):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, w, s if i == 0 else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, C]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return torch.flatten(self.pool(x), 1)


@register_backbone("cifar_resnet14", 32, "CIFAR-style ResNet-14, widths 16/32/64 (default; 0.17M params)")
def cifar_resnet14() -> nn.Module:
    """The default backbone of the embedded suite (M = 451 switches)."""
    return SmallResNet(BasicBlock, [2, 2, 2], [16, 32, 64])


@register_backbone("cifar_resnet20", 32, "CIFAR-style ResNet-20, widths 16/32/64")
def cifar_resnet20() -> nn.Module:
    """He et al.'s CIFAR ResNet-20 with 1x1 projection shortcuts."""
    return SmallResNet(BasicBlock, [3, 3, 3], [16, 32, 64])


@register_backbone("test_cnn", 32, "tiny BasicBlock ResNet for tests and CPU smoke runs (<50k params)")
def test_cnn() -> nn.Module:
    """Two residual stages of one BasicBlock each, widths 8/16."""
    return SmallResNet(BasicBlock, [1, 1], [8, 16])


@register_backbone("test_bottleneck", 32, "tiny Bottleneck ResNet for tests (stream widths 16/32)")
def test_bottleneck() -> nn.Module:
    """Two stages of one Bottleneck each, widths 4/8 (expansion 4)."""
    return SmallResNet(Bottleneck, [1, 1], [4, 8], stem=8)


# ------------------------------------------------------------------------------------------ Decathlon-style nets
class _PadShortcut(nn.Module):
    """Parameter-free shortcut of Rebuffi et al.: average-pool by the stride, zero-pad the new channels."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool and pad channels."""
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class _RebuffiBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _PadShortcut(stride, cout - cin) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet26Decathlon(nn.Module):
    """Rebuffi et al.'s Decathlon ResNet-26 for 64-72 px inputs: stem 32, 3x4 blocks of 64/128/256, pad shortcuts."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256), blocks: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = 32, []
        for w in widths:
            stages.append(
                nn.Sequential(*[_RebuffiBlock(cin if i == 0 else w, w, 2 if i == 0 else 1) for i in range(blocks)])
            )
            cin = w
        self.layers = nn.Sequential(*stages)
        self.bn_end = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, 256]``."""
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        x = self.relu(self.bn_end(x))
        return torch.flatten(self.pool(x), 1)


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn1(x))
        idt = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + idt


class WideResNet28(nn.Module):
    """Pre-activation WRN-28-k (Zagoruyko & Komodakis) for 64-72 px inputs: strides 2/2/2 so 64 px ends at 8x8."""

    def __init__(self, k: int = 4):
        super().__init__()
        widths = [16 * k, 32 * k, 64 * k]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        cin, stages = 16, []
        for w in widths:
            stages.append(nn.Sequential(*[_PreActBlock(cin if i == 0 else w, w, 2 if i == 0 else 1) for i in range(4)]))
            cin = w
        self.layers = nn.Sequential(*stages)
        self.bn_end = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, 64k]``."""
        x = self.layers(self.conv1(x))
        x = self.relu(self.bn_end(x))
        return torch.flatten(self.pool(x), 1)


@register_backbone("resnet26_decathlon", 64, "Decathlon ResNet-26 (Rebuffi et al.), 64-72 px, parameter-free shortcuts")
def resnet26_decathlon() -> nn.Module:
    """ResNet-26 as in the Visual Decathlon papers."""
    return ResNet26Decathlon()


@register_backbone("wrn28_4", 64, "pre-activation Wide ResNet-28-4 for 64-72 px inputs (BA2's Decathlon backbone)")
def wrn28_4() -> nn.Module:
    """WRN-28-4."""
    return WideResNet28(4)


# ------------------------------------------------------------------------------------------------- torchvision
class TorchvisionFeatures(nn.Module):
    """A torchvision ResNet with its classifier removed: features after global average pooling."""

    def __init__(self, arch: str):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, C]``."""
        return self.net(x)


def _tv(arch: str, weights_enum: str, desc: str) -> None:
    register_backbone(arch, 224, desc, weights_enum)(lambda: TorchvisionFeatures(arch))


_tv("resnet18", "ResNet18_Weights", "torchvision ResNet-18 (224 px)")
_tv("resnet34", "ResNet34_Weights", "torchvision ResNet-34 (224 px)")
_tv("resnet50", "ResNet50_Weights", "torchvision ResNet-50 (224 px; the ImageNet-to-Sketch backbone)")
_tv("resnet101", "ResNet101_Weights", "torchvision ResNet-101 (224 px)")
_tv("wide_resnet50_2", "Wide_ResNet50_2_Weights", "torchvision Wide ResNet-50-2 (224 px)")


# ---------------------------------------------------------------------------------------------------- factory
def list_backbones() -> list[BackboneSpec]:
    """All registered backbones."""
    return [spec for _, spec in BACKBONES.items()]


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a saved state_dict (``weights_only=True`` / safetensors) into a backbone.

    Classifier keys (``fc.*``) are ignored, and torchvision checkpoints saved from the full classifier model
    load into :class:`TorchvisionFeatures` (keys are prefixed with ``net.`` as needed).

    Returns:
        Keys of the checkpoint that were ignored.

    Raises:
        IncompatibleArtifactError: unreadable file, or missing / mismatched backbone tensors.
    """
    from bap.core.io import load_state_dict

    sd = load_state_dict(path, what="backbone weights")
    own = model.state_dict()
    if isinstance(model, TorchvisionFeatures) and not any(k.startswith("net.") for k in sd):
        sd = {f"net.{k}": v for k, v in sd.items()}
    ignored = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd]
    if missing:
        raise IncompatibleArtifactError(
            f"weights {path} miss {len(missing)} backbone tensors (first: {missing[0]})",
            "pass a state_dict saved from the same --backbone",
        )
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise IncompatibleArtifactError(
            f"weights {path}: {k} has shape {tuple(sd[k].shape)}, the backbone expects {tuple(own[k].shape)}",
            "pass weights of the same --backbone",
        )
    model.load_state_dict({k: sd[k] for k in own}, strict=True)
    return [k for k in ignored if not k.split(".")[-2:-1] == ["fc"] and not k.startswith(("fc.", "net.fc."))]


def create_backbone(name: str, weights: str | None = None) -> nn.Module:
    """Build a registered backbone, optionally loading weights.

    Args:
        name: registered backbone name (see ``bap models``).
        weights: path of a state_dict file, or ``torchvision:<TAG>`` (e.g. ``torchvision:IMAGENET1K_V1``) for
            torchvision's named weights (downloads only on machines that are online).

    Raises:
        ConfigError: unknown backbone or weights tag.
        IncompatibleArtifactError: weights that do not fit.
    """
    spec = BACKBONES.get(name)
    model = spec.factory()
    model.bap_name = name  # lets artifacts record which registered backbone this is
    if weights is None:
        return model
    if weights.startswith("torchvision:"):
        tag = weights.split(":", 1)[1] or "DEFAULT"
        if not spec.torchvision_weights:
            raise ConfigError(f"backbone {name!r} has no torchvision weights", "pass --weights PATH to a state_dict")
        import torchvision

        enum = getattr(torchvision.models, spec.torchvision_weights)
        try:
            w = enum[tag] if tag != "DEFAULT" else enum.DEFAULT
        except KeyError:
            valid = ", ".join(m for m in enum.__members__)
            raise ConfigError(f"unknown torchvision weights {tag!r} for {name}", f"choose one of: {valid}") from None
        try:
            sd = w.get_state_dict(progress=False)
        except Exception as e:  # offline machines: urllib raises several types
            raise IncompatibleArtifactError(
                f"could not download torchvision weights {w} ({type(e).__name__})",
                "this machine is offline: download them elsewhere and pass --weights PATH",
            ) from None
        model.net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=False)
        return model
    load_backbone_weights(model, weights)
    return model
