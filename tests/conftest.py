"""Shared fixtures: a hermetic bap cache, CPU-only settings, one tiny trained run reused by many tests, ``run_cli``.

Tests get what they share from fixtures here (never ``from conftest import ...``): ``run_cli`` runs ``bap ARGS``
in-process, ``repo_root`` is the checkout. Nothing here touches ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _bap_cache(tmp_path_factory):
    """Every test session gets its own cache (suite, pretrained backbones, crash logs)."""
    path = tmp_path_factory.mktemp("bap-cache")
    old = os.environ.get("BAP_CACHE_DIR")
    os.environ["BAP_CACHE_DIR"] = str(path)
    if importlib.util.find_spec("torch") is not None:  # a runtime-only install (no torch) runs its tests too
        import torch

        torch.set_num_threads(2)
    yield path
    if old is None:
        os.environ.pop("BAP_CACHE_DIR", None)
    else:
        os.environ["BAP_CACHE_DIR"] = old


def pytest_collection_modifyitems(config, items):
    """Skip hardware-marked tests where the hardware is absent (the same detection ``bap bench`` uses)."""
    from bap.runtime.devices import cuda_present

    has_cuda = cuda_present()
    has_trt = importlib.util.find_spec("tensorrt") is not None and has_cuda
    is_jetson = Path("/etc/nv_tegra_release").exists()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a GPU"))
        if "jetson" in item.keywords and not is_jetson:
            item.add_marker(pytest.mark.skip(reason="needs a Jetson"))


@pytest.fixture(scope="session")
def suite():
    from bap.data.suite import build_suite

    return build_suite()


TINY_TRAIN = dict(
    backbone="test_cnn",
    budgets=(1.0, 0.5),
    epochs=2,
    steps_per_epoch=6,
    batch_size=32,
    lr_milestones=(2,),
    pretrain_epochs=1,
    bn_recal_images=256,
    quiet=True,
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained bap run on the embedded suite with the tiny backbone (budgets 1.0 and 0.5)."""
    from bap.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    report = train(TrainConfig(out=str(out), **TINY_TRAIN))
    return out, report


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    """The tiny run's budget 0.5 exported (with every specialised model) as the ``routed`` graph.

    Routed, not the default: these tests check the bench and manifest against the specialised models, whose MACs
    a routed branch executes exactly; the default ``shared`` layout has its own tests (``test_shared_layout.py``).
    """
    from bap.exporter import ExportConfig, export

    run_dir, _ = tiny_run
    out = tmp_path_factory.mktemp("exports") / "tiny"
    res = export(
        ExportConfig(
            run_dir=str(run_dir), budget=0.5, out=str(out), specialise=("all",), validation_images=8, graph="routed"
        )
    )
    return out, res


class CliResult(NamedTuple):
    """What ``bap ARGS`` did: exit code, captured stdout / stderr, and the exception the CLI reported (or None)."""

    code: int
    out: str
    err: str
    error: BaseException | None


def _run_cli(args, capsys=None) -> CliResult:
    from bap.cli.main import main

    code, error = 0, None
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        error = e.__context__  # main() exits from inside ``except``: the exception it reported, if any
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return CliResult(code, out, err, error)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(ARGS)`` runs ``bap ARGS`` in-process and returns a :class:`CliResult` (code, out, err, error)."""
    return lambda args: _run_cli(args, capsys)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout (``docs/``, ``pyproject.toml``, ``bap/``)."""
    return ROOT
