"""Schedules (warm-up + cosine, EMA momentum) and the optimiser factory.

References are closed forms written out by hand in this file (the MVEB official per-iteration formulas,
``m_t = 1 - (1 - m_0)(cos(pi t / T) + 1) / 2``) and hand-computed float64 LARS / SGD / AdamW updates.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mvssl_lightning.core.optim import build_optimizer, parameter_groups
from mvssl_lightning.core.schedules import cosine_anneal, warmup_cosine_factor
from mvssl_lightning.methods.momentum import cosine_momentum

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- warm-up + cosine


W, T = 10, 100  # warm-up steps, total steps
S = E = 1e-3  # MVEB: warm-up from 1e-3 lr, cosine to 1e-3 lr


@pytest.mark.parametrize("over_total", [False, True])
def test_warmup_values_hand_computed(over_total):
    f = lambda step: warmup_cosine_factor(step, T, W, S, E, cosine_over_total=over_total)  # noqa: E731
    assert f(0) == pytest.approx(1e-3, abs=1e-15)
    assert f(5) == pytest.approx(0.5005, abs=1e-12)  # 1e-3 + 0.999 * 5/10
    assert f(9) == pytest.approx(0.9001, abs=1e-12)  # 1e-3 + 0.999 * 9/10
    assert f(W) == pytest.approx(1.0, abs=1e-12)  # end of warm-up: cosine starts at the peak


def test_cosine_over_post_warmup_steps():
    f = lambda step: warmup_cosine_factor(step, T, W, S, E, cosine_over_total=False)  # noqa: E731
    # mid cosine: (55 - 10) / 90 = 1/2 -> e + (1 - e) / 2
    assert f(55) == pytest.approx(0.5005, abs=1e-12)
    # step 32: p = 22/90
    assert f(32) == pytest.approx(1e-3 + 0.999 * 0.5 * (1 + math.cos(math.pi * 22 / 90)), abs=1e-12)
    # last step: p = 89/90, cos(89 pi/90) = -cos(pi/90)
    assert f(T - 1) == pytest.approx(1e-3 + 0.999 * 0.5 * (1 - math.cos(math.pi / 90)), abs=1e-12)
    assert f(T) == pytest.approx(E, abs=1e-15)  # reaches the floor at T
    assert f(T + 50) == pytest.approx(E, abs=1e-15)  # and stays there


def test_cosine_over_total_steps_mveb_code():
    f = lambda step: warmup_cosine_factor(step, T, W, S, E, cosine_over_total=True)  # noqa: E731
    # (60 - 10) / 100 = 1/2
    assert f(60) == pytest.approx(0.5005, abs=1e-12)
    # last step: p = 89/100; the rate never reaches its floor (about 0.0305, 30x the floor)
    last = 1e-3 + 0.999 * 0.5 * (1 + math.cos(0.89 * math.pi))
    assert f(T - 1) == pytest.approx(last, abs=1e-12)
    assert 0.03 < f(T - 1) < 0.031
    # the floor is reached only at W + T
    assert f(W + T) == pytest.approx(E, abs=1e-15)


def test_matches_official_mveb_lr_formula_every_step():
    """The official per-iteration form, in lr units: warm-up ``min + (max - min) step / W``, then
    ``min + 0.5 (max - min)(1 + cos(pi (step - W) / T))`` (project/pretrainer.py)."""
    lr_max = 0.3 * 4096 / 256
    lr_min = 1e-3 * lr_max
    total, warm = 250, 30
    for step in range(total):
        if step < warm:
            expected = lr_min + (lr_max - lr_min) * step / warm
        else:
            expected = lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * (step - warm) / total))
        got = lr_max * warmup_cosine_factor(step, total, warm, 1e-3, 1e-3, cosine_over_total=True)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), step


def test_defaults_and_no_warmup():
    # default start factor 0 and end factor 0
    assert warmup_cosine_factor(0, 100, 10) == 0.0
    assert warmup_cosine_factor(5, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine_factor(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-15)
    # no warm-up: starts at the peak, half way at T/2
    assert warmup_cosine_factor(0, 100, 0) == pytest.approx(1.0)
    assert warmup_cosine_factor(50, 100, 0) == pytest.approx(0.5)
    assert warmup_cosine_factor(25, 100, 0) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))


def test_cosine_anneal_closed_form():
    assert cosine_anneal(0, 8, 2.0, -1.0) == pytest.approx(2.0)
    assert cosine_anneal(4, 8, 2.0, -1.0) == pytest.approx(0.5)
    assert cosine_anneal(2, 8, 2.0, -1.0) == pytest.approx(-1.0 + 3.0 * 0.5 * (1 + math.sqrt(0.5)))
    assert cosine_anneal(8, 8, 2.0, -1.0) == pytest.approx(-1.0)
    assert cosine_anneal(80, 8, 2.0, -1.0) == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- EMA momentum


def test_cosine_momentum_closed_form():
    total = 300
    assert cosine_momentum(0, total) == pytest.approx(0.996, abs=1e-15)
    assert cosine_momentum(total // 2, total) == pytest.approx(0.998, abs=1e-12)
    assert cosine_momentum(100, total) == pytest.approx(0.997, abs=1e-12)  # cos(pi/3) = 1/2
    assert cosine_momentum(200, total) == pytest.approx(0.999, abs=1e-12)  # cos(2pi/3) = -1/2
    assert cosine_momentum(total, total) == pytest.approx(1.0, abs=1e-15)
    assert cosine_momentum(total + 17, total) == pytest.approx(1.0, abs=1e-15)  # clamped past T
    assert cosine_momentum(3 * total, total) == pytest.approx(1.0, abs=1e-15)
    # m_t = 1 - (1 - m0)(cos(pi t / T) + 1) / 2 at every step, other base
    for t in range(total + 1):
        expected = 1 - (1 - 0.99) * (math.cos(math.pi * t / total) + 1) / 2
        assert cosine_momentum(t, total, base=0.99) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- parameter groups


def _tiny_mveb():
    from mvssl_lightning import MVEB

    return MVEB(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16)


def test_parameter_groups_zero_decay_is_exactly_biases_and_norms():
    model = _tiny_mveb()
    groups = parameter_groups([model], weight_decay=1e-6)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"decay", "no_decay"}
    assert by_name["decay"]["weight_decay"] == 1e-6
    assert by_name["no_decay"]["weight_decay"] == 0.0

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    # the EMA teacher is frozen and nothing else is
    assert frozen and all(n.startswith("teacher_") for n in frozen)
    assert all(not n.startswith("teacher_") for n in trainable)

    expected_no_decay = {id(p) for p in trainable.values() if p.ndim == 1}
    expected_decay = {id(p) for p in trainable.values() if p.ndim > 1}
    decay_ids = [id(p) for p in by_name["decay"]["params"]]
    no_decay_ids = [id(p) for p in by_name["no_decay"]["params"]]
    assert len(decay_ids) == len(set(decay_ids)) and len(no_decay_ids) == len(set(no_decay_ids))
    assert set(no_decay_ids) == expected_no_decay
    assert set(decay_ids) == expected_decay
    # sanity of the expectation itself: BN affine params of the backbone and projector, and the
    # projector's output bias are there; the bias-free hidden Linears have no bias
    names_no_decay = {n for n, p in trainable.items() if id(p) in expected_no_decay}
    assert "backbone.bn1.weight" in names_no_decay and "backbone.layer4.1.bn2.bias" in names_no_decay
    assert any(n.startswith("projector.") and n.endswith(".bias") for n in names_no_decay)
    assert "backbone.conv1.weight" not in names_no_decay
    frozen_ids = {id(p) for p in frozen.values()}
    assert not frozen_ids & (set(decay_ids) | set(no_decay_ids))


def test_parameter_groups_without_exclusion():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    net[2].weight.requires_grad_(False)
    groups = parameter_groups([net], weight_decay=0.5, exclude_bias_and_norm=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.5
    expected = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == expected
    assert len(groups[0]["params"]) == 5  # frozen weight left out


# ----------------------------------------------------------------------------- optimiser updates


def _net_with_grads(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3, bias=False))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net


def _set_grads(net, seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = scale * torch.randn(p.shape, generator=g)


def _lars_direction(p: torch.Tensor, g: torch.Tensor, wd: float, trust: float) -> torch.Tensor:
    """``trust * ||p|| / (||g|| + wd ||p||) * (g + wd p)`` in float64 (lightly's LARS form)."""
    p, g = p.double(), g.double()
    pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
    return trust * pn / (gn + wd * pn) * (g + wd * p)


def test_lars_adapts_weights_and_leaves_biases_and_norms_plain():
    lr, wd, trust, mom = 0.5, 0.1, 0.02, 0.9
    net = _net_with_grads()
    opt = build_optimizer("lars", parameter_groups([net], wd), lr=lr, momentum=mom, trust_coefficient=trust)
    named = dict(net.named_parameters())
    matrices = ["0.weight", "2.weight"]
    vectors = ["0.bias", "1.weight", "1.bias"]

    p0 = {n: p.detach().double().clone() for n, p in named.items()}
    _set_grads(net, seed=1)
    g1 = {n: p.grad.double().clone() for n, p in named.items()}
    opt.step()
    d1 = {}
    for n in matrices:
        d1[n] = _lars_direction(p0[n], g1[n], wd, trust)
        expected = p0[n] - lr * d1[n]
        torch.testing.assert_close(named[n].detach().double(), expected, rtol=1e-5, atol=1e-6)
        # the adaptation really changes the update (the test could fail with plain SGD)
        assert not torch.allclose(named[n].detach().double(), p0[n] - lr * g1[n], atol=1e-3)
    for n in vectors:
        d1[n] = g1[n]
        torch.testing.assert_close(named[n].detach().double(), p0[n] - lr * g1[n], rtol=1e-5, atol=1e-6)

    # second step: heavy-ball momentum on the (adapted / plain) directions
    p1 = {n: p.detach().double().clone() for n, p in named.items()}
    _set_grads(net, seed=2)
    g2 = {n: p.grad.double().clone() for n, p in named.items()}
    opt.step()
    for n in matrices:
        d2 = _lars_direction(p1[n], g2[n], wd, trust)
        torch.testing.assert_close(named[n].detach().double(), p1[n] - lr * (mom * d1[n] + d2), rtol=1e-5, atol=1e-6)
    for n in vectors:
        torch.testing.assert_close(
            named[n].detach().double(), p1[n] - lr * (mom * g1[n] + g2[n]), rtol=1e-5, atol=1e-6
        )


def test_sgd_decays_weights_only():
    lr, wd = 0.1, 0.3
    net = _net_with_grads()
    opt = build_optimizer("sgd", parameter_groups([net], wd), lr=lr, momentum=0.9)
    named = dict(net.named_parameters())
    p0 = {n: p.detach().double().clone() for n, p in named.items()}
    _set_grads(net, seed=1)
    g = {n: p.grad.double().clone() for n, p in named.items()}
    opt.step()
    for n in ["0.weight", "2.weight"]:
        torch.testing.assert_close(named[n].detach().double(), p0[n] - lr * (g[n] + wd * p0[n]), rtol=1e-5, atol=1e-6)
    for n in ["0.bias", "1.weight", "1.bias"]:
        torch.testing.assert_close(named[n].detach().double(), p0[n] - lr * g[n], rtol=1e-5, atol=1e-6)


def test_adamw_decoupled_decay_on_weights_only():
    lr, wd = 0.01, 0.5
    net = _net_with_grads()
    opt = build_optimizer("adamw", parameter_groups([net], wd), lr=lr)
    named = dict(net.named_parameters())
    p0 = {n: p.detach().double().clone() for n, p in named.items()}
    _set_grads(net, seed=1)
    g = {n: p.grad.double().clone() for n, p in named.items()}
    opt.step()
    # first Adam step: m_hat = g, v_hat = g^2 -> g / (|g| + eps)
    for n, p in named.items():
        step = lr * g[n] / (g[n].abs() + 1e-8)
        decay = (1 - lr * wd) if p.ndim > 1 else 1.0
        torch.testing.assert_close(p.detach().double(), p0[n] * decay - step, rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_raises():
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("rmsprop", parameter_groups([net], 0.0), lr=0.1)
