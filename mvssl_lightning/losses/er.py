"""ER: entropy and reconstruction estimators (Rodríguez-Gálvez et al., "The Role of Entropy and
Reconstruction in Multi-View Self-Supervised Learning", ICML 2023, arXiv 2307.10907).

The ER bound on the mutual information between the projections of two views is

    I(Z1; Z2) >= H(Z2) + E[log q(Z2 | Z1)],

so an ER method minimises ``reconstruction - entropy``.  This module holds the four estimators of the
official code (``apple/ml-entropy-reconstruction`` @ f523f11, ``entropy_reconstruction.py``, functions
``entropy`` and ``reconstruction``), computed the same way:

Sphere (unit rows ``z`` of dimension ``d``, von Mises-Fisher kernel of concentration ``kappa``)::

    vMF density       q(x | mu) = C_d(kappa) exp(kappa mu.x),   C_d(k) = k^(d/2-1) / ((2 pi)^(d/2) I_{d/2-1}(k))
    KDE               nlp_i = -log( (1/N) sum_j C_d exp(kappa z_i.z_j) )          (self term j = i kept)
                            = -logsumexp_j(kappa z_i.z_j) + log N - log C_d(kappa)
    "expectation"     H = sum_i softmax(-nlp)_i nlp_i     (plug-in: points weighted by their KDE density)
    "average"         H = mean_i nlp_i                    ("Joe's estimator", paper §4.1 per the code)
    reconstruction    R = mean_b[-kappa z1_b.z2_b] - log C_d(kappa)                (vMF centred at z1)

Discrete (rows of probabilities ``p (B, K)``, ``pbar = mean_b p_b``, ``eps = 1e-7``)::

    "expectation"     H = -sum_c pbar_c log(pbar_c + eps)
    "average"         H = -mean_c log(pbar_c + eps)
    reconstruction    R = mean_b (1/2)[-sum_c p1 log(p2 + eps) - sum_c p2 log(p1 + eps)]

**The normalising constant.**  The official code uses ``log(scipy.special.iv(d/2-1, kappa) + 1e-7)``.
The ``+1e-7`` dominates when ``I`` is small: at ``d = 128, kappa = 10``, ``I_63(10) ~ 8e-44`` and the
constant is ~83 nats too high; ``iv`` underflows to 0 at ``d >= ~1000`` and overflows to ``inf`` for
``kappa >~ 713``.  By default we compute ``log C_d(kappa)`` exactly (:func:`log_bessel_iv`, float64,
accurate to ~1e-13 relative for any ``d >= 2`` and ``kappa > 0``); ``official_constant=True``
reproduces the official value, ``inf`` included.  The constant does not depend on ``z``: it is added
as a Python float after the ``z``-dependent part, so the gradients are bit-identical either way (also
when the official constant is ``inf``; the official code then returns ``inf`` for "average" and
``nan`` for "expectation", whose softmax sees ``-inf``; we return ``inf`` for both).

**Distributed.**  The official code has no distributed logic (default ``gather_distributed=False``:
the entropy uses the per-process batch).  With ``gather_distributed=True`` the entropies gather the
rows of every process with gradients (:func:`gather_with_grad`), so under DDP the update equals the
single-process update on the global batch.  The reconstructions are batch means of per-sample terms,
which DDP's gradient averaging already makes exact; they need no gathering.

All estimators run in float32 (or float64 when given float64) with autocast disabled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.losses.special import float64_iv, log_bessel_iv

__all__ = [
    "ERDiscreteLoss",
    "ERPrototypeLoss",
    "ERSphereLoss",
    "cross_view_cross_entropy",
    "er_discrete_entropy",
    "er_discrete_reconstruction",
    "er_sphere_entropy",
    "er_sphere_reconstruction",
    "log_bessel_iv",
    "mean_of_terms",
    "vmf_log_normalizer",
]

EPS = 1e-7  # the official code's eps in the discrete estimators and in log(iv + 1e-7)
Reduction = Literal["expectation", "average"]
REDUCTIONS = ("expectation", "average")

@lru_cache(maxsize=256)
def vmf_log_normalizer(d: int, kappa: float, official: bool = False) -> float:
    """``log C_d(kappa)`` of the vMF density ``C_d(kappa) exp(kappa mu.x)`` on the sphere ``S^{d-1}``::

        log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log(2 pi) - log I_{d/2-1}(kappa)

    (e.g. ``C_3(kappa) = kappa / (4 pi sinh kappa)``).  The estimators add ``-log C_d``.
    ``official=True`` returns the official code's value, with ``log(I + 1e-7)`` in place of ``log I``
    (and ``-inf`` where ``iv`` overflows).
    """
    if int(d) != d or d < 2:
        raise ValueError(f"the vMF constant needs an integer dimension d >= 2, got {d}")
    if not (kappa > 0 and math.isfinite(kappa)):
        raise ValueError(f"kappa must be positive and finite, got {kappa}")
    v = 0.5 * d - 1.0
    log_i = math.log(float64_iv(v, kappa) + EPS) if official else log_bessel_iv(v, kappa)
    return v * math.log(kappa) - 0.5 * d * math.log(2.0 * math.pi) - log_i


# ----------------------------------------------------------------------------- estimators


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def er_sphere_entropy(
    z: Tensor,
    kappa: float = 10.0,
    reduction: Reduction = "expectation",
    official_constant: bool = False,
    gather_distributed: bool = False,
) -> Tensor:
    """vMF-KDE entropy of the unit rows of ``z (N, d)`` (module docstring; official ``entropy``,
    ``support="sphere"``).  Self term kept, as the official code (at large ``kappa`` the self term
    dominates the log-sum-exp and the gradient vanishes for well-spread points).

    Args:
        z: L2-normalised rows (not normalised here, as in the official code).
        kappa: vMF concentration of the kernel.
        reduction: ``"expectation"`` (plug-in, official default) or ``"average"``.
        official_constant: use the official ``log(iv + 1e-7)`` constant (value only).
        gather_distributed: estimate on the rows of all processes, with gradients.
    """
    _check_reduction(reduction)
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"er_sphere_entropy needs z of shape (N >= 1, d), got {tuple(z.shape)}")
    if gather_distributed:
        z = gather_with_grad(z)
    n, d = z.shape
    const = math.log(n) - vmf_log_normalizer(d, float(kappa), official_constant)
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = at_least_float32(z)
        lse = torch.logsumexp(kappa * (z @ z.T), dim=1)  # nlp_i = -lse_i + const
        if reduction == "average":
            value = -lse.mean()
        else:  # softmax(-nlp) = softmax(lse): the shift by const cancels
            value = -(torch.softmax(lse, dim=0) * lse).sum()
    return value + const


def er_sphere_reconstruction(z1: Tensor, z2: Tensor, kappa: float = 10.0, official_constant: bool = False) -> Tensor:
    """Negative vMF log-likelihood of ``z2`` given ``z1`` (mean direction), averaged over the batch:
    ``mean_b[-kappa z1_b.z2_b] - log C_d(kappa)`` (official ``reconstruction``, ``support="sphere"``).
    Symmetric in ``z1, z2``; put a stop-gradient on the target yourself."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"er_sphere_reconstruction needs two (B, d) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    const = -vmf_log_normalizer(z1.shape[1], float(kappa), official_constant)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        cos = (at_least_float32(z1) * at_least_float32(z2)).sum(dim=1)
        value = -kappa * cos.mean()
    return value + const


