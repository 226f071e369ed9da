"""Review fixes of the inference API: lone-file integrity, damaged files, --data-root, devices, PIL input."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import bap.runtime as rt
from bap.errors import (
    BapError,
    ConfigError,
    IncompatibleArtifactError,
    IntegrityError,
    UnsupportedDeviceError,
)
from bap.exporter.manifest import read_manifest
from bap.runtime.backends import open_backend, ort_providers_for
from bap.runtime.devices import detect_jetson
from bap.runtime.evaluate import evaluate_export


@pytest.fixture
def copy(tiny_export, tmp_path):
    """A private copy of the tiny export (tests damage it)."""
    out = tmp_path / "export"
    shutil.copytree(tiny_export[0], out)
    return out


def _flip(path, index, value=None):
    data = bytearray(path.read_bytes())
    data[index] = data[index] ^ 0xFF if value is None else value
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------- 1. lone file integrity
def test_lone_model_onnx_is_verified_against_the_manifest_beside_it(copy):
    clean = rt.load(copy / "model.onnx")
    assert clean.manifest.files  # the manifest.json beside it, not the embedded one (which lists no files)
    assert clean.path == copy / "model.onnx"
    _flip(copy / "model.onnx", (copy / "model.onnx").stat().st_size - 10)
    with pytest.raises(IntegrityError, match=r"model\.onnx is modified: its sha256 differs from manifest\.json"):
        rt.load(copy / "model.onnx")


def test_lone_model_onnx_without_a_bap_manifest_uses_the_embedded_one(copy, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(copy / "model.onnx", lone / "model.onnx")
    m = rt.load(lone / "model.onnx")
    assert m.manifest.files == {} and m.domains == read_manifest(copy).domain_names
    (lone / "manifest.json").write_text(json.dumps({"name": "a web app manifest"}))  # foreign JSON is ignored
    assert rt.load(lone / "model.onnx").domains == m.domains
    (lone / "manifest.json").write_text("{ truncated")  # an unreadable manifest beside it is refused
    with pytest.raises(IncompatibleArtifactError, match="not valid JSON"):
        rt.load(lone / "model.onnx")


def test_renamed_lone_file_not_listed_by_the_manifest_loads_from_its_embedded_manifest(copy):
    shutil.copy(copy / "model.onnx", copy / "renamed.onnx")
    m = rt.load(copy / "renamed.onnx")
    assert m.path == copy / "renamed.onnx" and m.manifest.model == "renamed.onnx"


# ------------------------------------------------------------------------------------- 2. damaged lone file
def test_damaged_lone_model_onnx_is_an_incompatible_artifact(copy, run_cli):
    (copy / "manifest.json").unlink()
    path = copy / "model.onnx"
    at = path.read_bytes().find(b"bap.manifest")
    assert at > 0
    _flip(path, at + 200, 0xFF)  # inside the embedded manifest: the metadata no longer decodes as UTF-8
    with pytest.raises(IncompatibleArtifactError, match=r"is not a valid bap ONNX model .*re-export"):
        rt.load(path)
    r = run_cli(["predict", path, copy / "none.png", "--domain", "0"])
    assert r.code == 2 and "not a valid bap ONNX model" in r.err and "Traceback" not in r.err, r.err


def test_lone_model_onnx_with_a_broken_protobuf_is_refused(copy):
    (copy / "manifest.json").unlink()
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    mid = len(data) // 4
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(IncompatibleArtifactError, match="not a valid bap ONNX model"):
        rt.load(path)


# ------------------------------------------------------------------------------------- 3. --data-root
def test_data_root_is_refused_for_an_embedded_suite_export(tiny_export, tmp_path, run_cli):
    model = rt.load(tiny_export[0])
    assert (model.manifest.source_run.data_origin or {"kind": "embedded"})["kind"] == "embedded"
    with pytest.raises(ConfigError, match="embedded suite; --data-root does not apply; drop --data-root"):
        evaluate_export(model, data_root=str(tmp_path))
    from bap.data.sources import load_domains_from_origin

    with pytest.raises(ConfigError, match="--data-root does not apply"):
        load_domains_from_origin({"kind": "embedded", "seed": 0}, tmp_path)
    r = run_cli(["eval", tiny_export[0], "--data-root", tmp_path])
    assert r.code == 2 and "--data-root does not apply" in r.err, r.err


# ------------------------------------------------------------------------------------- 4. devices
def test_unknown_device_is_refused_not_run_on_the_cpu(tiny_export, run_cli):
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        rt.load(tiny_export[0], device="tpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        open_backend("ort", tiny_export[0], read_manifest(tiny_export[0]), device="tpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        ort_providers_for("tpu")
    r = run_cli(["predict", tiny_export[0], tiny_export[0] / "none.png", "--domain", "0", "--device", "tpu"])
    assert r.code == 2 and "unknown device 'tpu'" in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_trt_backend_on_cpu_is_refused_like_bench(tiny_export):
    with pytest.raises(ConfigError, match=r"--backend trt needs --device cuda or jetson, got --device cpu"):
        rt.load(tiny_export[0], backend="trt", device="cpu")
    with pytest.raises(ConfigError, match="--backend trt needs --device"):
        open_backend("trt", tiny_export[0], read_manifest(tiny_export[0]), device="cpu")


@pytest.mark.skipif(detect_jetson() is not None, reason="this machine is a Jetson")
def test_jetson_off_a_jetson_says_so(tiny_export):
    with pytest.raises(UnsupportedDeviceError, match="not a Jetson") as e:
        rt.load(tiny_export[0], device="jetson")
    assert "onnxruntime-gpu" not in str(e.value) and isinstance(e.value, BapError)


# ------------------------------------------------------------------------------------- 5. PIL input
def test_predict_on_one_pil_image(tiny_export):
    model = rt.load(tiny_export[0])
    img = Image.fromarray(np.full((40, 40, 3), 128, np.uint8))
    one = model.predict(img, 0, top_k=2)
    assert len(one) == 1 and len(one[0].top_k) == 2 and one[0].source is None
    assert one[0].top_k == model.predict([img], 0, top_k=2)[0].top_k


# ------------------------------------------------------------------------------------- 6. open_backend
def test_open_backend_missing_file_is_an_integrity_error(copy):
    m = read_manifest(copy)
    (copy / m.backbone_file).unlink()
    with pytest.raises(IntegrityError, match=r"backbone\.onnx is missing from the export"):
        open_backend("ort", copy, m, "backbone")
