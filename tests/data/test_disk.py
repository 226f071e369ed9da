import json

import numpy as np
import pytest
import torch
from PIL import Image

from bap.data.disk import load_decathlon, load_imagefolder
from bap.errors import DataError


def _img(path, color, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8) + np.array(color, dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def make_imagefolder(root, domains=("a", "b"), classes=("cat", "dog", "owl")):
    colors = {"cat": (200, 10, 10), "dog": (10, 200, 10), "owl": (10, 10, 200)}
    for d in domains:
        for s, n in (("train", 3), ("val", 1), ("test", 2)):
            for c in classes:
                for i in range(n):
                    _img(root / d / s / c / f"{i}.png", colors[c])
    return root


def test_imagefolder_loads_labels_and_preprocesses(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    ds = load_imagefolder(root)
    assert ds.names == ["a", "b"]
    a = ds.get("a")
    assert a.classes == ["cat", "dog", "owl"]
    assert (len(a.train), len(a.val), len(a.test)) == (9, 3, 6)
    x, y = a.train.get_batch(torch.arange(len(a.train)))
    assert x.shape == (9, 3, 72, 72) and a.preprocess.crop == 64
    # the colour of each image identifies its class: labels must follow the folder names
    dominant = x.mean(dim=(2, 3)).argmax(1)
    assert torch.equal(dominant, y)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="not a readable directory"):
        load_imagefolder(tmp_path / "missing")
    root = make_imagefolder(tmp_path / "d1", domains=("a",))
    (root / "a" / "val" / "cat").rename(root / "a" / "val" / "lion")
    with pytest.raises(DataError, match="lion"):
        load_imagefolder(root)
    root = make_imagefolder(tmp_path / "d2", domains=("a",))
    for f in (root / "a" / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="no images in its test split"):
        load_imagefolder(root)
    with pytest.raises(DataError, match="domain 'zzz' not found"):
        load_imagefolder(make_imagefolder(tmp_path / "d3"), ["zzz"])


def _coco(path, files, labels, cats, with_labels=True):
    doc = {
        "images": [{"id": 100 + i, "file_name": f, "width": 40, "height": 30} for i, f in enumerate(files)],
        "categories": [{"id": c, "name": n} for c, n in cats],
    }
    if with_labels:
        doc["annotations"] = [{"id": i, "image_id": 100 + i, "category_id": lab} for i, lab in enumerate(labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def make_decathlon(root, test_labels=True):
    cats = [(11, "alpha"), (12, "beta")]
    colors = {11: (220, 0, 0), 12: (0, 0, 220)}
    for name in ("aircraft", "gtsrb"):
        for split, n in (("train", 4), ("val", 2), ("test", 2)):
            files, labels = [], []
            for i in range(n):
                lab = cats[i % 2][0]
                rel = f"data/{name}/{split}/{i:04d}.jpg"
                _img(root / rel, colors[lab])
                files.append(rel)
                labels.append(lab)
            _coco(root / "annotations" / f"{name}_{split}.json", files, labels, cats, test_labels or split != "test")
    return root


def test_decathlon_layout_labels_and_policy(tmp_path):
    root = make_decathlon(tmp_path / "dec")
    ds = load_decathlon(root)
    assert ds.names == ["aircraft", "gtsrb"]
    air, gt = ds.get("aircraft"), ds.get("gtsrb")
    assert air.classes == ["alpha", "beta"]
    assert (air.preprocess.crop, air.preprocess.flip) == (64, True)
    assert (gt.preprocess.crop, gt.preprocess.flip) == (72, False)  # no-flip, center-72 datasets
    x, y = air.train.get_batch(torch.arange(4))
    assert y.tolist() == [0, 1, 0, 1]
    assert torch.equal(x.mean(dim=(2, 3)).argmax(1), torch.where(y == 0, 0, 2))


def test_decathlon_without_test_labels_uses_val(tmp_path, caplog):
    root = make_decathlon(tmp_path / "dec", test_labels=False)
    ds = load_decathlon(root, ["aircraft"])
    assert len(ds.get("aircraft").test) == len(ds.get("aircraft").val) == 2
    assert "using the validation split as test" in caplog.text


def test_decathlon_errors(tmp_path):
    with pytest.raises(DataError, match="annotations"):
        load_decathlon(tmp_path)
    root = make_decathlon(tmp_path / "dec")
    with pytest.raises(DataError, match="svhn"):
        load_decathlon(root, ["svhn"])
