"""Packaging contract: the base install is the runtime (no torch); training and export need the ``train`` extra.

The runtime-only install is simulated in subprocesses that block the ``train`` extra's packages
(``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys

import pytest

from bap.cli.main import TRAIN_EXTRA

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

RUNTIME_DEPS = {"onnxruntime", "numpy", "pillow", "typer", "rich", "psutil"}
TRAIN_DEPS = {
    "torch",
    "torchvision",
    "onnx",
    "onnx-graphsurgeon",
    "ultralytics-thop",
    "safetensors",
    "mlxtend",
    "scikit-learn",
    "scikit-image",
}
# what a runtime-only install lacks: the train extra plus the optional extras
BLOCKED = (*TRAIN_EXTRA, "matplotlib", "onnxconverter_common", "torch_pruning", "tensorrt")


def _canonical(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _name(req: str) -> str:
    return _canonical(re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0])


@pytest.fixture(scope="module")
def project(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]


def _without_train_extra(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    prelude = f"import sys\nfor _m in {BLOCKED!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, check=False
    )


# ------------------------------------------------------------------------------------------------ pyproject
def test_base_dependencies_are_the_runtime(project):
    assert {_name(r) for r in project["dependencies"]} == RUNTIME_DEPS


def test_train_extra_holds_training_export_and_the_data_suite(project):
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["train"]} == TRAIN_DEPS
    for name in ("fp16", "plot", "trt", "gpu", "jetson", "bench", "dev"):
        assert name in extras, name
    # make test / make demo install .[dev]: it must bring the train extra (and the optional ones tests use)
    selfref = [r for r in extras["dev"] if _name(r) == "bap"]
    assert selfref, "dev must pull in bap[train]"
    assert "train" in re.search(r"\[(.*)\]", selfref[0]).group(1).split(",")


def test_versions_are_ranges_not_pins(project):
    reqs = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    pinned = [r for r in reqs if "==" in r and _name(r) != "torch-pruning"]  # torch-pruning: the benchmark peer
    assert not pinned, pinned
    unbounded = [r for r in reqs if _name(r) != "bap" and not re.search(r"[<>=~]", r)]
    assert not unbounded, unbounded


def test_the_cli_dependency_check_covers_the_train_extra(project):
    """``bap train``'s check (``TRAIN_EXTRA``) names exactly the modules of the ``train`` extra."""
    try:
        owners = md.packages_distributions()
    except Exception:  # pragma: no cover - very old importlib.metadata
        pytest.skip("importlib.metadata cannot map modules to distributions")
    extra = {_name(r) for r in project["optional-dependencies"]["train"]}
    covered = set()
    for module in TRAIN_EXTRA:
        dists = {_canonical(d) for d in owners.get(module, [])}
        if not dists:
            pytest.skip(f"{module} is not installed here")
        assert dists & extra, f"{module} comes from {dists}, which the train extra does not list"
        covered |= dists & extra
    assert covered == extra, f"train extra packages the CLI does not check: {extra - covered}"


# ------------------------------------------------------------------------------------------------ no torch
@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "OUT"],
        ["export", "RUN", "--budget", "0.5", "--out", "OUT"],
        ["pretrain"],
        ["models"],
        ["data", "list"],
    ],
    ids=lambda a: "-".join(a[:2]) if a[0] == "data" else a[0],
)
def test_training_commands_without_the_train_extra_exit_2_naming_it(args, tmp_path):
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else str(tmp_path / "run") if a == "RUN" else a for a in args]
    r = _without_train_extra(f"from bap.cli.main import main\nmain({argv!r})")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: bap {' '.join(args[:2]) if args[0] == 'data' else args[0]} needs PyTorch")
    assert "pip install 'bap[train]'" in lines[0], lines[0]
    assert not out.exists()


def test_the_missing_dependency_error_names_the_extra():
    """From Python the same check raises MissingDependencyError (the CLI prints its one_line and exits 2)."""
    r = _without_train_extra(
        "from bap.cli.main import require_train_extra\n"
        "from bap.errors import MissingDependencyError\n"
        "try:\n    require_train_extra('train')\n"
        "except MissingDependencyError as e:\n    print(e.exit_code, e.one_line())\n"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith("2 bap train needs PyTorch"), r.stdout
    assert r.stdout.strip().endswith("pip install 'bap[train]'"), r.stdout


def test_the_cli_and_the_runtime_import_without_the_train_extra():
    """Module level of bap.cli and bap.runtime needs only the base install (torch etc. only inside functions)."""
    code = (
        "import importlib, json, pkgutil\n"
        "import bap.cli, bap.runtime\n"
        "bad = {}\n"
        "for pkg in (bap.cli, bap.runtime):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        try:\n"
        "            importlib.import_module(m.name)\n"
        "        except ImportError as e:\n"
        "            bad[m.name] = str(e)\n"
        "print(json.dumps(bad))\n"
    )
    r = _without_train_extra(code)
    assert r.returncode == 0, r.stderr[-2000:]
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, f"need the train extra at import time: {bad}"


@pytest.mark.parametrize(
    "args", [["--help"], ["eval", "--help"], ["predict", "--help"], ["bench", "--help"], ["--version"]]
)
def test_help_and_runtime_commands_without_the_train_extra(args):
    code = (
        "from bap.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        "print('EXIT', code, sys.modules.get('torch') is not None)\n"
    )
    r = _without_train_extra(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "EXIT 0 False", r.stdout[-2000:]


def test_python_dash_m_bap(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bap", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().startswith("bap "), r.stderr


def test_predict_and_bench_run_without_the_train_extra(tiny_export, tmp_path):
    """A runtime-only install serves an export: bap predict and bap bench work with torch & co. blocked."""
    from PIL import Image

    export_dir = str(tiny_export[0])
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(img)
    bench_json = tmp_path / "bench.json"
    for argv in (
        ["predict", export_dir, str(img), "--domain", "mnist"],
        ["bench", export_dir, "--device", "cpu", "--batch-sizes", "1", "--warmup-s", "0.1", "--duration-s", "0.3",
         "--json", str(bench_json)],
    ):  # fmt: skip
        r = _without_train_extra(f"from bap.cli.main import main\nmain({argv!r})")
        assert r.returncode == 0, (argv[0], r.stderr[-2000:])
    assert bench_json.is_file()