def er_discrete_entropy(
    p: Tensor, reduction: Reduction = "expectation", eps: float = EPS, gather_distributed: bool = False
) -> Tensor:
    """Entropy of the batch-mean distribution ``pbar = mean_b p_b`` of probability rows ``p (B, K)``:
    ``-sum_c pbar_c log(pbar_c + eps)`` ("expectation") or ``-mean_c log(pbar_c + eps)`` ("average")
    (official ``entropy``, ``support="discrete"``).  ``gather_distributed``: ``pbar`` over all
    processes' rows, with gradients."""
    _check_reduction(reduction)
    if p.ndim != 2:
        raise ValueError(f"er_discrete_entropy needs p of shape (B, K), got {tuple(p.shape)}")
    if gather_distributed:
        p = gather_with_grad(p)
    with torch.autocast(device_type=p.device.type, enabled=False):
        pbar = at_least_float32(p).mean(dim=0)
        log_pbar = torch.log(pbar + eps)
        return -(pbar * log_pbar).sum() if reduction == "expectation" else -log_pbar.mean()


def er_discrete_reconstruction(p1: Tensor, p2: Tensor, eps: float = EPS) -> Tensor:
    """Symmetrised cross-entropy ``mean_b (1/2)[-sum p1 log(p2 + eps) - sum p2 log(p1 + eps)]``
    (official ``reconstruction``, ``support="discrete"``)."""
    if p1.shape != p2.shape or p1.ndim != 2:
        raise ValueError(
            f"er_discrete_reconstruction needs two (B, K) tensors, got {tuple(p1.shape)}, {tuple(p2.shape)}"
        )
    with torch.autocast(device_type=p1.device.type, enabled=False):
        p1, p2 = at_least_float32(p1), at_least_float32(p2)
        rec = -(p1 * torch.log(p2 + eps)).sum(dim=1) - (p2 * torch.log(p1 + eps)).sum(dim=1)
        return 0.5 * rec.mean()


