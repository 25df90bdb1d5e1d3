"""MEC: maximum entropy coding (Liu, Wang, Li, Wang, NeurIPS 2022, arXiv 2210.11464).

The paper (§3, eq. 3) maximises the coding length of a batch of ``m`` L2-normalised embeddings
``Z1, Z2 (d x m)`` of two views, with the cross-view product as the view-consistency prior::

    L = -mu * log det(I_m + lambda Z1^T Z2)
      ~ -mu * tr sum_{k=1..n} (-1)^(k+1) / k * (lambda Z1^T Z2)^k,     mu = (m + d) / 2,
                                                                        lambda = d / (m eps^2)

(the truncated Taylor series of ``log(I + C)``, convergent for ``||C||_2 < 1``).

What the official code computes (``xinliu20/MEC`` @ 35045dc, ``main_pretrain.py``, ``loss_func`` and
``train``), reproduced here::

    T(p, z) = tr sum_{k=1..order} (-1)^(k+1) C^k / k,   C = N(p) N(z)^T / lambda_inv   (m x m)
    mec     = (T(p1, z2) + T(p2, z1)) / (2 m)
    loss    = -lambda_inv * mec,                        lambda_inv = 1 / lambda

with ``N`` the row-wise L2 normalisation, ``p`` the teacher (EMA, no gradient) embeddings, ``z`` the
online predictor outputs, ``m`` the *global* batch (the code all-gathers ``p`` and ``z`` with
gradients).  Deviation of the code from eq. 3: ``mu`` is replaced by ``1 / (lambda m) = eps^2 / d``
(the loss is ``-T / (lambda m)``), a constant rescaling that interacts with the learning rate and,
during the ``lambda_inv`` warm-up, changes over time.  The code logs ``mec * mu`` (the per-sample
coding length of eq. 2) as "MEC"; :class:`MECLoss` returns that value as the ``mec`` term.

Efficiency: ``tr(C^k) = sum((C^a) * (C^b)^T)`` with ``a + b = k``, so order 4 needs one matrix
product (``C^2``) instead of three; and since ``tr((P Z^T)^k) = tr((Z^T P)^k)`` (cyclic trace), the
series runs on the ``min(m, d)``-sized Gram matrix.  It always runs in float32 (float64 inputs stay
float64), also under bf16/fp16 autocast.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.precision import at_least_float32

LossScaling = Literal["code", "paper_mu"]
LOSS_SCALINGS = ("code", "paper_mu")


def mec_lambda(dim: int, batch_size: int, eps_sq: float = 64.0) -> float:
    """``lambda = d / (m eps^2)`` (paper §2.1); ``eps_sq`` is the code's ``--eps`` (64), i.e. ``eps^2``."""
    return dim / (batch_size * eps_sq)


def _trace_power_series(c: Tensor, order: int) -> Tensor:
    """``tr sum_{k=1..order} (-1)^(k+1) C^k / k`` of a square ``C``, with ``ceil(order/2) - 1`` matmuls."""
    powers = [c]  # powers[i] = C^(i+1), up to C^ceil(order/2)
    for _ in range(math.ceil(order / 2) - 1):
        powers.append(powers[-1] @ c)
    total = c.new_zeros(())
    for k in range(1, order + 1):
        a, b = math.ceil(k / 2), k // 2
        trace_k = torch.diagonal(powers[a - 1]).sum() if b == 0 else (powers[a - 1] * powers[b - 1].T).sum()
        total = total + (trace_k if k % 2 == 1 else -trace_k) / k
    return total


