"""Domain ids the graph cannot serve: NaN rows in every layout, from plain ONNX Runtime and refused by bap.runtime.

Contract (``docs/design.md`` section 3): ``domain`` is int64 ``[B]``, one id per image in ``[0, D)``. An id outside
that range gives its image a row of NaN (never another domain's prediction), and a ``domain`` whose length differs
from the image batch gives NaN in every row; valid rows are unchanged. ``bap.runtime`` refuses both before running.

A new layout joins these tests by appending its name to ``LAYOUT_NAMES``.
"""

import numpy as np
import onnx
import pytest

import bap.runtime as rt
from bap.errors import InputError
from bap.exporter import ExportConfig, export
from bap.exporter.validate import ort_session

LAYOUT_NAMES = ["tables", "routed", "shared"]
SIZE = 32  # the tiny run's input size


@pytest.fixture(scope="module", params=LAYOUT_NAMES)
def exported(request, tiny_run, tmp_path_factory):
    """The tiny trained run (budget 0.5) exported with one layout: ``(export dir, ORT session, D, K_max)``."""
    out = tmp_path_factory.mktemp("domain-ids") / request.param
    res = export(
        ExportConfig(run_dir=str(tiny_run[0]), budget=0.5, out=str(out), graph=request.param, validation_images=2)
    )
    assert res.manifest.graph == request.param
    return out, ort_session(out / "model.onnx"), len(res.manifest.domains), res.manifest.k_max


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


def _run(sess, x: np.ndarray, ids) -> np.ndarray:
    return sess.run(["logits"], {"image": x, "domain": np.asarray(ids, dtype=np.int64)})[0]


def test_graph_routes_without_if(exported):
    ops = {n.op_type for n in onnx.load(str(exported[0] / "model.onnx")).graph.node}
    assert "If" not in ops and "Loop" not in ops


def test_ids_outside_the_range_give_nan_rows_and_leave_valid_rows_alone(exported):
    _, sess, d, k_max = exported
    ids = np.array([0, -1, d - 1, -d, 1 % d, d, d + 5, 0], np.int64)
    valid = (ids >= 0) & (ids < d)
    x = _images(len(ids))
    out = _run(sess, x, ids)
    assert out.shape == (len(ids), k_max)
    assert np.isnan(out[~valid]).all()  # -1, -d, d, d + 5: no domain's logits, not even in part
    ref = _run(sess, x[valid], ids[valid])  # the valid images alone
    assert not np.isnan(ref).any()
    np.testing.assert_allclose(out[valid], ref, rtol=0, atol=1e-6)  # -inf padding in the same places
    assert np.isnan(_run(sess, x[:2], [-1, d])).all()  # a batch with no valid id at all


def test_batch_zero(exported):
    _, sess, _, k_max = exported
    assert _run(sess, _images(0), np.zeros(0, np.int64)).shape == (0, k_max)


@pytest.mark.parametrize("batch, length", [(4, 3), (4, 5), (4, 1), (1, 3), (3, 0), (0, 2)])
def test_mismatched_domain_length_gives_nan_rows_in_ort(exported, batch, length):
    _, sess, d, k_max = exported
    out = _run(sess, _images(batch), np.arange(length) % d)  # the length is compared at run time, not traced
    assert out.shape == (batch, k_max) and np.isnan(out).all()


def test_runtime_refuses_mismatched_domain_length_in_one_line(exported):
    torch = pytest.importorskip("torch")
    model = rt.load(exported[0])
    x = _images(4)
    for ids in ([0, 1, 0], np.zeros(5, np.int64), torch.zeros(2, dtype=torch.long)):
        with pytest.raises(InputError) as e:
            model.logits(x, ids)
        line = str(e.value)
        assert line == e.value.one_line() and "\n" not in line and "Traceback" not in line
        assert f"{len(ids)} domains for 4 samples" in line and "one per sample" in line
    assert model.logits(x, [0, 1 % len(model.domains), 0, 0]).shape[0] == 4  # the right length runs
    assert model.logits(x, np.array(0)).shape[0] == 4 == model.logits(x, torch.tensor(0)).shape[0]  # one id for all
