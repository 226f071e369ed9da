import onnx
import pytest

from bap.errors import MissingDependencyError
from bap.exporter import ExportConfig, export
from bap.exporter.trt import TRT_ONNX_OPS, parse_trt_version, profile_shapes, readiness, require_tensorrt


def test_version_parsing():
    assert parse_trt_version("10.3.0.30") == (10, 3)
    assert parse_trt_version("11.4.0.106") == (11, 4)
    assert parse_trt_version("8.6") == (8, 6)
    assert parse_trt_version("garbage") == (0, 0)


def test_readiness_of_an_exported_graph(tiny_export):
    out, res = tiny_export
    m = onnx.load(str(out / "model.onnx"))
    r = readiness(m, 17, 8, 32, 32, 32)
    assert r["ok"] and not r["unsupported_ops"] and not r["uses_if"]
    assert set(r["ops"]) <= TRT_ONNX_OPS
    assert r["int64_inputs"] == ["domain"]
    assert r["dynamic_inputs"]["image"][0] == "batch"
    assert r["profile"]["image"] == [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]
    assert r["profile"]["domain"] == [[1], [8], [32]]
    assert res.manifest.trt_readiness["ok"]
    r20 = readiness(m, 20, 8, 32, 32, 32)
    assert any("opset 20" in n for n in r20["notes"])  # too new for TensorRT 8.x / 9.x


def test_readiness_flags_unsupported_ops():
    node = onnx.helper.make_node(
        "If",
        ["c"],
        ["y"],
        then_branch=onnx.helper.make_graph([], "t", [], []),
        else_branch=onnx.helper.make_graph([], "e", [], []),
    )
    g = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])], [])
    r = readiness(onnx.helper.make_model(g), 17, 1, 1, 8, 8)
    assert not r["ok"] and r["uses_if"] and "If" in r["unsupported_ops"]


def test_profile_shapes():
    m = onnx.helper.make_model(
        onnx.helper.make_graph(
            [], "g",
            [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["b", 3, "h", "w"]),
             onnx.helper.make_tensor_value_info("domain", onnx.TensorProto.INT64, ["b"])], [],
        )
    )  # fmt: skip
    assert profile_shapes(m, 4, 16, 224, 224) == {
        "image": ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224)),
        "domain": ((1,), (4,), (16,)),
    }


def test_target_trt_without_tensorrt_keeps_the_onnx_files(tmp_path, tiny_run):
    try:
        require_tensorrt()
        pytest.skip("TensorRT is installed here")
    except MissingDependencyError:
        pass
    out = tmp_path / "trt"
    with pytest.raises(MissingDependencyError) as e:
        export(ExportConfig(run_dir=str(tiny_run[0]), budget=0.5, out=str(out), target="trt", validation_images=4))
    assert "TensorRT is not installed" in e.value.one_line() and "pypi.nvidia.com" in e.value.one_line()
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert not (out / "model.plan").exists()


@pytest.mark.trt
def test_engine_builds_and_matches_onnx_runtime(tmp_path, tiny_run):
    import numpy as np

    import bap.runtime as rt

    out = tmp_path / "engine"
    res = export(ExportConfig(run_dir=str(tiny_run[0]), budget=0.5, out=str(out), target="trt", validation_images=4))
    assert (out / "model.plan").is_file() and res.manifest.engine["tensorrt"]
    ort_model = rt.load(out)
    trt_model = rt.load(out, backend="trt", device="cuda")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    a = ort_model.logits(x, [0, 1, 2, 0])
    b = trt_model.logits(x, [0, 1, 2, 0])
    fin = np.isfinite(a)
    assert np.abs(a[fin] - b[fin]).max() < 1e-2
