"""The runtime's side of the export contract: integrity, backends that find their files, ORT settings, no torch."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import bap.runtime as rt
from bap.errors import ConfigError, IncompatibleArtifactError, IntegrityError
from bap.exporter.manifest import read_manifest
from bap.runtime.backends import BACKENDS, onnx_file_for, open_backend

POISON = {"optimization.minimal_build_optimizations": "bogus"}  # an entry ORT refuses: proves it was applied


def _copy(tiny_export, tmp_path, name="export"):
    dst = tmp_path / name
    shutil.copytree(tiny_export[0], dst)
    return dst


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def _with_ort_settings(export, settings):
    doc = json.loads((export / "manifest.json").read_text())
    doc["runtime"] = {"onnxruntime": settings}
    (export / "manifest.json").write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, suite):
    out = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, name in enumerate(["mnist", "faces", "textures"]):
        img = suite.get(name).test.images[0].permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(img).save(out / f"{i}.png")
        paths.append(out / f"{i}.png")
    return paths


# ------------------------------------------------------------------------------------------------ integrity
@pytest.mark.parametrize("how", ["truncated", "modified"])
def test_load_refuses_a_damaged_model(tiny_export, tmp_path, how):
    bad = _copy(tiny_export, tmp_path)
    _damage(bad / "model.onnx", how)
    with pytest.raises(IntegrityError, match=rf"model\.onnx is {how}"):
        rt.load(bad)


@pytest.mark.parametrize("how", ["truncated", "modified"])
@pytest.mark.parametrize("command", ["eval", "predict", "bench"])
def test_cli_commands_exit_2_with_one_line_naming_the_damaged_file(tiny_export, tmp_path, run_cli, pngs, how, command):
    bad = _copy(tiny_export, tmp_path)
    _damage(bad / "model.onnx", how)
    args = {
        "eval": ["eval", bad],
        "predict": ["predict", bad, pngs[0], "--domain", "mnist"],
        "bench": ["bench", bad, "--batch-sizes", "1", "--duration-s", "0.05", "--warmup-s", "0", "--no-memory"],
    }[command]
    code, _, err, error = run_cli(args)
    assert code == 2 and isinstance(error, IntegrityError), err
    assert len(err.strip().splitlines()) == 1, err
    assert "model.onnx" in err and how in err, err


@pytest.mark.parametrize("how", ["truncated", "modified", "missing"])
def test_bench_refuses_a_damaged_backbone_before_timing(tiny_export, tmp_path, run_cli, how):
    bad = _copy(tiny_export, tmp_path)
    if how == "missing":
        (bad / "backbone.onnx").unlink()
    else:
        _damage(bad / "backbone.onnx", how)
    out = tmp_path / "bench.json"
    code, stdout, err, error = run_cli(
        ["bench", bad, "--batch-sizes", "1", "--duration-s", "0.05", "--warmup-s", "0", "--no-memory",
         "--iterations", "2", "--json", out],
    )  # fmt: skip
    assert code == 2 and isinstance(error, IntegrityError), err
    assert len(err.strip().splitlines()) == 1 and "backbone.onnx" in err and how in err, err
    assert not out.exists() and not stdout.strip()  # nothing timed, nothing written


def test_bench_fails_when_the_subject_cannot_run(tiny_export, tmp_path, monkeypatch):
    from bap.runtime import bench as bench_mod

    def broken(cfg, spec):
        if spec.label == "multi-domain":
            raise RuntimeError("no kernel for this op")
        return real(cfg, spec)

    real = bench_mod._open
    monkeypatch.setattr(bench_mod, "_open", broken)
    cfg = bench_mod.BenchConfig(export=str(tiny_export[0]), batch_sizes=(1,), duration_s=0.05, memory=False)
    with pytest.raises(IncompatibleArtifactError, match=r"multi-domain model .*model\.onnx cannot run"):
        bench_mod.bench(cfg)


def test_cli_bench_exits_non_zero_when_the_subject_fails_while_running(tiny_export, run_cli, monkeypatch):
    from bap.runtime import bench as bench_mod

    real = bench_mod._Case.run

    def failing(self):
        if self.role == "multi-domain":
            raise RuntimeError("out of memory")
        real(self)

    monkeypatch.setattr(bench_mod._Case, "run", failing)
    code, _, err, _ = run_cli(
        ["bench", tiny_export[0], "--batch-sizes", "1", "--duration-s", "0.05", "--warmup-s", "0", "--no-memory"]
    )
    assert code == 2 and "multi-domain model failed" in err and "out of memory" in err, err


# ------------------------------------------------------------------------------------------------ backends
def test_backends_find_their_own_files(tiny_export):
    root = tiny_export[0]
    m = read_manifest(root)
    d = sorted(m.specialised)[0]
    assert onnx_file_for(m, "multi-domain") == m.model and onnx_file_for(m, "backbone") == m.backbone_file
    assert BACKENDS.get("ort").file_for(m, f"specialised:{d}") == m.specialised[d].file
    assert BACKENDS.get("trt").file_for(m, "backbone") == "backbone.plan"
    assert BACKENDS.get("trt").file_for(m, f"specialised:{d}") == f"specialised-{d}.plan"
    be = open_backend("ort", root, m, f"specialised:{d}", threads=1)
    assert be.path == root / m.specialised[d].file
    with pytest.raises(ConfigError, match="no model for role"):
        open_backend("ort", root, m, "specialised:nope")
    with pytest.raises(IncompatibleArtifactError, match=r"model\.plan is missing.*--target trt"):
        open_backend("trt", root, m, "multi-domain", device="cuda")


def test_onnx_params_without_onnx_match_onnx(tiny_export):
    onnx = pytest.importorskip("onnx")
    from bap.runtime.bench import _onnx_params

    for name in ("model.onnx", "backbone.onnx"):
        m = onnx.load(str(tiny_export[0] / name))
        ref = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in (1, 10, 16))
        assert _onnx_params(tiny_export[0] / name) == ref > 0
    assert _onnx_params(tiny_export[0] / "manifest.json") == 0


# ------------------------------------------------------------------------------------------------ ORT settings
def test_manifest_ort_settings_reach_load_bench_and_probe(tiny_export, tmp_path, monkeypatch):
    import onnxruntime as ort

    from bap.runtime.bench import BenchConfig, _models, _probe_memory, bench

    good = _copy(tiny_export, tmp_path, "good")
    settings = {"disabled_optimizers": ["ConstantFolding"], "session_config": {"session.disable_prepacking": "1"}}
    _with_ort_settings(good, settings)
    seen = []
    real = ort.InferenceSession

    def spy(*args, **kw):
        seen.append(kw.get("disabled_optimizers"))
        return real(*args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    model = rt.load(good, threads=1)
    assert seen == [["ConstantFolding"]]
    assert model.backend.session.get_session_options().get_session_config_entry("session.disable_prepacking") == "1"
    assert model.backend.describe()["settings"] == settings
    doc = bench(BenchConfig(export=str(good), batch_sizes=(1,), warmup_s=0, duration_s=0.05, memory=False))
    assert doc["device"]["onnxruntime_settings"] == settings
    assert all(s == ["ConstantFolding"] for s in seen[1:]) and len(seen) > 2
    # a setting ORT refuses makes load, bench and the memory probe fail: all three apply it
    bad = _copy(tiny_export, tmp_path, "bad")
    _with_ort_settings(bad, {"session_config": POISON})
    with pytest.raises(IncompatibleArtifactError, match="minimal_build_optimizations"):
        rt.load(bad)
    cfg = BenchConfig(export=str(bad), batch_sizes=(1,), memory=False)
    with pytest.raises(IncompatibleArtifactError, match="minimal_build_optimizations"):
        bench(cfg)
    backbone = next(s for s in _models(cfg, read_manifest(bad), bad, ["mnist"]) if s.label == "backbone")
    assert "minimal_build_optimizations" in _probe_memory(cfg, backbone, 1, 32, 0)["error"]


# ------------------------------------------------------------------------------------------------ no torch
_BLOCKED = ("torch", "torchvision", "onnx", "bap.trainer", "bap.exporter.pipeline")
_NO_TORCH = f"import sys\nfor _m in {_BLOCKED!r}: sys.modules[_m] = None\n"


def _run_py(code, cwd):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_runtime_loads_predicts_and_runs_without_torch(tiny_export, pngs, repo_root):
    root = tiny_export[0]
    domains = ["mnist", "faces", "textures"]
    code = (
        _NO_TORCH
        + f"""
