"""Decathlon-layout data: DTD is not flipped; S, S_O, S_P from shipped or user-given reference errors."""

import json

import numpy as np
from PIL import Image

from bap.data.disk import load_decathlon


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
