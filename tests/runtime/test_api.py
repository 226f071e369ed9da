import json

import numpy as np
import pytest
import torch
from PIL import Image

import bap.runtime as rt
from bap.data.transforms import eval_view
from bap.errors import IncompatibleArtifactError, InputError
from bap.runtime.evaluate import evaluate_export
from bap.trainer import load_run


@pytest.fixture(scope="module")
def model(tiny_export):
    return rt.load(tiny_export[0])


def test_api_matches_masked_model_for_every_domain_and_mixed(model, tiny_run):
    run = load_run(tiny_run[0], 0.5)
    ds = run.domains()
    xs, ids = [], []
    for d, dom in enumerate(ds):
        x = eval_view(dom.test.get_batch(torch.arange(5))[0], dom.preprocess)
        got = model.logits(x.numpy(), dom.name)
        ref = run.model(x, d).detach().numpy()
        np.testing.assert_allclose(got[:, : dom.num_classes], ref, atol=1e-4, rtol=0)
        assert np.isneginf(got[:, dom.num_classes :]).all()
        xs.append(x)
        ids += [d] * 5
    x, ids = torch.cat(xs), torch.tensor(ids)
    mixed = model.logits(x.numpy(), [model.domains[i] for i in ids.tolist()])  # names, one per sample
    ref = run.model(x, ids).detach().numpy()
    fin = np.isfinite(ref)
    assert np.abs(mixed[fin] - ref[fin]).max() <= 1e-4


def test_predict_on_files_returns_topk_with_class_names(model, tmp_path, suite):
    paths = []
    for i, name in enumerate(["mnist", "faces", "textures"]):
        dom = suite.get(name)
        img = (dom.test.images[0].permute(1, 2, 0).numpy()).astype(np.uint8)
        p = tmp_path / f"{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    preds = model.predict(paths, ["mnist", "faces", "textures"], top_k=3)
    assert [p.domain for p in preds] == ["mnist", "faces", "textures"]
    assert len(preds[1].top_k) == 2  # faces has two classes: top-k is capped
    for p, name in zip(preds, ["mnist", "faces", "textures"], strict=True):
        assert all(c in model.classes[name] for c, _ in p.top_k)
        probs = [q for _, q in p.top_k]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # the file path and the in-memory tensor agree
    dom = suite.get("mnist")
    direct = model.logits(dom.test.get_batch([0])[0].numpy(), "mnist")
    assert preds[0].label == model.classes["mnist"][int(np.argmax(direct[0, :10]))]
    assert json.loads(json.dumps([p.to_dict() for p in preds]))[0]["domain"] == "mnist"


def test_eval_equals_the_trainer_report(model, tiny_run):
    res = evaluate_export(model)
    report = json.loads((tiny_run[0] / "report.json").read_text())
    expected = next(r for r in report["runs"] if r["budget"] == 0.5)["accuracy"]
    assert res["accuracy"] == expected


def test_single_self_describing_onnx(tiny_export):
    m = rt.load(tiny_export[0] / "model.onnx")
    assert m.domains == m.manifest.domain_names == [d.name for d in m.manifest.domains]
    assert m.backend.providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: np.zeros((0, 3, 32, 32), np.float32), "empty batch"),
        (lambda: np.zeros((2, 32, 32), np.float32), "rank 4"),
        (lambda: np.zeros((2, 1, 32, 32), np.float32), "3 channels"),
        (lambda: np.full((1, 3, 32, 32), np.nan, np.float32), "NaN"),
        (lambda: np.full((1, 3, 32, 32), np.inf, np.float32), "NaN or Inf"),
        (lambda: np.zeros((1, 3, 32, 32), np.int32), "dtype int32"),
        (lambda: np.full((1, 3, 32, 32), 255.0, np.float32), "outside"),
        (lambda: np.zeros((1, 3, 20, 20), np.float32), "expects 32x32"),
        (lambda: [[1, 2]], "numpy array"),
    ],
)
def test_input_validation(model, make, match):
    with pytest.raises(InputError, match=match):
        model.logits(make(), 0)


def test_domain_validation_and_resize(model):
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(InputError, match="out of range"):
        model.logits(x, 7)
    with pytest.raises(InputError, match="out of range"):
        model.logits(x, -1)
    with pytest.raises(InputError, match="unknown domain 'svhn'"):
        model.logits(x, "svhn")
    with pytest.raises(InputError, match="3 domains for 2 samples"):
        model.logits(x, [0, 1, 2])
    y = model.logits(np.zeros((1, 3, 64, 48), np.float32), 0, resize=True)
    assert y.shape == (1, model._k_max())
    u8 = model.logits(np.zeros((1, 3, 32, 32), np.uint8), 0)
    np.testing.assert_allclose(u8, model.logits(np.zeros((1, 3, 32, 32), np.float32), 0))


def test_tampered_export_is_refused(tiny_export, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_export[0], bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IncompatibleArtifactError, match=r"model\.onnx is modified: its sha256 differs"):
        rt.load(bad)
