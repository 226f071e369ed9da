"""The three sharing losses: values and straight-through gradients by hand, intersection unchanged, the learned
weight's fixed point, the ramp, and a tiny run with each option."""

import json
import math

import pytest
import torch

from bap.core.multidomain import binarize_ste
from bap.trainer.objectives import (
    and_fraction,
    learned_weight_term,
    or_fraction,
    ps_loss,
    sharing_loss,
    switch_step_losses,
)

# 3 domains, M = 4 positions; domain 0 takes the step
T0 = [0.1, 0.1, -0.1, 0.1]
S1 = torch.tensor([1.0, 0.0, 1.0, 0.0])
S2 = torch.tensor([1.0, 0.0, 0.0, 1.0])
W = torch.full((4,), 0.25)
ON = S1 * S2  # [1, 0, 0, 0]: every other domain on
OFF = (1 - S1) * (1 - S2)  # [0, 1, 0, 0]: every other domain off


def _grad(kind, beta=0.5):
    t0 = torch.tensor(T0, requires_grad=True)
    s0 = binarize_ste(t0)  # [1, 1, 0, 1]
    a, o = and_fraction(s0, ON, W), or_fraction(s0, OFF, W)
    loss = ps_loss(kind, a, o, beta)
    loss.backward()
    return float(a.detach()), float(o.detach()), float(loss.detach()), t0.grad.tolist()


def test_fractions_are_exact_on_binary_switches():
    a, o, _, _ = _grad("intersection")
    assert a == pytest.approx(0.25)  # position 0 only
    assert o == pytest.approx(1.0)  # every position is used by someone


def test_intersection_pulls_only_where_all_others_are_on():
    _, _, loss, g = _grad("intersection")
    assert loss == pytest.approx(1 - 0.25 / 0.5)
    assert g == pytest.approx([-0.5, 0.0, 0.0, 0.0])  # -1/(M beta) * prod_o s_o: never a push off


def test_union_pushes_off_the_positions_only_this_domain_uses():
    _, _, loss, g = _grad("union")
    assert loss == pytest.approx(1.0 / 0.5 - 1.0)
    # +1/(M beta) * prod_o (1 - s_o): position 1 is used by domain 0 alone; positions 2, 3 by others
    assert g == pytest.approx([0.0, 0.5, 0.0, 0.0])


def test_jaccard_pulls_onto_shared_and_pushes_off_unique_positions():
    a, o, loss, g = _grad("jaccard")
    assert loss == pytest.approx(1 - a / o)
    # d(1 - A/O) = -(dA)/O + A (dO)/O^2, with dA = w * ON, dO = w * OFF
    assert g == pytest.approx([-0.25 / o, 0.25 * a / o**2, 0.0, 0.0])


def test_intersection_loss_is_todays_loss():
    a = torch.tensor(0.2)
    assert float(ps_loss("intersection", a, torch.tensor(0.9), 0.5)) == float(sharing_loss(a, 0.5, 1.0))
    with pytest.raises(ValueError, match="unknown sharing loss"):
        ps_loss("dice", a, a, 0.5)


def _net():
    from bap.testing import random_multidomain

    m, _, g, on = random_multidomain("test_cnn", domains=3, p_on=0.7, seed=3)
    return m.train(), g, on


@pytest.mark.parametrize("kind", ["intersection", "union", "jaccard"])
def test_step_gradient_on_the_switches_is_the_hand_formula(kind):
    # CE and budget are removed by comparing against the same step with lambda_PS = 0
    m, g, on = _net()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    w = torch.full((g.num_switches,), 1.0 / g.num_switches)
    grads = []
    for lam in (0.0, 1.0):
        m.zero_grad()
        torch.manual_seed(0)
        out = switch_step_losses(m, x, y, 0, 0.5, 0.0, w, lam, kind)
        out["loss"].backward()
        grads.append(m.switches.logits[0].grad.clone())
    s0, others = on[0].float(), on[1:].float()
    a = (s0 * others.prod(0) * w).sum()
    o = (w * (1 - (1 - s0) * (1 - others).prod(0))).sum()
    d_and, d_or = w * others.prod(0), w * (1 - others).prod(0)
    expected = {
        "intersection": -d_and / 0.5 if a < 0.5 else torch.zeros_like(w),
        "union": d_or / 0.5 if o > 0.5 else torch.zeros_like(w),
        "jaccard": -d_and / o + a * d_or / o**2,
    }[kind]
    assert torch.allclose(grads[1] - grads[0], expected, atol=1e-7)
    assert float(out["and"]) == pytest.approx(float(a)) and float(out["or"]) == pytest.approx(float(o))


