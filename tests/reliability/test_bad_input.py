"""Bad input across every command and the Python API: one line, the right exit code, nothing written.

``docs/errors.md`` is generated from these cases: ``BAP_WRITE_ERRORS_MD=1 pytest -m reliability`` rewrites it, and
``test_errors_md_lists_every_case`` fails when it is out of date.

Cases that refuse missing hardware or software (no GPU, no TensorRT, not a Jetson) ask the same detection bap uses
and are skipped where it is present: nothing here assumes what the machine lacks.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bap.errors import BapError

pytestmark = pytest.mark.reliability

# id -> (command, exit code, Python exception type, answer)
RECORDS: dict[str, tuple[str, int | None, str, str]] = {}
TINY = ["--backbone", "test_cnn", "--epochs", "1", "--steps-per-epoch", "2", "--pretrain-epochs", "1"]


class Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def env(tiny_run, tiny_export, tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    (t / "emptydir").mkdir()
    (t / "afile").write_text("x")
    (t / "foreign").mkdir()
    (t / "foreign" / "config.json").write_text(json.dumps({"format": "someone-else/3"}))
    (t / "garbage_run").mkdir()
    (t / "garbage_run" / "config.json").write_text("{not json")
    (t / "notanexport").mkdir()
    (t / "notanexport" / "data.txt").write_text("keep me")
    (t / "badmanifest").mkdir()
    (t / "badmanifest" / "manifest.json").write_text(json.dumps({"format": "bap.export/9"}))
    (t / "notimage.png").write_text("hello")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(t / "ok.png")
    data = (t / "ok.png").read_bytes()
    (t / "trunc.png").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.full((40, 30), 40000, np.uint16)).save(t / "deep16.png")
    Image.new("L", (50, 20), 200).save(t / "gray.png")
    Image.new("CMYK", (33, 33), (0, 120, 0, 0)).save(t / "cmyk.jpg")
    Image.new("RGB", (1, 1), (255, 255, 255)).save(t / "one.png")
    torch.save(Evil(str(t / "PWNED")), t / "evil.pt")
    torch.save({"conv1.weight": torch.zeros(3)}, t / "wrong.pt")
    # an imagefolder root whose only domain has an empty test split
    for s in ("train", "val", "test"):
        (t / "emptytest" / "dom" / s / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(t / "emptytest" / "dom" / "train" / "a" / "0.png")
    Image.new("RGB", (8, 8)).save(t / "emptytest" / "dom" / "val" / "a" / "0.png")
    # a finetune "run"
    ft = t / "ftrun"
    shutil.copytree(tiny_run[0], ft, ignore=shutil.ignore_patterns(".lock"))
    doc = json.loads((ft / "config.json").read_text())
    doc["config"]["method"] = "finetune"
    (ft / "config.json").write_text(json.dumps(doc))
    # a run whose budget state is corrupt
    cr = t / "corruptstate"
    shutil.copytree(tiny_run[0], cr, ignore=shutil.ignore_patterns(".lock"))
    (cr / "budgets" / "0.5" / "state.safetensors").write_bytes(b"\x00" * 100)
    # exports whose model.onnx was truncated / modified after publishing (integrity: sha256 in the manifest)
    for name, damage in (("truncexport", lambda b: b[: len(b) // 2]), ("modexport", lambda b: b[:-8] + b"\x00" * 8)):
        shutil.copytree(tiny_export[0], t / name)
        (t / name / "model.onnx").write_bytes(damage((t / name / "model.onnx").read_bytes()))
    # a run whose report.json does not parse
    rr = t / "badreport"
    shutil.copytree(tiny_run[0], rr, ignore=shutil.ignore_patterns(".lock"))
    (rr / "report.json").write_text("{truncated")
    return {"RUN": str(tiny_run[0]), "EXPORT": str(tiny_export[0]), "TMP": str(t)}


# (id, command, exit code, message fragment, paths that must not exist afterwards)
CASES = [
    ("eval-model-truncated", ["eval", "TMP/truncexport"], 2, "model.onnx is truncated", []),
    (
        "predict-model-modified",
        ["predict", "TMP/modexport", "TMP/ok.png", "--domain", "mnist"],
        2,
        "model.onnx is modified",
        [],
    ),
    (
        "bench-model-truncated",
        ["bench", "TMP/truncexport", "--json", "TMP/b9.json"],
        2,
        "model.onnx is truncated",
        ["TMP/b9.json"],
    ),
    (
        "export-report-corrupt",
        ["export", "TMP/badreport", "--budget", "0.5", "--out", "TMP/e20"],
        2,
        "report.json",
        ["TMP/e20"],
    ),
    ("train-budget-zero", ["train", "--budgets", "0", "--out", "TMP/o1"], 2, "outside (0, 1]", ["TMP/o1"]),
    ("train-budget-big", ["train", "--budgets", "1.5", "--out", "TMP/o2"], 2, "outside (0, 1]", ["TMP/o2"]),
    (
        "train-budget-text",
        ["train", "--budgets", "half", "--out", "TMP/o3"],
        2,
        "not a comma-separated list",
        ["TMP/o3"],
    ),
    ("train-budget-repeat", ["train", "--budgets", "0.5,0.5", "--out", "TMP/o4"], 2, "repeat", ["TMP/o4"]),
    ("train-method", ["train", "--method", "prune", "--out", "TMP/o5"], 2, "unknown method 'prune'", ["TMP/o5"]),
    ("train-backbone", ["train", "--backbone", "vgg16", "--out", "TMP/o6"], 2, "unknown backbone 'vgg16'", ["TMP/o6"]),
    (
        "train-dg-head",
        ["train", "--method", "dgprune", "--budget", "0.5", "--dg-head", "both", "--out", "TMP/o5b"],
        2,
        "unknown dg_head 'both'",
        ["TMP/o5b"],
    ),
    (
        "train-dg-weight",
        ["train", "--method", "dgprune", "--dg-variance-weight", "-1", "--out", "TMP/o5c"],
        2,
        "dg_variance_weight must be >= 0",
        ["TMP/o5c"],
    ),
    ("train-domain", ["train", "--domains", "svhn", "--out", "TMP/o7"], 2, "unknown domain 'svhn'", ["TMP/o7"]),
    (
        "train-data-root-missing",
        ["train", "--data-root", "TMP/nowhere", "--out", "TMP/o8"],
        2,
        "not a readable directory",
        ["TMP/o8"],
    ),
    (
        "train-data-root-empty",
        ["train", "--data-root", "TMP/emptydir", "--out", "TMP/o9"],
        2,
        "no domain folders",
        ["TMP/o9"],
    ),
    (
        "train-empty-domain",
        ["train", "--data-root", "TMP/emptytest", "--out", "TMP/o10"],
        2,
        "no images in its test split",
        ["TMP/o10"],
    ),
    ("train-resume-missing", ["train", "--resume", "--out", "TMP/nope"], 2, "does not exist", ["TMP/nope"]),
    ("train-resume-foreign", ["train", "--resume", "--out", "TMP/foreign"], 2, "not a bap run config", []),
    ("train-out-exists", ["train", "--out", "RUN"], 2, "already exists", []),
    (
        "train-epochs-zero",
        ["train", "--epochs", "0", "--out", "TMP/o11"],
        2,
        "epochs must be an integer >= 1",
        ["TMP/o11"],
    ),
    (
        "train-negative-lr",
        ["train", "--lr-switch", "-1", "--out", "TMP/o12"],
        2,
        "lr_switch must be a positive number",
        ["TMP/o12"],
    ),
    ("train-cuda-absent", ["train", "--device", "cuda", "--out", "TMP/o13"], 2, "no CUDA GPU", ["TMP/o13"]),
    (
        "train-budget-unit",
        ["train", "--budget-unit", "flops", "--out", "TMP/o14"],
        2,
        "unknown budget unit",
        ["TMP/o14"],
    ),
    (
        "train-layout-without-root",
        ["train", "--layout", "decathlon", "--out", "TMP/o15"],
        2,
        "needs --data-root",
        ["TMP/o15"],
    ),
    (
        "train-weights-missing",
        ["train", *TINY, "--weights", "TMP/none.pt", "--out", "TMP/o16"],
        2,
        "not found",
        ["TMP/o16"],
    ),
    (
        "train-weights-pickle",
        ["train", *TINY, "--weights", "TMP/evil.pt", "--out", "TMP/o17"],
        2,
        "refusing to load",
        ["TMP/o17", "TMP/PWNED"],
    ),
    (
        "train-weights-mismatch",
        ["train", *TINY, "--weights", "TMP/wrong.pt", "--out", "TMP/o18"],
        2,
        "miss",
        ["TMP/o18"],
    ),
    (
        "train-round-to",
        ["train", "--round-to", "3", "--out", "TMP/o19"],
        2,
        "round_to must be 1, 8, 16 or 32",
        ["TMP/o19"],
    ),
    (
        "train-bad-flag-type",
        ["train", "--epochs", "many", "--out", "TMP/o20"],
        2,
        "Invalid value for '--epochs'",
        ["TMP/o20"],
    ),
    ("train-unknown-flag", ["train", "--frobnicate", "--out", "TMP/o21"], 2, "No such option", ["TMP/o21"]),
    ("export-missing-run", ["export", "TMP/norun", "--out", "TMP/e1"], 2, "does not exist", ["TMP/e1"]),
    ("export-corrupt-run", ["export", "TMP/garbage_run", "--out", "TMP/e2"], 2, "is not valid JSON", ["TMP/e2"]),
    ("export-foreign-run", ["export", "TMP/foreign", "--out", "TMP/e3"], 2, "not a bap run config", ["TMP/e3"]),
    (
        "export-budget-untrained",
        ["export", "RUN", "--budget", "0.25", "--out", "TMP/e4"],
        2,
        "trained budgets: 1, 0.5",
        ["TMP/e4"],
    ),
    ("export-budget-ambiguous", ["export", "RUN", "--out", "TMP/e5"], 2, "has several budgets: 1, 0.5", ["TMP/e5"]),
    (
        "export-domain",
        ["export", "RUN", "--budget", "0.5", "--domains", "svhn", "--out", "TMP/e6"],
        2,
        "unknown domain 'svhn'",
        ["TMP/e6"],
    ),
    (
        "export-opset",
        ["export", "RUN", "--budget", "0.5", "--opset", "9", "--out", "TMP/e7"],
        2,
        "opset 9 is not supported",
        ["TMP/e7"],
    ),
    (
        "export-graph",
        ["export", "RUN", "--budget", "0.5", "--graph", "grid", "--out", "TMP/e11"],
        2,
        "unknown graph layout 'grid'",
        ["TMP/e11"],
    ),
    (
        "export-routed-trt",
        ["export", "RUN", "--budget", "0.5", "--graph", "routed", "--target", "trt", "--out", "TMP/e12"],
        2,
        "--graph routed is for ONNX Runtime",
        ["TMP/e12"],
    ),
    (
        "export-precision",
        ["export", "RUN", "--budget", "0.5", "--precision", "fp8", "--out", "TMP/e8"],
        2,
        "unknown precision",
        ["TMP/e8"],
    ),
    ("export-out-is-file", ["export", "RUN", "--budget", "0.5", "--out", "TMP/afile"], 2, "is not a directory", []),
    (
        "export-out-foreign-dir",
        ["export", "RUN", "--budget", "0.5", "--out", "TMP/notanexport"],
        2,
        "not a bap export",
        [],
    ),
    ("export-finetune-run", ["export", "TMP/ftrun", "--out", "TMP/e9"], 2, "finetune baseline", ["TMP/e9"]),
    (
        "export-corrupt-state",
        ["export", "TMP/corruptstate", "--budget", "0.5", "--out", "TMP/e10"],
        2,
        "not a valid safetensors",
        ["TMP/e10"],
    ),
    (
        "export-trt-absent",
        ["export", "RUN", "--budget", "0.5", "--target", "trt", "--out", "TMP/e11"],
        2,
        "TensorRT is not installed",
        ["TMP/e11/model.plan"],
    ),
    ("eval-missing", ["eval", "TMP/noexport"], 2, "does not exist", []),
    ("eval-no-manifest", ["eval", "TMP/emptydir"], 2, "no manifest", []),
    ("eval-foreign-manifest", ["eval", "TMP/badmanifest"], 2, "not supported by this bap", []),
    ("eval-split", ["eval", "EXPORT", "--split", "holdout"], 2, "unknown split", []),
    ("predict-domain-name", ["predict", "EXPORT", "TMP/ok.png", "--domain", "svhn"], 2, "unknown domain 'svhn'", []),
    ("predict-domain-id", ["predict", "EXPORT", "TMP/ok.png", "--domain", "7"], 2, "out of range", []),
    ("predict-not-image", ["predict", "EXPORT", "TMP/notimage.png", "--domain", "mnist"], 2, "not an image", []),
    ("predict-truncated", ["predict", "EXPORT", "TMP/trunc.png", "--domain", "mnist"], 2, "truncated or corrupt", []),
    ("predict-missing-file", ["predict", "EXPORT", "TMP/ghost.png", "--domain", "mnist"], 2, "not found", []),
    (
        "predict-top-k",
        ["predict", "EXPORT", "TMP/ok.png", "--domain", "mnist", "--top-k", "0"],
        2,
        "top_k must be >= 1",
        [],
    ),
    ("predict-16bit", ["predict", "EXPORT", "TMP/deep16.png", "--domain", "mnist"], 0, "", []),
    ("predict-grayscale", ["predict", "EXPORT", "TMP/gray.png", "--domain", "textures"], 0, "", []),
    ("predict-cmyk", ["predict", "EXPORT", "TMP/cmyk.jpg", "--domain", "faces"], 0, "", []),
    ("predict-1x1", ["predict", "EXPORT", "TMP/one.png", "--domain", "digits"], 0, "", []),
    (
        "bench-cuda-absent",
        ["bench", "EXPORT", "--device", "cuda", "--json", "TMP/b1.json"],
        2,
        "no NVIDIA GPU",
        ["TMP/b1.json"],
    ),
    (
        "bench-not-jetson",
        ["bench", "EXPORT", "--device", "jetson", "--json", "TMP/b2.json"],
        2,
        "not a Jetson",
        ["TMP/b2.json"],
    ),
    (
        "bench-batch-zero",
        ["bench", "EXPORT", "--batch-sizes", "0", "--json", "TMP/b3.json"],
        2,
        "must list integers >= 1",
        ["TMP/b3.json"],
    ),
    (
        "bench-duration",
        ["bench", "EXPORT", "--duration-s", "0", "--json", "TMP/b4.json"],
        2,
        "--duration-s",
        ["TMP/b4.json"],
    ),
    (
        "bench-trt-on-cpu",
        ["bench", "EXPORT", "--backend", "trt", "--json", "TMP/b5.json"],
        2,
        "--backend trt needs",
        ["TMP/b5.json"],
    ),
    (
        "bench-domain",
        ["bench", "EXPORT", "--domains", "svhn", "--json", "TMP/b6.json"],
        2,
        "unknown domain 'svhn'",
        ["TMP/b6.json"],
    ),
    ("bench-missing", ["bench", "TMP/noexport", "--json", "TMP/b7.json"], 2, "no manifest", ["TMP/b7.json"]),
    (
        "bench-compare-missing",
        ["bench", "EXPORT", "--compare", "TMP/noexport", "--json", "TMP/b8.json"],
        2,
        "no manifest",
        ["TMP/b8.json"],
    ),
]


def _device_present(name: str) -> bool:
    """What ``bap bench --device NAME`` detects on this machine."""
    from bap.errors import UnsupportedDeviceError
    from bap.runtime.devices import DEVICES

    try:
        DEVICES.get(name).check()
    except UnsupportedDeviceError:
        return False
    return True


def _torch_cuda_present() -> bool:
    """What ``bap train --device cuda`` detects (training runs on PyTorch's CUDA)."""
    from bap.core.env import resolve_device
    from bap.errors import UnsupportedDeviceError

    try:
        resolve_device("cuda")
    except UnsupportedDeviceError:
        return False
    return True


def _tensorrt_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


# case id -> (detection, what is present): these cases exercise a refusal that only happens where it is absent
NEEDS_ABSENT = {
    "train-cuda-absent": (_torch_cuda_present, "PyTorch sees a CUDA GPU"),
    "bench-cuda-absent": (lambda: _device_present("cuda"), "an NVIDIA GPU is visible (DEVICES['cuda'])"),
    "bench-not-jetson": (lambda: _device_present("jetson"), "this is a Jetson (DEVICES['jetson'])"),
    "export-trt-absent": (_tensorrt_present, "TensorRT is installed"),
}


def _python_exception(error: BaseException | None) -> str:
    """The type a library call raises for the same input; flag-parsing errors exist only on the command line."""
    if isinstance(error, BapError):
        return type(error).__name__
    return "- (flag parsing: CLI only)"


def _sub(args, env):
    out = []
    for a in args:
        for k, v in env.items():
            a = a.replace(k, v) if isinstance(a, str) else a
        out.append(a)
    return out


def _normalise(text, env):
    for k, v in sorted(env.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(v, k)
    text = re.sub(r"\b\d+ bytes, manifest.json records \d+", "N bytes, manifest.json records M", text)  # model size
    return re.sub(r"/tmp/[^\s;,)']+", "PATH", text)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_input(case, env, run_cli):
    cid, args, code, fragment, absent = case
    if cid in NEEDS_ABSENT:
        present, what = NEEDS_ABSENT[cid]
        if present():
            pytest.skip(f"{what}: the refusal this case checks cannot happen on this machine")
    got, out, err, error = run_cli(_sub(args, env))
    assert got == code, (cid, got, out[-500:], err[-500:])
    if code:
        lines = [x for x in err.strip().splitlines() if x.strip()]
        # status lines go to stderr too (issue 18): the error is one line, the last, after any of them
        start = next((i for i, x in enumerate(lines) if x.startswith(("error:", "internal error:"))), 0)
        assert start == len(lines) - 1, err
        lines = lines[start:]
        assert len(lines) == 1, err  # one line, no traceback
        assert "Traceback" not in err
        assert fragment in lines[0], lines[0]
        if isinstance(error, BapError):  # the CLI prints exactly what the library raised
            assert lines[0] == f"error: {error.one_line()}", (lines[0], error.one_line())
        RECORDS[cid] = (" ".join(["bap", *args]), code, _python_exception(error), _normalise(lines[0], env))
    else:
        assert out.strip() and not err.strip()
        first = out.strip().splitlines()[0]
        assert "(" in first and ":" in first  # "<file> (<domain>): class p, class p, ..."
        RECORDS[cid] = (" ".join(["bap", *args]), code, "-", "handled: decoded, converted to RGB, top-k printed")
    for p in _sub(absent, env):
        assert not Path(p).exists(), f"{cid} wrote {p}"


# ------------------------------------------------------------------------------------------------ Python API
def _api_cases():
    import bap.runtime as rt
    from bap.core.io import load_state_dict
    from bap.errors import IncompatibleArtifactError, InputError
    from bap.exporter.manifest import validate_manifest

    def model(env):
        return rt.load(env["EXPORT"])

    return [
        ("api-load-missing", lambda e: rt.load(e["TMP"] + "/nothing"), IncompatibleArtifactError, "does not exist"),
        ("api-load-not-onnx", lambda e: rt.load(e["TMP"] + "/ok.png"), IncompatibleArtifactError, "not an .onnx file"),
        ("api-nan", lambda e: model(e).logits(np.full((1, 3, 32, 32), np.nan, np.float32), 0), InputError, "NaN"),
        (
            "api-empty-batch",
            lambda e: model(e).logits(np.zeros((0, 3, 32, 32), np.float32), 0),
            InputError,
            "empty batch",
        ),
        ("api-channels", lambda e: model(e).logits(np.zeros((1, 4, 32, 32), np.float32), 0), InputError, "3 channels"),
        ("api-rank", lambda e: model(e).logits(np.zeros((3, 32, 32), np.float32), 0), InputError, "rank 4"),
        (
            "api-dtype",
            lambda e: model(e).logits(np.zeros((1, 3, 32, 32), np.complex64), 0),
            InputError,
            "dtype complex64",
        ),
        ("api-size", lambda e: model(e).logits(np.zeros((1, 3, 31, 32), np.float32), 0), InputError, "expects 32x32"),
        (
            "api-domain-range",
            lambda e: model(e).logits(np.zeros((1, 3, 32, 32), np.float32), 5),
            InputError,
            "out of range",
        ),
        (
            "api-domain-type",
            lambda e: model(e).logits(np.zeros((1, 3, 32, 32), np.float32), 1.5),
            InputError,
            "not a name or an integer id",
        ),
        (
            "api-manifest-garbage",
            lambda e: validate_manifest([1, 2]),
            IncompatibleArtifactError,
            "must be a JSON object",
        ),
        (
            "api-evil-checkpoint",
            lambda e: load_state_dict(e["TMP"] + "/evil.pt"),
            IncompatibleArtifactError,
            "refusing to load",
        ),
    ]


@pytest.mark.parametrize("idx", range(12))
def test_api_bad_input(idx, env):
    cid, fn, exc, fragment = _api_cases()[idx]
    with pytest.raises(exc) as e:
        fn(env)
    msg = e.value.one_line()
    assert fragment in msg and "\n" not in msg
    assert not Path(env["TMP"], "PWNED").exists()  # the crafted pickle never ran
    RECORDS[cid] = (f"Python API: {cid[4:]}", None, type(e.value).__name__, _normalise(msg, env))


def test_errors_md_lists_every_case(repo_root):
    """docs/errors.md is generated from the cases above; it must list each one with bap's answer."""
    path = repo_root / "docs" / "errors.md"
    expected = {c[0] for c in CASES} | {
        f"api-{x}"
        for x in (
            "load-missing",
            "load-not-onnx",
            "nan",
            "empty-batch",
            "channels",
            "rank",
            "dtype",
            "size",
            "domain-range",
            "domain-type",
            "manifest-garbage",
            "evil-checkpoint",
        )
    }
    if set(RECORDS) != expected:
        missing = sorted(expected - set(RECORDS))
        pytest.skip(
            f"only part of the cases ran (-k, or skipped for hardware present here: {', '.join(missing[:6])}); "
            "docs/errors.md is checked on a full run"
        )
    lines = [
        "# Errors: every bad-input case the tests check, and bap's answer",
        "",
        "Generated by `BAP_WRITE_ERRORS_MD=1 pytest -m reliability` from `tests/reliability/test_bad_input.py`;",
        "the test suite fails when this file is out of date. RUN, EXPORT and TMP stand for paths of the test run.",
        "",
        "- **Command line** (`bap ...`): a user error prints one line (`error: <problem>; <fix>`) and exits with the",
        "  code in the `exit` column (2); `handled` rows are inputs bap accepts and converts (exit 0). Internal errors",
        "  exit 1 and name the file holding the traceback.",
        "- **Python** (`import bap`): nothing exits. The same cases raise the exception in the `Python exception`",
        "  column, a subclass of `bap.errors.BapError` whose `one_line()` is the line the CLI prints (`.problem` and",
        "  `.fix` are its parts). `api-*` rows call library functions directly (`bap.runtime.load`, `Model.logits`,",
        "  ...); flag-parsing rows exist only on the command line.",
        "",
        "| case | command | exit | Python exception | answer |",
        "|---|---|---|---|---|",
    ]
    for cid in sorted(RECORDS):
        cmd, code, exc, msg = RECORDS[cid]
        exit_code = "-" if code is None else str(code)
        lines.append(f"| {cid} | `{cmd}` | {exit_code} | {exc} | {msg.replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    if os.environ.get("BAP_WRITE_ERRORS_MD"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), "run BAP_WRITE_ERRORS_MD=1 pytest -m reliability to create docs/errors.md"
    assert path.read_text() == text, "docs/errors.md is out of date: BAP_WRITE_ERRORS_MD=1 pytest -m reliability"


def test_pickle_module_is_not_used_to_load_runs(tiny_run):
    """Checkpoints of a run are loaded with weights_only=True: a crafted one is refused, nothing runs."""
    from bap.errors import IncompatibleArtifactError
    from bap.trainer.artifacts import RunDir

    run = RunDir(tiny_run[0])
    marker = Path(tiny_run[0]).parent / "PWNED2"
    with open(run.checkpoint_path, "wb") as fh:
        pickle.dump(Evil(str(marker)), fh)
    try:
        with pytest.raises(IncompatibleArtifactError, match="unreadable"):
            run.load_checkpoint()
        assert not marker.exists()
    finally:
        run.checkpoint_path.unlink()
