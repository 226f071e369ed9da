"""``bap eval`` on an ImageFolder data root works on a runtime-only install (no torch) and counts like the model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

PER_DOMAIN = 12


@pytest.fixture(scope="module")
def folder_export(tiny_export, suite, tmp_path_factory):
    """A copy of the tiny export whose recorded data is an ImageFolder tree of test images saved as PNG."""
    t = tmp_path_factory.mktemp("folder")
    exp = t / "export"
    shutil.copytree(tiny_export[0], exp)
    root = t / "data"
    manifest = json.loads((exp / "manifest.json").read_text())
    for d in manifest["domains"]:
        dom = suite.get(d["name"])
        x, y = dom.test.get_batch(np.arange(PER_DOMAIN))
        for i, (img, label) in enumerate(zip(x.numpy(), y.numpy(), strict=True)):
            folder = root / d["name"] / "test" / d["classes"][int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    manifest["source_run"]["data_origin"] = {"kind": "imagefolder", "root": str(root), "domains": None}
    (exp / "manifest.json").write_text(json.dumps(manifest))  # manifest.json itself carries no checksum
    return exp, root


def test_imagefolder_eval_without_torch_counts_the_model_predictions(folder_export):
    import bap.runtime as rt
    from bap.runtime.evaluate import _evaluate_imagefolder

    exp, root = folder_export
    model = rt.load(exp)
    res = _evaluate_imagefolder(model, str(root), "test", 5, None)
    assert res["s_score"] is None and set(res["accuracy"]) == set(model.domains)
    for i, name in enumerate(model.domains):
        files = sorted((root / name / "test").glob("*/*.png"))
        assert res["samples"][name] == len(files) == PER_DOMAIN
        preds = model.predict([str(f) for f in files], i, top_k=1)
        expected = np.mean([p.label == f.parent.name for p, f in zip(preds, files, strict=True)])
        assert res["accuracy"][name] == pytest.approx(expected)


def test_bap_eval_runs_with_torch_blocked(folder_export):
    exp, _ = folder_export
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from bap.cli.main import main\n"
        f"main(['eval', {str(exp)!r}, '--json'])\n"
    )
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert set(doc["accuracy"]) and all(0.0 <= a <= 1.0 for a in doc["accuracy"].values())
