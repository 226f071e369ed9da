import hashlib

import numpy as np
import torch

from bap.data.suite import SOURCE_DOMAIN, build_suite


def _digest(ds):
    h = hashlib.sha256()
    for d in ds:
        for s in ("train", "val", "test"):
            sp = d.split(s)
            h.update(sp.images.numpy().tobytes())
            h.update(sp.labels.numpy().tobytes())
    return h.hexdigest()


def test_suite_has_five_domains_with_a_small_one(suite):
    assert len(suite) >= 5
    summaries = [d.summary() for d in suite]
    assert any(s["train"] <= 500 for s in summaries)
    assert len({s["classes"] for s in summaries}) >= 3  # different class counts
    assert suite.source_domain == SOURCE_DOMAIN == "mnist"
    for s in summaries:
        assert s["train"] > 0 and s["val"] > 0 and s["test"] > 0
        assert s["source"]


def test_suite_is_deterministic_and_seeded():
    a = build_suite(seed=0, use_cache=False)
    b = build_suite(seed=0, use_cache=False)
    c = build_suite(seed=1, use_cache=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    for da, db in zip(a, b, strict=True):
        assert torch.equal(da.test.labels, db.test.labels)
        assert da.mean == db.mean and da.std == db.std


def test_batches_are_float_rgb_in_unit_range(suite):
    for d in suite:
        x, y = d.train.get_batch(torch.arange(min(17, len(d.train))))
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < d.num_classes


def test_every_class_appears_in_every_split(suite):
    for d in suite:
        for s in ("train", "val", "test"):
            assert set(np.unique(d.split(s).labels.numpy())) == set(range(d.num_classes)), (d.name, s)


def test_cache_round_trip_is_identical(suite):
    again = build_suite()
    assert _digest(again) == _digest(suite)
