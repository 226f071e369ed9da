"""Decathlon-layout data: DTD is not flipped; S, S_O, S_P from shipped or user-given reference errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bap.data.disk import load_decathlon
from bap.errors import ConfigError


def make_decathlon_tree(root, names=("aircraft", "dtd", "gtsrb"), sizes=(("train", 8), ("val", 4), ("test", 6))):
    """A Visual Decathlon devkit tree: two colour-coded classes per dataset, COCO-style annotations."""
    cats = [(11, "alpha"), (12, "beta")]
    colors = {11: (220, 30, 30), 12: (30, 30, 220)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name in names:
        for split, n in sizes:
            images, anns = [], []
            for i in range(n):
                lab = cats[i % 2][0]
                rel = f"data/{name}/{split}/{i:04d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                arr = np.zeros((36, 36, 3), dtype=np.uint8) + np.array(colors[lab], dtype=np.uint8)
                Image.fromarray(arr).save(root / rel)
                images.append({"id": 100 + i, "file_name": rel, "width": 36, "height": 36})
                anns.append({"id": i, "image_id": 100 + i, "category_id": lab})
            doc = {"images": images, "annotations": anns, "categories": [{"id": c, "name": m} for c, m in cats]}
            (root / "annotations" / f"{name}_{split}.json").write_text(json.dumps(doc))
    return root


def test_dtd_is_not_flipped_in_the_decathlon_layout(tmp_path):
    ds = load_decathlon(make_decathlon_tree(tmp_path / "dec"))
    assert {d.name: d.preprocess.flip for d in ds} == {"aircraft": True, "dtd": False, "gtsrb": False}
    assert {d.name: d.preprocess.crop for d in ds} == {"aircraft": 64, "dtd": 64, "gtsrb": 72}


# ------------------------------------------------------------------------------------------ reference errors
def test_the_decathlon_reference_is_rebuffis_finetune_baseline():
    from bap.data.reference import decathlon_reference_errors, reference_errors_for

    ref = decathlon_reference_errors()
    assert len(ref) == 10
    assert ref["imagenet12"] == pytest.approx(1 - 0.5987) and ref["gtsrb"] == pytest.approx(1 - 0.9753)
    assert ref["ucf101"] == pytest.approx(1 - 0.512) and ref["vgg-flowers"] == pytest.approx(1 - 0.8141)
    assert reference_errors_for("decathlon", ["aircraft", "dtd"]) == ref
    assert reference_errors_for("decathlon", ["aircraft", "my-data"]) is None  # S undefined for an unknown set
    assert reference_errors_for("imagefolder", ["a"]) is None
    assert reference_errors_for("embedded", ["mnist"])["mnist"] == pytest.approx(0.026)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read reference errors"),
        ("{not json", "not valid JSON"),
        ("[0.1, 0.2]", "not a non-empty JSON object"),
        ("{}", "not a non-empty JSON object"),
        ('{"a": "0.1"}', "not a number"),
        ('{"a": 40.1}', "a percentage"),
        ('{"a": 0.0}', r"outside \(0, 1\]"),
        ('{"a": 0.1}', "has no error for b"),
    ],
)
def test_bad_reference_files_are_one_line_errors(tmp_path, content, match):
    from bap.data.reference import reference_errors_for

    path = tmp_path / "ref.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as e:
        reference_errors_for("imagefolder", ["a", "b"], path)
    assert "\n" not in e.value.one_line()


def test_a_reference_file_names_every_domain_and_may_wrap_errors(tmp_path):
    from bap.data.reference import reference_errors_for

    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"errors": {"a": 0.1, "b": 0.25, "c": 1}}))
    assert reference_errors_for("decathlon", ["a", "b"], path) == {"a": 0.1, "b": 0.25, "c": 1.0}


def test_a_bad_reference_file_fails_before_the_run_directory_exists(tmp_path, run_cli):
    bad = tmp_path / "bad.json"
    bad.write_text('{"aircraft": 7}')
    out, root = (
        tmp_path / "run",
        make_decathlon_tree(tmp_path / "dec", ("aircraft",), (("train", 2), ("val", 2), ("test", 2))),
    )
    r = run_cli(["train", "--backbone", "test_cnn", "--epochs", "1", "--out", out, "--reference-errors", bad,
                 "--data-root", root, "--layout", "decathlon"])  # fmt: skip
    assert r.code == 2 and isinstance(r.error, ConfigError)
    assert "a percentage" in r.err and not out.exists()


# ------------------------------------------------------------------------------------------ bootstrap intervals
def test_bootstrap_interval_matches_the_binomial_spread():
    from bap.trainer.intervals import bootstrap_intervals

    iv = bootstrap_intervals({"a": 0.9}, {"a": 400}, {"a": 0.1}, rel_macs=0.5, rel_params=0.8)
    lo, hi = iv["accuracy"]["a"]
    se = (0.9 * 0.1 / 400) ** 0.5  # 0.015
    assert lo < 0.9 < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    # S = 1000 (1 - E/Emax)^2 with E = 0.1 = Emax / 2: 250 at the point estimate
    s_lo, s_hi = iv["s_score"]
    assert s_lo < 250 < s_hi
    assert iv["s_p"] == pytest.approx([s_lo / 0.8, s_hi / 0.8]) and iv["s_o"] == pytest.approx([2 * s_lo, 2 * s_hi])
    assert bootstrap_intervals({"a": 0.9}, {"a": 400}, {"a": 0.1}) == bootstrap_intervals(
        {"a": 0.9}, {"a": 400}, {"a": 0.1}
    )  # seeded


def test_bootstrap_mean_interval_narrows_with_more_domains_and_s_needs_a_reference():
    from bap.trainer.intervals import bootstrap_intervals

    one = bootstrap_intervals({"a": 0.8}, {"a": 100})
    three = bootstrap_intervals(dict.fromkeys("abc", 0.8), dict.fromkeys("abc", 100))
    w1 = one["mean_accuracy"][1] - one["mean_accuracy"][0]
    w3 = three["mean_accuracy"][1] - three["mean_accuracy"][0]
    assert w3 == pytest.approx(w1 / 3**0.5, rel=0.2)
    assert "s_score" not in one
    perfect = bootstrap_intervals({"a": 1.0}, {"a": 60}, {"a": 0.02})
    assert perfect["accuracy"]["a"] == [1.0, 1.0] and perfect["s_score"] == [1000.0, 1000.0]


# ------------------------------------------------------------------------------------------ end to end
def test_a_decathlon_layout_run_reports_a_numeric_s_with_intervals(tmp_path):
    from bap.core.io import save_state_dict
    from bap.data.reference import decathlon_reference_errors
    from bap.models import create_backbone
    from bap.trainer import TrainConfig, train

    root = make_decathlon_tree(tmp_path / "dec", ("aircraft", "dtd"))
    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_state_dict(weights, create_backbone("test_cnn").state_dict(), {"backbone": "test_cnn"})
    cfg = TrainConfig(out=str(tmp_path / "run"), backbone="test_cnn", data_root=str(root), layout="decathlon",
                      weights=str(weights), budgets=(0.5,), epochs=1, steps_per_epoch=2, batch_size=4,
                      bn_recal_images=8, quiet=True)  # fmt: skip
    train(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    run = report["runs"][0]
    ref = decathlon_reference_errors()
    assert report["s_reference_errors"] == ref
    expected = sum(1000 * max(0.0, 2 * ref[d] - (1 - a)) ** 2 / (2 * ref[d]) ** 2 for d, a in run["accuracy"].items())
    assert isinstance(run["s_score"], float) and run["s_score"] == pytest.approx(expected)
    assert run["s_p"] == pytest.approx(run["s_score"] / run["rel_params"])
    assert run["s_o"] == pytest.approx(run["s_score"] / run["rel_macs_mean"])
    iv = run["intervals"]
    assert set(iv["accuracy"]) == {"aircraft", "dtd"}
    assert iv["s_score"][0] <= run["s_score"] <= iv["s_score"][1]
    assert iv["mean_accuracy"][0] <= run["mean_accuracy"] <= iv["mean_accuracy"][1]
