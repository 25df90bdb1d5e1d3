"""MVEB objective against an independent float64 reference written from the equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_in_processes

from mvssl_lightning.losses.mveb import mveb_alignment, mveb_entropy_surrogate, mveb_loss


def reference_score(z: np.ndarray, eta: float = 0.01, min_bw: float = 0.1) -> np.ndarray:
    """Stein score estimate, brute force: loops over pairs, sorted median, explicit inverse."""
    n = z.shape[0]
    dists = sorted((1.0 - float(z[i] @ z[j]) for i in range(n) for j in range(n)), reverse=True)
    tau = max(dists[(n * n) // 2 - 1], min_bw)  # the floor(N^2/2)-th largest, 1-indexed
    kernel = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            kernel[i, j] = math.exp(float(z[i] @ z[j]) / tau)
    grad_k = np.stack([sum(kernel[i, j] * z[i] / tau for j in range(n)) for i in range(n)])
    return -np.linalg.inv(kernel + eta * np.eye(n)) @ grad_k


def reference_loss_grad(online: list[np.ndarray], targets: list[np.ndarray], lambd: float, eta: float):
    """Value of -A and dL/dz_v for every view, from the formulas in docs/methods/mveb.md."""
    v_count, b = len(online), online[0].shape[0]
    t1, t2 = targets
    pairs = [t2, t1] + [(t1 + t2) / 2] * (v_count - 2)
    align = sum(float(np.mean(np.sum(z * t, axis=1))) for z, t in zip(online, pairs)) / v_count
    grads = []
    for z, t in zip(online, pairs):
        s = reference_score(z, eta)
        d_align = t / b / v_count
        d_entropy = -s / b / v_count  # gradient of E(z) / V
        grads.append(-d_align - lambd * d_entropy)
    return -align, grads


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("n,d,spread", [(6, 5, 1.0), (9, 16, 1.0), (8, 4, 0.05)])
def test_entropy_surrogate_gradient_is_minus_score_over_n(n, d, spread):
    base = unit(1, d, seed=1)
    z = F.normalize(base + spread * unit(n, d, seed=2), dim=1).requires_grad_(True)
    value = mveb_entropy_surrogate(z)
    (grad,) = torch.autograd.grad(value, z)
    score = reference_score(z.detach().numpy())
    # solve vs explicit inverse: equal up to the conditioning of K + eta I (clustered rows)
    np.testing.assert_allclose(grad.numpy(), -score / n, rtol=1e-6, atol=1e-10)
    expected_value = np.mean(np.sum(-score * z.detach().numpy(), axis=1))
    assert value.item() == pytest.approx(expected_value, rel=1e-6)


def test_bandwidth_floor_applies_to_collapsed_embeddings():
    # identical rows: every distance is 0, so tau = 0.1 and K = e^10 everywhere
    z = unit(1, 8, seed=3).repeat(5, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(mveb_entropy_surrogate(z), z)
    np.testing.assert_allclose(grad.numpy(), -reference_score(z.detach().numpy()) / 5, rtol=1e-8)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("num_local", [0, 2])
def test_loss_and_gradients_match_reference(num_local):
    b, d, lambd, eta = 7, 6, 0.01, 0.01
    online = [unit(b, d, seed=10 + v).requires_grad_(True) for v in range(2 + num_local)]
    targets = [unit(b, d, seed=50), unit(b, d, seed=51)]
    loss = mveb_loss(online, targets, lambd=lambd, eta=eta)
    grads = torch.autograd.grad(loss, online)
    neg_align, ref_grads = reference_loss_grad([z.detach().numpy() for z in online],
                                               [t.numpy() for t in targets], lambd, eta)
    align = mveb_alignment(online, targets).item()
    assert -align == pytest.approx(neg_align, rel=1e-12)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-8, atol=1e-12)


def test_alignment_gradcheck_and_lambda_zero_loss_gradcheck():
    online = tuple(unit(4, 3, seed=20 + v).requires_grad_(True) for v in range(4))
    targets = [unit(4, 3, seed=30), unit(4, 3, seed=31)]
    assert torch.autograd.gradcheck(lambda *zs: mveb_alignment(list(zs), targets), online)
    assert torch.autograd.gradcheck(lambda *zs: mveb_loss(list(zs), targets, lambd=0.0), online)


def test_entropy_gradient_spreads_a_cluster():
    # gradient ascent on the entropy (descent on -U) must push a tight cluster apart
    z = F.normalize(unit(1, 16, seed=4) + 0.3 * unit(32, 16, seed=5), dim=1)
    before = (z @ z.T).mean().item()
    for _ in range(20):
        z = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(-mveb_entropy_surrogate(z), z)
        z = F.normalize(z - 2.0 * g, dim=1)
    assert (z @ z.T).mean().item() < before - 0.05


def test_surrogate_runs_in_float32_under_bf16_autocast():
    z32 = unit(16, 32, seed=6, dtype=torch.float32)
    z = z32.clone().requires_grad_(True)
    (g32,) = torch.autograd.grad(mveb_entropy_surrogate(z), z)
    zb = z32.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mveb_entropy_surrogate(zb)
    assert value.dtype == torch.float32
    (gb,) = torch.autograd.grad(value, zb)
    # the only difference is the bf16 rounding of the inputs (relative 2^-8)
    rel = (gb.float() - g32).norm() / g32.norm()
    assert rel < 0.05


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="at least 2 online views"):
        mveb_loss([unit(4, 3)], [unit(4, 3), unit(4, 3)])
    with pytest.raises(ValueError, match="N >= 2"):
        mveb_entropy_surrogate(unit(1, 3))


def _ddp_worker(rank, world, online, targets):
    b = online[0].shape[0] // world
    local = [z[rank * b:(rank + 1) * b].clone().requires_grad_(True) for z in online]
    local_t = [t[rank * b:(rank + 1) * b] for t in targets]
    loss = mveb_loss(local, local_t, gather_distributed=True)
    grads = torch.autograd.grad(loss, local)
    # DDP averages parameter gradients over processes, so each row's effective gradient is its
    # local gradient / world
    return [g / world for g in grads]


def test_gather_distributed_matches_single_process_global_batch():
    world, b = 2, 5
    online = [unit(world * b, 6, seed=60 + v) for v in range(3)]
    targets = [unit(world * b, 6, seed=70), unit(world * b, 6, seed=71)]
    # single process on the global batch: after DDP's averaging, the local alignment means give the
    # global mean and the gathered estimator gives each row its global-batch score / N
    glob = [z.clone().requires_grad_(True) for z in online]
    expected = torch.autograd.grad(mveb_loss(glob, targets), glob)
    out = run_in_processes(_ddp_worker, online, targets, world=world)
    for v in range(3):
        got = torch.cat([out[r][v] for r in range(world)])
        rel = (got - expected[v]).norm() / expected[v].norm()
        assert rel < 1e-10