def test_learned_weight_settles_at_one_over_the_loss():
    raw = torch.tensor(0.4)
    rho = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.SGD([rho], lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        learned_weight_term(raw, rho, 2.0).backward()
        opt.step()
    assert math.exp(-float(rho)) == pytest.approx(1 / 0.4, rel=1e-3)  # effective weight lambda / L = 5
    # with no sharing loss to serve, the weight only shrinks (the task clamps it at lambda / 10)
    rho0 = torch.tensor(0.0, requires_grad=True)
    learned_weight_term(torch.tensor(0.0), rho0, 2.0).backward()
    assert float(rho0.grad) == pytest.approx(2.0)


SMALL = dict(
    backbone="test_cnn", budgets=(0.5,), epochs=3, steps_per_epoch=3, batch_size=8, lr_milestones=(3,),
    bn_recal_images=32, quiet=True, layout="imagefolder",
)  # fmt: skip


def tiny_weights(path):
    """Random test_cnn weights (no pretraining: these tests check mechanics, not accuracy)."""
    from bap.core.io import save_state_dict
    from bap.models import create_backbone

    torch.manual_seed(0)
    save_state_dict(path, create_backbone("test_cnn").state_dict(), {"backbone": "test_cnn"})
    return str(path)


def make_imagefolder(root, domains=("a", "b", "c"), classes=("x", "y"), n=(8, 4, 4)):
    """Random 32 px PNGs, ``ROOT/<domain>/<split>/<class>/*.png``: a fast, hermetic data root."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in domains:
        for split, k in zip(("train", "val", "test"), n, strict=True):
            for c in classes:
                (root / d / split / c).mkdir(parents=True, exist_ok=True)
                for i in range(k):
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                        root / d / split / c / f"{i}.png"
                    )
    return root


def test_ramp_learned_weight_and_union_in_a_tiny_run(tmp_path):
    from bap.trainer import TrainConfig, train

    root = str(make_imagefolder(tmp_path / "data"))
    cfg = TrainConfig(out=str(tmp_path / "u"), data_root=root, weights=tiny_weights(tmp_path / "w.safetensors"),
                      sharing_loss="union", ps_weight="learned", ps_ramp_epochs=2, **SMALL)  # fmt: skip
    report = train(cfg)
    run = report["runs"][0]
    assert run["sharing"]["loss"] == "union" and run["sharing"]["weight"] == "learned"
    assert 0.1 - 1e-9 <= run["sharing"]["final_weight"] <= 10 + 1e-9  # lambda_PS = 1, within [1/10, 10]
    lines = [json.loads(x) for x in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    assert [x["ps_ramp"] for x in lines] == [0.0, 0.5, 1.0]
    assert lines[0]["losses"]["a"]["sharing_loss"] == 0.0  # ramp 0: no sharing in epoch 1
    assert all(u <= 0.5 + 1e-9 for u in run["active_fraction"].values())
    assert 1 - run["or_fraction"] == pytest.approx(run["prunable_fraction"])


def test_sharing_options_are_validated():
    from bap.errors import ConfigError
    from bap.trainer import TrainConfig

    with pytest.raises(ConfigError, match="unknown sharing loss 'dice'"):
        TrainConfig(sharing_loss="dice")
    with pytest.raises(ConfigError, match="ps-weight"):
        TrainConfig(ps_weight="auto")
    with pytest.raises(ConfigError, match="ps_ramp_epochs"):
        TrainConfig(ps_ramp_epochs=-1)
    with pytest.raises(ConfigError, match="union_softness"):
        TrainConfig(union_softness=1.0)


@pytest.mark.parametrize("q", [0.5, 0.8])
def test_relaxed_union_pushes_off_positions_in_proportion_to_how_few_others_use_them(q):
    m, g, on = _net()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    w = torch.full((g.num_switches,), 1.0 / g.num_switches)
    grads = []
    for lam in (0.0, 1.0):
        m.zero_grad()
        out = switch_step_losses(m, x, y, 0, 0.5, 0.0, w, lam, "union", None, q)
        out["loss"].backward()
        grads.append(m.switches.logits[0].grad.clone())
    s0, others = on[0].float(), on[1:].float()
    c = others.sum(0)  # how many other domains use each position
    relaxed = (w * (1 - (1 - s0) * q**c)).sum()
    assert float(relaxed) > 0.5  # the hinge is active
    push = grads[1] - grads[0]
    assert torch.allclose(push, w * q**c / 0.5, atol=1e-7)
    # graded: the fewer other domains use a position, the harder this domain is pushed off it
    means = [float(push[c == k].mean()) for k in range(3) if bool((c == k).any())]
    assert means == sorted(means, reverse=True) and len(means) >= 2
    exact = (w * (1 - (1 - s0) * (1 - others).prod(0))).sum()
    assert float(out["or"]) == pytest.approx(float(exact))  # the logged |OR| is exact
