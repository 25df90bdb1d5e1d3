"""MEC objective and module against an independent float64 reference written from the equations."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_in_processes

from mvssl_lightning.losses.mec import MECLoss, mec_lambda, mec_loss, mec_taylor_logdet
from mvssl_lightning.methods.mec import MEC, lambda_inv_schedule
from mvssl_lightning.methods.momentum import cosine_momentum


def unit_np(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_taylor(p: np.ndarray, z: np.ndarray, lambda_inv: float, order: int = 4) -> float:
    """tr sum_k (-1)^(k+1) C^k / k with explicit matrix powers of the m x m matrix C."""
    c = unit_np(p) @ unit_np(z).T / lambda_inv
    return sum((-1) ** (k + 1) * np.trace(np.linalg.matrix_power(c, k)) / k for k in range(1, order + 1))


def reference_loss(p1, p2, z1, z2, lambda_inv, order=4):
    """(official) -lambda_inv (T(p1, z2) + T(p2, z1)) / (2 m), and the raw mec = (T + T) / (2 m)."""
    m = p1.shape[0]
    mec = (reference_taylor(p1, z2, lambda_inv, order) + reference_taylor(p2, z1, lambda_inv, order)) / (2 * m)
    return -lambda_inv * mec, mec


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("m,d", [(6, 10), (12, 5), (7, 7)])  # both Gram-matrix branches (m <= d, m > d)
@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 6])
def test_taylor_matches_explicit_matrix_powers(m, d, order):
    p, z = randn(m, d, seed=1), randn(m, d, seed=2)
    lambda_inv = 0.7  # ||C|| > 1 on purpose: the truncated series is a polynomial, it must match anyway
    got = mec_taylor_logdet(p, z, lambda_inv, order).item()
    assert got == pytest.approx(reference_taylor(p.numpy(), z.numpy(), lambda_inv, order), rel=1e-12, abs=1e-12)


def test_taylor_gradcheck_float64():
    p, z = randn(5, 4, seed=3).requires_grad_(True), randn(5, 4, seed=4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: mec_taylor_logdet(a, b, 1.3, order=4), (p, z))
    z1, z2 = randn(6, 8, seed=5).requires_grad_(True), randn(6, 8, seed=6).requires_grad_(True)
    p1, p2 = randn(6, 8, seed=7), randn(6, 8, seed=8)
    assert torch.autograd.gradcheck(lambda a, b: mec_loss(p1, p2, a, b, 2.0, order=5), (z1, z2))


def test_series_converges_to_logdet_and_truncation_error_is_the_next_term():
    m, d = 8, 16
    p = randn(m, d, seed=9)
    z = p + 0.3 * randn(m, d, seed=10)  # aligned views: C has a dominant positive diagonal, like training
    c_unit = F.normalize(p, dim=1) @ F.normalize(z, dim=1).T
    errors = []
    for lambda_inv in (40.0, 80.0, 160.0):
        c = c_unit / lambda_inv
        exact = torch.logdet(torch.eye(m, dtype=torch.float64) + c).item()
        series = mec_taylor_logdet(p, z, lambda_inv, order=4).item()
        next_term = torch.trace(torch.linalg.matrix_power(c, 5)).item() / 5
        assert series == pytest.approx(exact, rel=1e-6)
        # exact - T_4 = tr C^5 / 5 - tr C^6 / 6 + ...: the next term dominates when ||C|| << 1
        assert (exact - series) / next_term == pytest.approx(1.0, abs=0.1)
        errors.append(abs(exact - series))
    for small, large in zip(errors[1:], errors[:-1]):  # doubling lambda_inv divides the error by ~2^5
        assert small / large == pytest.approx(2.0**-5, rel=0.1)


@pytest.mark.parametrize("loss_scaling", ["code", "paper_mu"])
def test_symmetrised_loss_scaling_and_logged_mec_match_reference(loss_scaling):
    m, d, lambda_inv = 9, 6, 3.5
    p1, p2, z1, z2 = (randn(m, d, seed=s) for s in (11, 12, 13, 14))
    expected, mec = reference_loss(*(x.numpy() for x in (p1, p2, z1, z2)), lambda_inv)
    assert mec_loss(p1, p2, z1, z2, lambda_inv).item() == pytest.approx(expected, rel=1e-12)
    loss, terms = MECLoss(loss_scaling=loss_scaling)(p1, p2, z1, z2, lambda_inv)
    mu = (m + d) / 2
    assert terms["mec"].item() == pytest.approx(mu * mec, rel=1e-12)
    assert loss.item() == pytest.approx(expected if loss_scaling == "code" else -mu * mec, rel=1e-12)
    # the cross pairing matters: swapping the teacher views changes the value
    assert mec_loss(p2, p1, z1, z2, lambda_inv).item() != pytest.approx(expected, rel=1e-6)


def test_bf16_autocast_runs_in_float32_close_to_float32():
    m, d = 32, 64
    p1, p2, z1, z2 = (randn(m, d, seed=s, dtype=torch.float32) for s in (15, 16, 17, 18))
    lambda_inv = 1.0 / mec_lambda(d, m, eps_sq=64.0)
    ref = mec_loss(p1, p2, z1, z2, lambda_inv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mec_loss(*(x.bfloat16() for x in (p1, p2, z1, z2)), lambda_inv)
    assert got.dtype == torch.float32
    # only the bf16 rounding of the inputs (relative 2^-8 per entry) differs
    assert abs(got.item() - ref.item()) < 2e-2 * abs(ref.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_collapsed_embeddings_and_batch_of_two_are_finite(dtype):
    d = 2048
    collapsed = randn(1, d, seed=19, dtype=dtype).repeat(16, 1).requires_grad_(True)
    # worst case of the schedule: lambda_inv = 1 / lambda, so C = 1 1^T d / (m eps^2), ||C|| = 32
    lambda_inv = 1.0 / mec_lambda(d, 16)
    pair = randn(2, d, seed=20, dtype=dtype).requires_grad_(True), randn(2, d, seed=21, dtype=dtype)
    for z, p in ((collapsed, collapsed.detach()), pair):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = mec_loss(p, p, z, z, lambda_inv)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="same shape"):
        mec_taylor_logdet(randn(4, 3), randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="lambda_inv > 0"):
        mec_taylor_logdet(randn(4, 3), randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="loss_scaling"):
        MECLoss(loss_scaling="mu")


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, tensors, lambda_inv):
    b = tensors[0].shape[0] // world
    p1, p2, z1, z2 = (x[rank * b:(rank + 1) * b].clone() for x in tensors)
    result = {}
    for gather in (True, False):
        zs = [z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)]
        loss = mec_loss(p1, p2, *zs, lambda_inv, gather_distributed=gather)
        result[gather] = [g.clone() for g in torch.autograd.grad(loss, zs)]
    return result


def test_gather_distributed_matches_single_process_global_batch():
    world, b, d, lambda_inv = 2, 5, 7, 2.5
    tensors = [randn(world * b, d, seed=30 + s) for s in range(4)]
    glob = [tensors[2].clone().requires_grad_(True), tensors[3].clone().requires_grad_(True)]
    expected = torch.autograd.grad(mec_loss(tensors[0], tensors[1], *glob, lambda_inv), glob)
    out = run_in_processes(_ddp_worker, tensors, lambda_inv, world=world)
    for v in range(2):
        # gathered: DDP averages over processes, so each row's effective gradient is local / world
        got = torch.cat([out[r][True][v] / world for r in range(world)])
        assert ((got - expected[v]).norm() / expected[v].norm()).item() < 1e-10
        # not gathered: every process optimises the loss of its own batch (m = b)
        for r in range(world):
            sl = slice(r * b, (r + 1) * b)
            local = [tensors[2][sl].clone().requires_grad_(True), tensors[3][sl].clone().requires_grad_(True)]
            ref = torch.autograd.grad(mec_loss(tensors[0][sl], tensors[1][sl], *local, lambda_inv), local)
            assert ((out[r][False][v] - ref[v]).norm() / ref[v].norm()).item() < 1e-10


# ---------------------------------------------------------------------------------------------- module
def test_lambda_inv_schedule_is_the_official_linspace():
    lambda_inv, warmup = 32.0, 7
    expected = np.concatenate([np.linspace(8 * lambda_inv, lambda_inv, warmup), np.full(3, lambda_inv)])
    got = [lambda_inv_schedule(t, warmup, lambda_inv, 8.0) for t in range(warmup + 3)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert lambda_inv_schedule(0, 0, lambda_inv) == lambda_inv
    assert 1.0 / mec_lambda(2048, 1024, 64.0) == 32.0  # the official ImageNet setting


class _Views(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.x = randn(n, 2, 3, 32, 32, seed=40, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return [self.x[i, 0], self.x[i, 1]], -1


class _RecordingMEC(MEC):
    def compute_loss(self, views):
        loss, terms, features = super().compute_loss(views)
        self.record.append((self.global_step, float(terms["lambda_inv"]), float(loss)))
        return loss, terms, features


def test_mec_module_trains_with_lambda_warmup_and_ema_teacher():
    torch.manual_seed(0)
    batch, d = 8, 16
    model = _RecordingMEC(
        backbone="resnet18", proj_hidden_dim=32, proj_output_dim=d, pred_hidden_dim=8, batch_size=batch,
        lambda_warmup_epochs=1, warmup_epochs=1, lr=0.05,
    )
    model.record = []
    teacher_before = [p.detach().clone() for p in model.teacher_projector.parameters()]
    loader = torch.utils.data.DataLoader(_Views(4 * batch), batch_size=batch, drop_last=True)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1,
    )
    trainer.fit(model, loader)
    steps, lambda_invs, losses = zip(*model.record)
    assert steps == tuple(range(8))
    # lambda = d / (m eps^2) = 16 / (8 * 64) = 1/32; warm-up over 1 of 2 epochs = 4 of 8 steps
    expected = np.concatenate([np.linspace(8 * 32.0, 32.0, 4), np.full(4, 32.0)])
    np.testing.assert_allclose(lambda_invs, expected, rtol=1e-6)
    assert all(math.isfinite(x) for x in losses) and len(set(losses)) == len(losses)
    changed = [not torch.equal(a, b) for a, b in zip(teacher_before, model.teacher_projector.parameters())]
    assert all(changed)
    assert not any(p.requires_grad for p in model.teacher_backbone.parameters())
    assert trainer.logged_metrics["train/ema_momentum"].item() == pytest.approx(cosine_momentum(7, 8), rel=1e-6)
    assert trainer.logged_metrics["train/lambda_inv"].item() == pytest.approx(32.0)
    assert {"train/loss", "train/mec"} <= set(trainer.logged_metrics)


def test_mec_module_rejects_wrong_view_count():
    model = MEC(backbone="resnet18", proj_hidden_dim=16, proj_output_dim=8, pred_hidden_dim=4)
    with pytest.raises(ValueError, match="needs 2 views"):
        model._check_views([torch.zeros(2, 3, 32, 32)] * 3)
