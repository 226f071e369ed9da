"""Contracts of the exporter: layout declarations, one default per option, typed validation failure, engines."""

import dataclasses
import inspect
import shutil
import types

import pytest

from bap.errors import ConfigError, ValidationError
from bap.exporter import ExportConfig, Manifest, export, read_manifest
from bap.exporter.manifest import CheckResult, ValidationReport


# ------------------------------------------------------------------------------------------------ layouts
def test_every_layout_declares_its_contract():
    from bap.exporter.layouts import LAYOUTS, LayoutContract

    assert set(LAYOUTS.names()) == {"tables", "routed", "shared"}
    for name, cls in LAYOUTS.items():
        assert issubclass(cls, LayoutContract), name
        assert cls.inputs == ("image", "domain"), name
        assert cls.outputs == ("logits",), name
        assert set(cls.atol) == {"fp32", "fp16"} and 0 < cls.atol["fp32"] < cls.atol["fp16"], name
        assert cls.tolerance("fp32") == cls.atol["fp32"]


def test_tolerance_comes_from_the_layout_unless_atol_is_given():
    from bap.exporter.layouts import LAYOUTS

    for precision in ("fp32", "fp16"):
        cfg = ExportConfig(run_dir="r", precision=precision)
        for name in LAYOUTS.names():
            assert cfg.tolerance(name) == LAYOUTS.get(name).atol[precision]
        assert cfg.tolerance() == min(LAYOUTS.get(n).atol[precision] for n in LAYOUTS.names())  # auto: strictest
    assert ExportConfig(run_dir="r", atol=3e-3).tolerance("routed") == 3e-3


def test_routed_graph_uses_the_declared_names():
    from bap.exporter import routed
    from bap.exporter.layouts import RoutedLayout

    assert (routed.IMAGE, routed.DOMAIN) == RoutedLayout.inputs and (routed.LOGITS,) == RoutedLayout.outputs


# ------------------------------------------------------------------------------------------------ config / CLI
def test_cli_defaults_are_the_config_defaults():
    from bap.cli.export import config_from_cli
    from bap.cli.export import export as command

    fields = {f.name: f for f in dataclasses.fields(ExportConfig)}
    params = inspect.signature(command).parameters
    opts = {n: p.default for n, p in params.items() if n not in ("quiet", "verbose", "run_dir")}
    assert set(opts) == set(fields) - {"run_dir"}  # every config field is a flag, and nothing else
    for name, default in opts.items():
        if name not in ("domains", "specialise", "out", "data_root"):  # typed forms, converted below
            assert default == fields[name].default, name
    special = {k: opts.pop(k) for k in ("domains", "specialise", "out", "data_root")}
    assert config_from_cli("r", **special, **opts) == ExportConfig(run_dir="r")
    assert ExportConfig.round_to == 8 and ExportConfig.gather_threshold == 0.5


