"""The ``shared`` layout (issue 14): what its cost model promises and what ONNX Runtime really holds.

* the cost model: an empty plan is ``routed`` (every branch's own weights), each greedy step saves weights, the plan
  fits the target when a fitting plan exists, core channels are the ones used by at least ``m`` domains;
* the graph: every shared block is one initializer read by one ``Conv`` per branch; the export equals the masked
  model (exported == masked, checked by export validation and again here on mixed batches with absent domains);
* memory: with the manifest's runtime settings ONNX Runtime holds fewer weights than ``routed`` and no more than
  ``--max-weights`` allows (measured in ORT's optimised graph); a plain session (no settings) gives the same logits.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, build_multidomain
from bap.data.suite import build_suite
from bap.data.transforms import eval_view
from bap.exporter import ExportConfig, export
from bap.exporter.manifest import read_manifest
from bap.exporter.shared import extras
from bap.exporter.sharing import BranchSets, ConvInfo, SharingPlan, choose_sharing, core_channels, sharing_cost
from bap.exporter.validate import held_weights, ort_session
from bap.models.backbones import create_backbone
from bap.testing import random_switches_, write_run_dir
from bap.trainer.artifacts import load_run

# ---------------------------------------------------------------------------------------------- cost model


def _chain_model(keeps_mid: list[list[int]]) -> tuple[list[ConvInfo], list[dict[str, BranchSets]]]:
    """stem (stream, 8 -> 8) -> a (chain producer 8 -> 8) -> b (chain consumer 8 -> 4); per-domain chain channels."""
    infos = [
        ConvInfo("a", "stream", 8, 8, 9, 16, "b"),
        ConvInfo("b", "chain", 8, 4, 9, 16, None),
    ]
    branches = [
        {"a": BranchSets(tuple(keep), tuple(range(8))), "b": BranchSets((0, 1, 2, 3), tuple(keep))}
        for keep in keeps_mid
    ]
    return infos, branches


def test_core_channels_are_those_used_by_m_domains_padded_with_the_most_used():
    keeps = [[0, 1, 2], [1, 2, 3], [2, 5]]
    assert core_channels(keeps, 3, 8) == (2,)
    assert core_channels(keeps, 2, 8) == (1, 2)
    assert core_channels(keeps, 1, 8) == (0, 1, 2, 3, 5)
    assert core_channels(keeps, 2, 8, round_to=4) == (0, 1, 2, 3)  # padded with the next most used (0, 3)
    assert core_channels(keeps, 4, 8) == ()
    # extras: the domain's channels outside the core, padded with channels it does not use
    assert extras([0, 1, 2], (1, 2), 8, 1) == (0,)
    assert extras([0, 1, 2], (1, 2), 8, 4) == (0, 3, 4, 5)
    assert extras([1, 2], (1, 2), 8, 4) == ()


def test_empty_plan_costs_what_routed_holds_and_runs():
    infos, branches = _chain_model([[0, 1, 2, 3], [2, 3, 4, 5]])
    cost = sharing_cost(infos, branches, SharingPlan())
    own = sum(len(b[c.name].out_keep) * len(b[c.name].in_keep) * c.kernel_area for b in branches for c in infos)
    assert cost.weights == own
    assert cost.macs == tuple(
        sum(len(b[c.name].out_keep) * len(b[c.name].in_keep) * c.kernel_area * c.out_area for c in infos)
        for b in branches
    )
    assert cost.passes == (0, 0)


def test_splitting_the_chain_stores_the_core_block_once():
    infos, branches = _chain_model([[0, 1, 2, 3], [0, 1, 2, 3]])  # identical domains: the core is everything
    plan = SharingPlan({"b": (0, 1, 2, 3)}, frozenset({"a"}))
    cost = sharing_cost(infos, branches, plan)
    # a: 4 shared rows over the masked full input (8), once; b: all 4 rows x core 4, once
    assert cost.weights == 4 * 8 * 9 + 4 * 4 * 9
    routed = sharing_cost(infos, branches, SharingPlan())
    assert cost.weights == routed.weights // 2 and cost.macs == routed.macs


def test_greedy_fits_the_target_and_never_adds_weights():
    rng = np.random.default_rng(0)
    keeps = [sorted(rng.choice(8, size=5, replace=False).tolist()) for _ in range(4)]
    infos, branches = _chain_model(keeps)
    routed = sharing_cost(infos, branches, SharingPlan())
    base = sum(c.in_channels * c.out_channels * c.kernel_area for c in infos)
    loose, loose_cost = choose_sharing(infos, branches, 10.0, base)
    assert loose == SharingPlan() and loose_cost == routed  # routed fits: nothing is shared
    plan, cost = choose_sharing(infos, branches, 1.0, base)
    assert cost.weights <= base < routed.weights and plan.core
    assert sum(cost.macs) >= sum(routed.macs)  # sharing never makes a sample run less than its own channels


# ---------------------------------------------------------------------------------------------- export


def _run(tmp_path, backbone="test_bottleneck", domains=("mnist", "faces", "textures")):
    suite = build_suite().select(list(domains))
    bb = create_backbone(backbone).eval()
    m = build_multidomain(bb, analyze(bb, 32), [DomainSpec(d.name, d.num_classes, d.mean, d.std) for d in suite])
    random_switches_(m, seed=1)
    return write_run_dir(tmp_path / "run", m.eval(), bb, suite), suite


@pytest.fixture(scope="module")
def shared_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    run_dir, suite = _run(tmp)
    outs = {}
    for graph, limit in (("shared", 0.6), ("routed", 1.0)):
        out = tmp / graph
        export(ExportConfig(run_dir=str(run_dir), out=str(out), graph=graph, max_weights=limit, validation_images=4))
        outs[graph] = out
    return run_dir, suite, outs


def test_shared_blocks_are_one_initializer_read_by_every_branch(shared_export):
    _, suite, outs = shared_export
    m = onnx.load(str(outs["shared"] / "model.onnx"))
    shared = {t.name for t in m.graph.initializer if t.name.startswith("shared.")}
    assert shared, "a 0.6x limit must share blocks"
    readers = Counter(i for n in m.graph.node if n.op_type == "Conv" for i in n.input if i in shared)
    assert set(readers) == shared and set(readers.values()) == {len(suite)}
    manifest = read_manifest(outs["shared"])
    assert manifest.graph == "shared"
    assert manifest.runtime.onnxruntime.disabled_optimizers == ("ConvBNFusion", "ConvMulFusion", "ConvAddFusion")
    assert read_manifest(outs["routed"]).runtime.onnxruntime.disabled_optimizers == ()


def test_ort_holds_fewer_weights_than_routed_and_the_manifest_says_how_many(shared_export):
    _, _, outs = shared_export
    m = read_manifest(outs["shared"])
    held = held_weights(outs["shared"] / "model.onnx", m.runtime.onnxruntime.disabled_optimizers)
    assert m.params.loaded == held  # measured, not estimated
    routed = read_manifest(outs["routed"])
    assert held < routed.params.loaded == held_weights(outs["routed"] / "model.onnx")
    assert m.graph_facts["fit"][-1]["held"] == held
    # without the settings a plain session folds every branch's BN into its own copy of the shared blocks
    assert held_weights(outs["shared"] / "model.onnx") > held


def test_shared_equals_masked_on_mixed_batches_with_absent_domains_and_plain_ort(shared_export):
    run_dir, suite, outs = shared_export
    model = load_run(run_dir).model
    xs = [eval_view(d.test.get_batch(torch.arange(3))[0], d.preprocess) for d in suite]
    x = torch.cat([xs[0], xs[2]])  # domain 1 absent
    ids = torch.tensor([0] * 3 + [2] * 3)
    perm = torch.tensor([3, 0, 4, 1, 5, 2])
    x, ids = x[perm], ids[perm]
    ref = model(x, ids).detach().numpy()
    m = read_manifest(outs["shared"])
    for opts in (m.runtime.onnxruntime.disabled_optimizers, ()):
        sess = ort_session(outs["shared"] / "model.onnx", disabled_optimizers=opts)
        out = sess.run(["logits"], {"image": x.numpy(), "domain": ids.numpy()})[0]
        fin = np.isfinite(ref)
        assert (fin == np.isfinite(out)).all()
        assert float(np.abs(ref[fin] - out[fin]).max()) <= 1e-4
    empty = sess.run(["logits"], {"image": x[:0].numpy(), "domain": ids[:0].numpy()})[0]
    assert empty.shape == (0, out.shape[1])