def mec_taylor_logdet(p: Tensor, z: Tensor, lambda_inv: float, order: int = 4) -> Tensor:
    """``T(p, z) = tr sum_{k=1..order} (-1)^(k+1) C^k / k`` with ``C = N(p) N(z)^T / lambda_inv``.

    The ``order``-th Taylor truncation of ``tr log(I_m + C) = log det(I_m + C)`` (MEC eq. 3).  ``p`` and
    ``z`` are ``(m, d)``; rows are L2-normalised here.  Computed in float32 (or float64) even under
    autocast; no gathering (see :func:`mec_loss`).
    """
    if p.ndim != 2 or p.shape != z.shape or p.shape[0] < 1:
        raise ValueError(
            f"mec_taylor_logdet needs p and z of the same shape (m, d), got {tuple(p.shape)}, {tuple(z.shape)}"
        )
    if order < 1 or lambda_inv <= 0:
        raise ValueError(f"need order >= 1 and lambda_inv > 0, got {order}, {lambda_inv}")
    with torch.autocast(device_type=p.device.type, enabled=False):
        p, z = F.normalize(at_least_float32(p), dim=1), F.normalize(at_least_float32(z), dim=1)
        m, d = p.shape
        # tr((P Z^T)^k) = tr((Z^T P)^k): use the smaller of the two Gram matrices
        c = (p @ z.T if m <= d else z.T @ p) / lambda_inv
        return _trace_power_series(c, order)


def _mec_raw(
    p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, lambda_inv: float, order: int, gather_distributed: bool
) -> tuple[Tensor, int, int]:
    """``mec = (T(p1, z2) + T(p2, z1)) / (2 m)`` on the (gathered) batch, with ``m`` and ``d``."""
    if gather_distributed:
        p1, p2, z1, z2 = (gather_with_grad(x) for x in (p1, p2, z1, z2))
    m, d = z1.shape
    mec = (mec_taylor_logdet(p1, z2, lambda_inv, order) + mec_taylor_logdet(p2, z1, lambda_inv, order)) / (2 * m)
    return mec, m, d


def mec_loss(
    p1: Tensor,
    p2: Tensor,
    z1: Tensor,
    z2: Tensor,
    lambda_inv: float,
    order: int = 4,
    gather_distributed: bool = True,
) -> Tensor:
    """``-lambda_inv * (T(p1, z2) + T(p2, z1)) / (2 m)``, the official code's loss (module docstring).

    Args:
        p1, p2: teacher (EMA, no-gradient) embeddings ``(B, d)`` of views 1 and 2.
        z1, z2: online predictor outputs ``(B, d)`` of views 1 and 2.
        lambda_inv: ``1 / lambda`` (``m eps^2 / d`` after the warm-up).
        order: Taylor order (4).
        gather_distributed: all-gather ``p`` and ``z`` with gradients, so ``m`` is the global batch
            (default True, as the official code; exact under DDP's gradient averaging).
    """
    mec, _, _ = _mec_raw(p1, p2, z1, z2, lambda_inv, order, gather_distributed)
    return -lambda_inv * mec


class MECLoss(nn.Module):
    """Module wrapper of :func:`mec_loss`; ``forward(p1, p2, z1, z2, lambda_inv)`` returns ``(loss, terms)``.

    Args:
        order: Taylor order (4).
        gather_distributed: all-gather across processes with gradients (default True, official code).
        loss_scaling: ``"code"``: ``loss = -lambda_inv * mec`` (what the official code optimises);
            ``"paper_mu"``: ``loss = -mu * mec`` with ``mu = (m + d) / 2`` (eq. 3's factor, per sample,
            i.e. minus the logged coding length; ``(m + d) lambda / 2`` times the code's loss).

    ``terms["mec"]`` is ``mu * mec`` (detached), the per-sample coding length the official code logs.
    """

    def __init__(self, order: int = 4, gather_distributed: bool = True, loss_scaling: LossScaling = "code") -> None:
        super().__init__()
        if loss_scaling not in LOSS_SCALINGS:
            raise ValueError(f"loss_scaling must be one of {LOSS_SCALINGS}, got {loss_scaling!r}")
        self.order = order
        self.gather_distributed = gather_distributed
        self.loss_scaling = loss_scaling

    def forward(
        self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, lambda_inv: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        mec, m, d = _mec_raw(p1, p2, z1, z2, lambda_inv, self.order, self.gather_distributed)
        mu = (m + d) / 2
        loss = -(lambda_inv if self.loss_scaling == "code" else mu) * mec
        return loss, {"mec": (mu * mec).detach()}