def test_cli_help_states_the_defaults_and_why(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    res = run_cli(["export", "--help"])
    text = " ".join(res.out.replace("│", " ").split())
    assert res.code == 0
    assert f"default {ExportConfig.round_to}: ONNX Runtime's CPU blocked NCHWc" in text
    assert f"default {ExportConfig.gather_threshold}:" in text
    assert "--validation-images" in text


@pytest.mark.parametrize(
    "kw, flag",
    [({"validation_images": 0}, "--validation-images"), ({"round_to": 3}, "--round-to"),
     ({"target": "x"}, "--target"), ({"graph": "routed", "target": "trt"}, "--graph"),
     ({"batch_size": 8, "max_batch": 4}, "--max-batch"), ({"atol": -1.0}, "--atol"),
     ({"gather_threshold": 2.0}, "--gather-threshold"), ({"workspace_mb": 1}, "--workspace-mb")],
)  # fmt: skip
def test_config_errors_name_an_existing_flag(kw, flag):
    from bap.cli.export import export as command

    with pytest.raises(ConfigError) as e:
        ExportConfig(run_dir="r", **kw)
    assert flag in e.value.one_line()
    assert flag[2:].replace("-", "_") in inspect.signature(command).parameters


# ------------------------------------------------------------------------------------------------ validation
def _report(atol=1e-4):
    ok = CheckResult(1e-6, 1.0, 8, 3.0)
    bad = CheckResult(5e-2, 0.9, 8, 3.0)
    worse = CheckResult(9e-2, 0.8, 8, 3.0)
    return ValidationReport.judge({"mnist": ok, "faces": bad}, {"backbone.onnx": ok, "specialised-x.onnx": worse}, atol)


def test_require_passed_names_the_worst_file_and_domain():
    from bap.exporter.validate import ValidationMismatchError, require_passed

    report = _report()
    assert not report.passed
    with pytest.raises(ValidationMismatchError) as e:
        require_passed(report, {"backbone.onnx": "mnist", "specialised-x.onnx": "textures"})
    assert isinstance(e.value, ValidationError) and e.value.exit_code == 1
    assert (e.value.file, e.value.domain) == ("specialised-x.onnx", "textures")
    line = e.value.one_line()
    assert "specialised-x.onnx" in line and "textures" in line and "1 more" in line and "\n" not in line
    with pytest.raises(ValidationMismatchError) as e:  # the worst is a domain of the multi-domain model
        require_passed(ValidationReport.judge({"faces": CheckResult(1.0, 0.5, 8)}, {}, 1e-4), {})
    assert (e.value.file, e.value.domain) == ("model.onnx", "faces")
    require_passed(_report(atol=1.0), {})  # within tolerance: no error


def test_mismatch_publishes_nothing_unless_allowed(tmp_path, tiny_run, monkeypatch):
    import bap.exporter.pipeline as pipeline
    from bap.exporter.validate import ValidationMismatchError

    real = pipeline.validate_single

    def off(path, *a, **k):  # the backbone's check exceeds any tolerance
        c = real(path, *a, **k)
        return dataclasses.replace(c, max_abs_diff=1.0) if path.name == "backbone.onnx" else c

    monkeypatch.setattr(pipeline, "validate_single", off)
    out = tmp_path / "exp"
    cfg = ExportConfig(run_dir=str(tiny_run[0]), budget=0.5, out=str(out), graph="tables", validation_images=4)
    with pytest.raises(ValidationMismatchError) as e:
        export(cfg)
    line = e.value.one_line()
    assert "backbone.onnx" in line and "domain" in line and "nothing was published" in line
    assert e.value.file == "backbone.onnx" and e.value.domain == read_domains(tiny_run[0])[0]
    assert not out.exists() and not list(tmp_path.glob(".exp*"))  # no --out, no staging leftovers

    said = []
    res = export(dataclasses.replace(cfg, allow_mismatch=True), lambda stage, msg: said.append((stage, msg)))
    m = read_manifest(out)
    assert m == res.manifest and not m.validation.passed and m.validation.allow_mismatch
    assert any(msg.startswith("[fail] backbone.onnx") for _, msg in said)
    from bap.exporter.trt import tensorrt_available

    # the TensorRT readiness paragraph is for --target trt or machines with TensorRT; the facts are always kept
    assert any(stage == "trt-check" for stage, _ in said) == tensorrt_available()
    assert m.trt_readiness["ok"] in (True, False)


def read_domains(run_dir):
    from bap.trainer import load_run

    return [d.name for d in load_run(run_dir, 0.5).model.domains]


# ------------------------------------------------------------------------------------------------ TensorRT
def _fake_builder(calls):
    def build(onnx_path, engine_path, precision, shapes, workspace_mb, timing_cache=None, fp32_onnx_path=None):
        calls.append((onnx_path.name, engine_path.name, precision, shapes, workspace_mb, timing_cache, fp32_onnx_path))
        engine_path.write_bytes(b"engine:" + onnx_path.name.encode())
        if timing_cache is not None:
            timing_cache.write_bytes(b"cache")
        return {"file": engine_path.name, "tensorrt": "10.3.0", "gpu": "fake", "precision": precision,
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, "seconds": 0.0,
                "bytes": engine_path.stat().st_size}  # fmt: skip

    return build


def test_engines_for_every_model_file_are_recorded(tmp_path, tiny_export):
    from bap.exporter.pipeline import build_engines_for

    src, res = tiny_export
    out = tmp_path / "exp"
    shutil.copytree(src, out)
    calls = []
    cfg = ExportConfig(run_dir="r", target="trt", batch_size=4, max_batch=8, workspace_mb=256)
    m = build_engines_for(out, res.manifest, cfg, builder=_fake_builder(calls))
    spec = [s.file for s in res.manifest.specialised.values()]
    assert spec and [c[0] for c in calls] == ["model.onnx", "backbone.onnx", *spec]
    plans = ["model.plan", "backbone.plan", *(f.replace(".onnx", ".plan") for f in spec)]
    assert [c[1] for c in calls] == plans
    assert all(c[2] == "fp32" and c[4] == 256 and c[6] is None for c in calls)  # same builder settings
    assert set(calls[0][3]) == {"image", "domain"} and set(calls[1][3]) == {"image"}  # profiles follow the inputs
    assert calls[0][3]["image"] == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert all(c[5] == out / "timing.cache" for c in calls)  # one timing cache, same settings for every engine
    for p in plans:
        assert m.files[p].bytes == (out / p).stat().st_size and m.files[p].role.startswith("TensorRT engine")
    assert m.engine["file"] == "model.plan" and list(m.engine["files"]) == plans
    assert "timing.cache" in m.files
    assert read_manifest(out) == m and isinstance(m, Manifest)
    m.verify_files(out)
    assert {p.name for p in out.iterdir()} - {"manifest.json"} == set(m.files)


def test_a_failed_engine_build_leaves_no_partial_set(tmp_path, tiny_export):
    from bap.errors import ExportError
    from bap.exporter.trt import EngineJob, build_engines

    src = tmp_path / "exp"
    shutil.copytree(tiny_export[0], src)
    calls = []
    fake = _fake_builder(calls)

    def flaky(onnx_path, engine_path, *a):
        if onnx_path.name == "backbone.onnx":
            raise ExportError("TensorRT failed to build the engine")
        return fake(onnx_path, engine_path, *a)

    jobs = [EngineJob("model.onnx", {}), EngineJob("backbone.onnx", {})]
    with pytest.raises(ExportError):
        build_engines(src, jobs, "fp32", 64, None, builder=flaky)
    assert not (src / "model.plan").exists()


def test_network_settings_follow_the_tensorrt_major():
    from bap.exporter.trt import network_settings

    flags = types.SimpleNamespace(STRONGLY_TYPED=1, EXPLICIT_BATCH=0)
    trt = types.SimpleNamespace(NetworkDefinitionCreationFlag=flags)
    s8 = network_settings(trt, 8, "fp16")
    assert s8.fp16_flag and s8.use_fp32_source and not s8.strongly_typed and s8.flags == 1  # explicit batch
    s10 = network_settings(trt, 10, "fp16")
    assert s10.strongly_typed and not s10.fp16_flag and s10.flags == 2
    s11 = network_settings(trt, 11, "fp16")
    assert not s11.strongly_typed and not s11.fp16_flag and s11.flags == 0  # strongly typed by default
    assert network_settings(trt, 9, "fp32").flags == 3


def test_plan_names_replace_the_onnx_suffix():
    from bap.exporter.pipeline import fp32_twin
    from bap.exporter.trt import plan_name

    assert plan_name("model.onnx") == "model.plan" and plan_name("specialised-a.b.onnx") == "specialised-a.b.plan"
    assert fp32_twin("backbone.onnx") == "backbone_fp32.onnx"
