"""Derived embedded domains (``NAME-inv``, ``NAME-rot``): built on the fly from a base domain of the suite."""

import pytest
import torch

from bap.data.sources import load_domains, load_domains_from_origin
from bap.data.suite import DOMAIN_BUILDERS
from bap.errors import DataError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def derived():
    return load_domains(None, domains=["mnist", "mnist-inv", "faces-rot", "textures-inv"])


def test_derived_pixels_are_the_base_pixels_inverted_or_rotated(derived):
    mnist, inv = derived.get("mnist"), derived.get("mnist-inv")
    faces = load_domains(None, domains=["faces"]).get("faces")
    rot = derived.get("faces-rot")
    for s in SPLITS:
        assert torch.equal(inv.split(s).images, 255 - mnist.split(s).images)
        base = faces.split(s).images
        assert torch.equal(rot.split(s).images, torch.rot90(base, 1, dims=(2, 3)))
        assert torch.equal(torch.rot90(rot.split(s).images, -1, dims=(2, 3)), base)
    assert rot.split("train").images.dtype == torch.uint8 and rot.split("train").images.shape[1:] == (3, 32, 32)


def test_derived_domains_keep_labels_classes_splits_and_preprocessing(derived):
    for name, base_name in (("mnist-inv", "mnist"), ("faces-rot", "faces"), ("textures-inv", "textures")):
        d = derived.get(name)
        base = load_domains(None, domains=[base_name]).get(base_name)
        assert d.classes == base.classes
        assert d.preprocess == base.preprocess  # flip included (faces, textures flip; mnist does not)
        for s in SPLITS:
            assert torch.equal(d.split(s).labels, base.split(s).labels)
        assert d.extra == {"derived_from": base_name, "transform": name.rsplit("-", 1)[1]}
    # mean/std computed on the derived training images, as for the base domains
    inv, mnist = derived.get("mnist-inv"), derived.get("mnist")
    assert inv.mean == pytest.approx(tuple(1.0 - m for m in mnist.mean), abs=2e-4)
    assert inv.std == pytest.approx(mnist.std, abs=2e-4)
    x = derived.get("faces-rot").train.images.float().div(255.0)
    assert derived.get("faces-rot").mean == pytest.approx(tuple(x.mean(dim=(0, 2, 3)).tolist()), abs=1e-4)


def test_derived_domains_are_deterministic_ordered_and_recorded_in_the_origin(derived):
    again = load_domains(None, domains=["mnist", "mnist-inv", "faces-rot", "textures-inv"])
    assert again.names == derived.names == ["mnist", "mnist-inv", "faces-rot", "textures-inv"]
    for a, b in zip(again, derived, strict=True):
        assert a.mean == b.mean and a.std == b.std
        for s in SPLITS:
            assert torch.equal(a.split(s).images, b.split(s).images)
    assert derived.origin["kind"] == "embedded" and derived.origin["domains"] == derived.names
    reloaded = load_domains_from_origin(derived.origin)  # what exports and bap eval do
    assert reloaded.names == derived.names
    assert torch.equal(reloaded.get("textures-inv").test.images, derived.get("textures-inv").test.images)
    only = load_domains(None, domains=["digits-rot"])  # a derived domain without its base
    assert only.names == ["digits-rot"]


def test_the_default_suite_is_unchanged():
    assert load_domains(None).names == DOMAIN_BUILDERS.names()  # derived domains are opt-in


@pytest.mark.parametrize("name", ["nope-inv", "mnist-flip", "mnist-inv-rot", "mnist_inv", "-inv", "nope"])
def test_bad_names_give_one_line_listing_what_is_allowed(name):
    with pytest.raises(DataError) as e:
        load_domains(None, domains=["mnist", name])
    msg = str(e.value)
    assert "\n" not in msg and repr(name) in msg
    assert "mnist, mnist_m, digits, faces, textures" in msg and "-inv" in msg and "-rot" in msg


def test_a_tiny_run_trains_and_reloads_on_derived_domains(tmp_path):
    from bap.trainer import TrainConfig, load_run, train

    out = tmp_path / "run"
    report = train(TrainConfig(out=str(out), backbone="test_cnn", domains=("mnist", "mnist-inv", "faces-rot"),
                               budgets=(0.5,), epochs=1, steps_per_epoch=2, batch_size=16, lr_milestones=(1,),
                               pretrain_epochs=0, bn_recal_images=32, quiet=True))  # fmt: skip
    assert [d["name"] for d in report["domains"]] == ["mnist", "mnist-inv", "faces-rot"]
    (res,) = report["runs"]
    assert set(res["accuracy"]) == {"mnist", "mnist-inv", "faces-rot"}
    run = load_run(out, 0.5)
    assert run.domains().names == ["mnist", "mnist-inv", "faces-rot"]  # reloaded by the names the run recorded