import json
import numpy as np
import bap.runtime as rt
out = {{}}
for src in ({str(root)!r}, {str(root / "model.onnx")!r}):
    m = rt.load(src, threads=1)
    preds = m.predict({[str(p) for p in pngs]!r}, domains={domains!r}, top_k=2)
    z = m.logits(np.full((2, 3, m.input_size(0), m.input_size(0)), 0.5, np.float32), [0, 1])
    out[src] = [[p.label, p.top_k[0][1]] for p in preds] + [z[:, 0].tolist()]
loaded = sorted(k for k in ("torch", "onnx", "bap.trainer", "bap.exporter.pipeline", "bap.data.types")
                if sys.modules.get(k) is not None)
print(json.dumps({{"out": out, "loaded": loaded}}))
"""
    )
    res = _run_py(code, repo_root)
    assert res["loaded"] == []
    model = rt.load(root, threads=1)
    ref = [[p.label, p.top_k[0][1]] for p in model.predict(pngs, domains, top_k=2)]
    for got in res["out"].values():
        assert [g[0] for g in got[:-1]] == [r[0] for r in ref]
        np.testing.assert_allclose([g[1] for g in got[:-1]], [r[1] for r in ref], rtol=1e-5)


def test_import_bap_runtime_imports_no_torch(repo_root):
    res = _run_py(
        "import sys, json\nimport bap.runtime, bap.runtime.bench, bap.runtime.backends, bap.runtime.evaluate\n"
        "print(json.dumps([m for m in ('torch', 'onnx', 'onnxruntime', 'bap.data.types') if m in sys.modules]))",
        repo_root,
    )
    assert res == []


def test_eval_without_torch_names_the_extra(tiny_export, repo_root):
    code = (
        _NO_TORCH
        + f"""
import json
import bap.runtime as rt
from bap.errors import MissingDependencyError
from bap.runtime.evaluate import evaluate_export
try:
    evaluate_export(rt.load({str(tiny_export[0])!r}))
except MissingDependencyError as e:
    print(json.dumps(str(e)))
"""
    )
    assert "pip install 'bap[train]'" in _run_py(code, repo_root)


def test_numpy_preprocessing_matches_the_training_resize():
    import torch

    from bap.data.images import resize_center_crop
    from bap.data.imaging import resize_center_crop_array

    rng = np.random.default_rng(0)
    for h, w, s in [(28, 28, 32), (100, 60, 32), (64, 64, 72), (33, 47, 36), (300, 200, 64), (1, 1, 8)]:
        x = rng.random((3, h, w), dtype=np.float32)
        ref = resize_center_crop(torch.from_numpy(x.copy()), s).numpy()
        np.testing.assert_allclose(resize_center_crop_array(x, s), ref, atol=1e-5, rtol=0)
