import pytest
import torch

from bap.errors import ConfigError, IncompatibleArtifactError
from bap.models import create_backbone, list_backbones

SPECS = list_backbones()


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_backbone_runs_at_its_documented_resolution(spec):
    m = create_backbone(spec.name).eval()
    with torch.no_grad():
        y = m(torch.rand(1, 3, spec.input_size, spec.input_size))
    assert y.shape == (1, m.num_features)
    assert torch.isfinite(y).all()


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        create_backbone("resnet9000")
    msg = e.value.one_line()
    assert "resnet9000" in msg and "cifar_resnet14" in msg and "resnet50" in msg and "\n" not in msg


def test_weights_load_from_state_dict(tmp_path):
    src = create_backbone("test_cnn")
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = create_backbone("test_cnn", str(path))
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_weights_from_a_full_torchvision_checkpoint(tmp_path):
    import torchvision

    full = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)  # includes fc.*: ignored
    m = create_backbone("resnet18", str(path))
    assert torch.equal(m.net.conv1.weight, full.conv1.weight)


def test_mismatched_weights_are_refused(tmp_path):
    torch.save(create_backbone("test_cnn").state_dict(), tmp_path / "w.pt")
    with pytest.raises(IncompatibleArtifactError, match="same --backbone"):
        create_backbone("test_bottleneck", str(tmp_path / "w.pt"))
