from bap.core.graph import analyze
from bap.models import create_backbone


def test_default_backbone_switch_layout():
    g = analyze(create_backbone("cifar_resnet14"), 32)
    assert g.num_switches == 451  # the calibration prototype's M
    assert g.summary() == {"convs": 15, "switches": 451, "input_convs": 1, "chain_convs": 6, "stream_convs": 8}
    stem = g.conv("conv1")
    assert stem.kind == "input" and stem.in_channels == 3
    c2 = g.conv("layers.1.0.conv2")
    assert (c2.kind, c2.producer, c2.fold_bn) == ("chain", "layers.1.0.conv1", "layers.1.0.bn1")
    # the block input feeds conv1 and the downsample: a residual stream, never chain-pruned
    assert g.conv("layers.1.0.conv1").kind == "stream"
    assert g.conv("layers.1.0.downsample.0").kind == "stream"
    assert g.total_macs == sum(c.macs for c in g.convs) == 26_656_768


def test_bottleneck_chains_and_torchvision_resnet50():
    g = analyze(create_backbone("test_bottleneck"), 32)
    kinds = {c.name.rsplit(".", 1)[-1]: c.kind for c in g.convs if c.name.startswith("layers.0.0.")}
    assert kinds == {"conv1": "stream", "conv2": "chain", "conv3": "chain", "0": "stream"}
    r50 = analyze(create_backbone("resnet50"), 224)
    assert r50.num_switches == 22531
    assert round(r50.total_macs / 1e9, 2) == 4.09


def test_mac_weights_sum_to_total():
    g = analyze(create_backbone("cifar_resnet14"), 32)
    assert int(g.mac_weights().sum()) == g.total_macs
