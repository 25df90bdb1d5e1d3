"""MVEB: multi-view entropy bottleneck (Wen et al., TPAMI 2024, arXiv 2403.19078).

Computes what the official code computes (``wlj6816/MVEB`` @ 9ac7965, ``project/pretrainer.py``
``loss_mveb`` and ``project/entropy.py``)::

    A = [ <z_0, t_2> + <z_1, t_1> + sum_{v>=2} <z_v, (t_1 + t_2) / 2> ] / V      (batch means)
    U = sum_v E(z_v) / V
    L = -A - lambda * U,          lambda = 0.01

``z_v`` are the unit-norm online embeddings of all ``V`` crops (2 globals first), ``t_1, t_2`` the
unit-norm EMA-target embeddings of the two globals (cross-paired; locals align to their
*unnormalised* mean).  ``E`` is a gradient surrogate of the differential entropy on the sphere:
its value has no meaning, its gradient w.r.t. ``z_i`` is ``-s(z_i) / N`` where ``s`` is the Stein
gradient estimate (Li & Turner, ICLR 2018; MVEB App. A) of the score ``grad log q(z)`` under a vMF
kernel ``k(a, b) = exp(a.b / tau)``:

    tau   = max(median_{i,j}(1 - z_i.z_j), 0.1)    (the floor(N^2/2)-th largest of all N^2 distances)
    K     = exp(Z Z^T / tau)
    G_i   = sum_j grad_{z_j} k(z_i, z_j) = (sum_j K_ij) z_i / tau
    s     = -(K + eta I)^{-1} G,        eta = 0.01

Paper vs code: the paper presents a Siamese objective; the code (followed here) aligns the online
views to an EMA target network without predictor.  The code inverts ``K + eta I``; we solve the
linear system instead (same value up to rounding, better conditioned), with ``torch.linalg.solve_ex``:
no host sync for the error check.  The estimator always runs in
float32, also under bf16/fp16 autocast.
"""

from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.precision import at_least_float32


@torch.no_grad()
def stein_score(z: Tensor, eta: float = 0.01, min_bandwidth: float = 0.1) -> Tensor:
    """Stein estimate ``s (N, D)`` of ``grad log q`` at the unit rows of ``z (N, D)`` (no gradient)."""
    n = z.shape[0]
    sim = z @ z.T
    distances = (1.0 - sim).flatten()
    k = (n * n) // 2  # the k-th largest distance, 1-indexed (official code: topk then last)
    bandwidth = torch.kthvalue(distances, n * n - k + 1).values.clamp_min(min_bandwidth)
    kernel = torch.exp(sim / bandwidth)
    grad_kernel = kernel.sum(dim=1, keepdim=True) * z / bandwidth
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    # solve_ex: the same LU solve without reading its error code on the host (no device sync); a singular
    # system gives non-finite scores, hence a non-finite loss, which the method's finite-loss check reports
    return -torch.linalg.solve_ex(kernel + eta * eye, grad_kernel).result


def mveb_entropy_surrogate(z: Tensor, eta: float = 0.01, min_bandwidth: float = 0.1) -> Tensor:
    """Scalar ``mean_i <-sg(s_i), z_i>`` whose gradient w.r.t. ``z (N, D)`` is ``-s / N``.

    ``z`` must be L2-normalised rows (the vMF kernel lives on the sphere).  Runs in float32 even under
    autocast; the returned scalar is float32.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"mveb_entropy_surrogate needs z of shape (N >= 2, D), got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = at_least_float32(z)
        score = stein_score(z.detach(), eta=eta, min_bandwidth=min_bandwidth)
        return (-score * z).sum(dim=1).mean()


def mveb_alignment(online: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """``A``: cross-paired globals, locals to the unnormalised mean target, averaged over ``V`` views."""
    if len(online) < 2 or len(targets) != 2:
        raise ValueError(
            f"MVEB needs at least 2 online views (2 globals first) and exactly 2 targets, "
            f"got {len(online)} views and {len(targets)} targets"
        )
    with torch.autocast(device_type=online[0].device.type, enabled=False):
        online = [at_least_float32(z) for z in online]
        t1, t2 = (at_least_float32(t) for t in targets)
        total = (online[0] * t2).sum(dim=1).mean() + (online[1] * t1).sum(dim=1).mean()
        mean_target = (t1 + t2) / 2
        for z in online[2:]:
            total = total + (z * mean_target).sum(dim=1).mean()
        return total / len(online)


def mveb_entropy(
    online: Sequence[Tensor],
    eta: float = 0.01,
    min_bandwidth: float = 0.1,
    gather_distributed: bool = False,
) -> Tensor:
    """``U = sum_v E(z_v) / V``; with ``gather_distributed`` each ``E`` uses the global batch."""
    total: Tensor | float = 0.0
    for z in online:
        if gather_distributed:
            z = gather_with_grad(z)
        total = total + mveb_entropy_surrogate(z, eta=eta, min_bandwidth=min_bandwidth)
    return cast(Tensor, total / len(online))


def mveb_terms(
    online: Sequence[Tensor],
    targets: Sequence[Tensor],
    lambd: float = 0.01,
    eta: float = 0.01,
    min_bandwidth: float = 0.1,
    gather_distributed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, A, U)`` with ``loss = -A - lambd * U`` (arguments as :func:`mveb_loss`)."""
    align = mveb_alignment(online, targets)
    entropy = mveb_entropy(online, eta, min_bandwidth, gather_distributed)
    return -align - lambd * entropy, align, entropy


def mveb_loss(
    online: Sequence[Tensor],
    targets: Sequence[Tensor],
    lambd: float = 0.01,
    eta: float = 0.01,
    min_bandwidth: float = 0.1,
    gather_distributed: bool = False,
) -> Tensor:
    """``-A - lambd * U`` (see module docstring).

    Args:
        online: ``V`` unit-norm ``(B, D)`` online embeddings, the 2 globals first.
        targets: the 2 unit-norm ``(B, D)`` EMA-target embeddings of the globals (no gradient).
        gather_distributed: estimate each view's score on the batch gathered from all processes
            (gradients flow back to each process's rows). Default False, as the official code, which
            uses the per-GPU batch.
    """
    return mveb_terms(online, targets, lambd, eta, min_bandwidth, gather_distributed)[0]


class MVEBLoss(nn.Module):
    """Module wrapper of :func:`mveb_loss`; ``forward`` returns ``(loss, {"align", "entropy_surrogate"})``."""

    def __init__(
        self,
        lambd: float = 0.01,
        eta: float = 0.01,
        min_bandwidth: float = 0.1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.lambd = lambd
        self.eta = eta
        self.min_bandwidth = min_bandwidth
        self.gather_distributed = gather_distributed

    def forward(self, online: Sequence[Tensor], targets: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, align, entropy = mveb_terms(
            online, targets, self.lambd, self.eta, self.min_bandwidth, self.gather_distributed
        )
        return loss, {"align": align.detach(), "entropy_surrogate": entropy.detach()}