# ----------------------------------------------------------------------------- objectives of the ER methods


def _mean(values: Sequence[Tensor]) -> Tensor:
    """``sum(values) / len(values)``, summed left to right."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total / len(values)


def cross_view_cross_entropy(targets: Sequence[Tensor], log_probs: Sequence[Tensor]) -> Tensor:
    """``mean_{(i, v): v != i} mean_b [-sum_k q_i[b, k] log p_v[b, k]]``: every target view ``i``
    predicted from every *other* view ``v`` (DINO's loss, SwAV's swapped prediction).

    Args:
        targets: ``T`` probability rows ``q_i (B, K)``, no gradient (teacher outputs or Sinkhorn codes of
            the ``T`` global views, which are the first ``T`` of ``log_probs``' views).
        log_probs: ``V >= 2`` rows of log-probabilities ``log p_v (B, K)`` (student, every view).
    """
    return _mean([-(targets[i] * log_probs[v]).sum(dim=1).mean() for i, v in _cross_view_pairs(targets, log_probs)])


def _cross_view_pairs(targets: Sequence[Tensor], predictions: Sequence[Tensor]) -> list[tuple[int, int]]:
    """``(i, v)`` for every target view ``i`` and every *other* view ``v``; at least one."""
    pairs = [(i, v) for i in range(len(targets)) for v in range(len(predictions)) if v != i]
    if not pairs:
        raise ValueError(f"need at least two views, got {len(targets)} targets and {len(predictions)} predictions")
    return pairs


def mean_of_terms(results: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """Average ``(loss, terms)`` pairs, e.g. the two directions of a symmetrised objective."""
    return _mean([r[0] for r in results]), {k: _mean([r[1][k] for r in results]) for k in results[0][1]}


class ERSphereLoss(nn.Module):
    """``w_rec R - w_ent H`` on the sphere for one (prediction, target) pair (ER-SimCLR, ER-BYOL).

    ``forward(z1, z2, entropy_input=None)`` returns ``(loss, {"reconstruction", "entropy"})`` (terms
    detached) with ``R = er_sphere_reconstruction(z1, z2)`` and ``H = er_sphere_entropy(entropy_input
    or z1)``; symmetrise with :func:`mean_of_terms` over the two directions.
    """

    def __init__(
        self,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reduction: Reduction = "expectation",
        official_constant: bool = False,
        gather_distributed: bool = False,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.kappa = kappa
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.official_constant = official_constant
        self.gather_distributed = gather_distributed

    def entropy(self, z: Tensor) -> Tensor:
        return er_sphere_entropy(z, self.kappa, self.reduction, self.official_constant, self.gather_distributed)

    def reconstruction(self, z1: Tensor, z2: Tensor) -> Tensor:
        return er_sphere_reconstruction(z1, z2, self.kappa, self.official_constant)

    def forward(self, z1: Tensor, z2: Tensor, entropy_input: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.reconstruction(z1, z2)
        ent = self.entropy(z1 if entropy_input is None else entropy_input)
        loss = self.reconstruction_weight * rec - self.entropy_weight * ent
        return loss, {"reconstruction": rec.detach(), "entropy": ent.detach()}


class ERDiscreteLoss(nn.Module):
    """``R - lambda H`` for probability rows: ``R = er_discrete_reconstruction(p1, p2)``,
    ``H = er_discrete_entropy(entropy_input or p1)``; ``forward`` returns ``(loss, terms)``."""

    def __init__(
        self,
        entropy_weight: float = 1.0,
        reduction: Reduction = "expectation",
        eps: float = EPS,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.entropy_weight = entropy_weight
        self.reduction = reduction
        self.eps = eps
        self.gather_distributed = gather_distributed

    def entropy(self, p: Tensor) -> Tensor:
        return er_discrete_entropy(p, self.reduction, self.eps, self.gather_distributed)

    def reconstruction(self, p1: Tensor, p2: Tensor) -> Tensor:
        return er_discrete_reconstruction(p1, p2, self.eps)

    def forward(self, p1: Tensor, p2: Tensor, entropy_input: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.reconstruction(p1, p2)
        ent = self.entropy(p1 if entropy_input is None else entropy_input)
        return rec - self.entropy_weight * ent, {"reconstruction": rec.detach(), "entropy": ent.detach()}


class ERPrototypeLoss(nn.Module):
    """The ER objective over prototype assignments (ER-DINO, ER-SwAV)::

        R = cross_view_cross_entropy(q, log p)                    ("cross_entropy": DINO's / SwAV's loss)
          = mean_{(i, v): v != i} R_disc(p_v, q_i)                ("er": the official discrete reconstruction)
        H = mean_v H_disc(p_v)                                    (entropy of each view's batch-mean p)
        L = w_rec R - w_ent H

    ``forward(targets, log_probs)`` takes the ``T`` target rows ``q_i (B, K)`` (no gradient) and the
    ``V`` student log-probabilities ``log p_v (B, K)``, views in the same order (the ``T`` globals
    first), and returns ``(loss, {"reconstruction", "entropy"})`` (terms detached), in float32.
    """

    def __init__(
        self,
        reconstruction: Literal["cross_entropy", "er"] = "cross_entropy",
        entropy_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        reduction: Reduction = "expectation",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        if reconstruction not in ("cross_entropy", "er"):
            raise ValueError(f"reconstruction must be 'cross_entropy' or 'er', got {reconstruction!r}")
        self.reconstruction = reconstruction
        self.entropy_weight = entropy_weight
        self.reconstruction_weight = reconstruction_weight
        self.reduction = reduction
        self.gather_distributed = gather_distributed

    def forward(self, targets: Sequence[Tensor], log_probs: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=log_probs[0].device.type, enabled=False):
            targets = [at_least_float32(q) for q in targets]
            log_probs = [at_least_float32(lp) for lp in log_probs]
            probs = [lp.exp() for lp in log_probs]  # once per view, for both terms
            if self.reconstruction == "cross_entropy":
                rec = cross_view_cross_entropy(targets, log_probs)
            else:
                pairs = _cross_view_pairs(targets, probs)
                rec = _mean([er_discrete_reconstruction(probs[v], targets[i]) for i, v in pairs])
            ent = _mean(
                [er_discrete_entropy(p, self.reduction, gather_distributed=self.gather_distributed) for p in probs]
            )
        loss = self.reconstruction_weight * rec - self.entropy_weight * ent
        return loss, {"reconstruction": rec.detach(), "entropy": ent.detach()}
