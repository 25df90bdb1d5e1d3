"""ER: entropy and reconstruction estimators (Rodríguez-Gálvez et al., "The Role of Entropy and
Reconstruction in Multi-View Self-Supervised Learning", ICML 2023, arXiv 2307.10907).

The ER bound on the mutual information between the projections of two views is

    I(Z1; Z2) >= H(Z2) + E[log q(Z2 | Z1)],

so an ER method minimises ``reconstruction - entropy``.  This module holds the four estimators of the
official code (``apple/ml-entropy-reconstruction`` @ f523f11, ``entropy_reconstruction.py``, functions
``entropy`` and ``reconstruction``; see ``shared/reference/methods.md`` §4), computed the same way:

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
from fractions import Fraction
from functools import lru_cache

import torch
from torch import Tensor, nn

from mvssl_lightning.losses.precision import at_least_float32
from mvssl_lightning.losses.distributed import gather_with_grad

__all__ = [
    "ERDiscreteLoss",
    "ERSphereLoss",
    "er_discrete_entropy",
    "er_discrete_reconstruction",
    "er_sphere_entropy",
    "er_sphere_reconstruction",
    "log_bessel_iv",
    "vmf_log_normalizer",
]

EPS = 1e-7  # the official code's eps in the discrete estimators and in log(iv + 1e-7)
REDUCTIONS = ("expectation", "average")

# ----------------------------------------------------------------------------- log I_v(x), float64

#: orders at or above this use the uniform (Debye) expansion directly
_DEBYE_MIN_ORDER = 30.0
#: below ``_DEBYE_MIN_ORDER``: power series up to this argument, Hankel's expansion above it
_SERIES_MAX_ARG = 1000.0
_DEBYE_TERMS = 13


def _debye_polynomials(n: int) -> list[list[float]]:
    """Coefficients (in ``t``, low order first) of Debye's ``u_0..u_{n-1}`` (DLMF 10.41.9-10).

    ``u_0 = 1``, ``u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2 + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds``,
    computed exactly with fractions, then rounded to float64.
    """
    polys = [[Fraction(1)]]
    for _ in range(n - 1):
        u = polys[-1]
        deriv = [j * c for j, c in enumerate(u)][1:]  # u'(t), low order first
        nxt = [Fraction(0)] * (len(u) + 3)
        for j, c in enumerate(deriv):  # t^2 (1 - t^2) u' / 2
            nxt[j + 2] += c / 2
            nxt[j + 4] -= c / 2
        for j, c in enumerate(u):  # (1/8) int_0^t (1 - 5 s^2) u(s) ds
            nxt[j + 1] += c / 8 / (j + 1)
            nxt[j + 3] -= 5 * c / 8 / (j + 3)
        polys.append(nxt)
    return [[float(c) for c in u] for u in polys]


_DEBYE_U = _debye_polynomials(_DEBYE_TERMS)


def _horner(coeffs: list[float], t: float) -> float:
    acc = 0.0
    for c in reversed(coeffs):
        acc = acc * t + c
    return acc


def _log_iv_debye(v: float, x: float) -> float:
    """Uniform asymptotic expansion for large order (DLMF 10.41.3), uniform in ``z = x / v``::

        I_v(v z) ~ exp(v eta) / (sqrt(2 pi v) (1 + z^2)^(1/4)) sum_k u_k(t) / v^k,
        t = 1 / sqrt(1 + z^2),  eta = sqrt(1 + z^2) + log(z / (1 + sqrt(1 + z^2))).

    With ``v >= 30`` and 13 terms the truncation error is below 1e-17 (the terms behave like
    ``k! / (2 pi v)^k``).
    """
    z = x / v
    root = math.sqrt(1.0 + z * z)
    t = 1.0 / root
    eta = root + math.log(z / (1.0 + root))
    total, scale = 0.0, 1.0
    for u in _DEBYE_U:
        total += _horner(u, t) * scale
        scale /= v
    return v * eta - 0.5 * math.log(2.0 * math.pi * v) - 0.5 * math.log(root) + math.log(total)


def _log_iv_series(v: float, x: float) -> float:
    """Power series ``I_v(x) = sum_k (x/2)^(2k+v) / (k! Gamma(k+v+1))`` in log space.

    All terms are positive (no cancellation); the log-terms are accumulated by their ratios and summed
    with a log-sum-exp (``math.fsum``), until past the peak and below ``e^-40`` of it.
    """
    h = math.log(0.5 * x)
    log_t = v * h - math.lgamma(v + 1.0)
    logs = [log_t]
    peak, k = log_t, 0
    while True:
        log_t += 2.0 * h - math.log(k + 1.0) - math.log(k + v + 1.0)
        k += 1
        logs.append(log_t)
        peak = max(peak, log_t)
        if log_t < peak - 40.0 and (0.5 * x) ** 2 < (k + 1.0) * (k + v + 1.0):
            break
    return peak + math.log(math.fsum(math.exp(lt - peak) for lt in logs))


def _log_iv_hankel(v: float, x: float) -> float:
    """Hankel's large-argument expansion (DLMF 10.40.1) for ``v < 30``, ``x > 1000``::

        I_v(x) ~ e^x / sqrt(2 pi x) sum_k (-1)^k a_k(v) / x^k,
        a_k(v) = prod_{j=1..k} (4 v^2 - (2j - 1)^2) / (k! 8^k).

    The term ratio is below ``4 v^2 / (8 k x) < 0.45 / k``; the ``e^-x`` branch is below 1e-400.
    """
    mu = 4.0 * v * v
    term, total, k = 1.0, 1.0, 0
    while abs(term) > 1e-18 * abs(total):
        k += 1
        term *= -(mu - (2 * k - 1) ** 2) / (8.0 * k * x)
        total += term
        if k > 60:  # unreachable for v < 30, x > 1000
            break
    return x - 0.5 * math.log(2.0 * math.pi * x) + math.log(total)


@lru_cache(maxsize=256)
def log_bessel_iv(v: float, x: float) -> float:
    """``log I_v(x)`` of the modified Bessel function of the first kind, in float64, for ``v >= 0``,
    ``x > 0``: exact to ~1e-13 relative (tested against mpmath for v up to 2047, x in [1e-3, 1e5]).

    Regions: ``v >= 30``: uniform asymptotic (Debye) expansion; ``v < 30``: the convergent power
    series for ``x <= 1000`` and Hankel's expansion above.  Never overflows or underflows.
    """
    v, x = float(v), float(x)
    if not (v >= 0.0 and x > 0.0 and math.isfinite(v) and math.isfinite(x)):
        raise ValueError(f"log_bessel_iv needs finite v >= 0 and x > 0, got v={v}, x={x}")
    if v >= _DEBYE_MIN_ORDER:
        return _log_iv_debye(v, x)
    if x <= _SERIES_MAX_ARG:
        return _log_iv_series(v, x)
    return _log_iv_hankel(v, x)


def _official_iv(v: float, x: float) -> float:
    """``scipy.special.iv(v, x)`` in float64 as the official code sees it: ``inf`` when ``I_v(x)``
    exceeds the float64 range (``x >~ 713`` for small ``v``) and 0 (or subnormal) when it underflows
    (e.g. ``d >~ 1000`` at ``kappa = 10``).  Orders 0 and 1 use ``torch.special.i0/i1``; other orders
    exponentiate the exact :func:`log_bessel_iv` (identical up to rounding).
    """
    if v in (0.0, 1.0):
        fn = torch.special.i0 if v == 0.0 else torch.special.i1
        return float(fn(torch.tensor(x, dtype=torch.float64)))
    log_i = log_bessel_iv(v, x)
    return math.exp(log_i) if log_i < math.log(torch.finfo(torch.float64).max) else math.inf


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
    log_i = math.log(_official_iv(v, kappa) + EPS) if official else log_bessel_iv(v, kappa)
    return v * math.log(kappa) - 0.5 * d * math.log(2.0 * math.pi) - log_i


# ----------------------------------------------------------------------------- estimators


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def er_sphere_entropy(
    z: Tensor,
    kappa: float = 10.0,
    reduction: str = "expectation",
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
    p: Tensor, reduction: str = "expectation", eps: float = EPS, gather_distributed: bool = False
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
        raise ValueError(f"er_discrete_reconstruction needs two (B, K) tensors, got {tuple(p1.shape)}, {tuple(p2.shape)}")
    with torch.autocast(device_type=p1.device.type, enabled=False):
        p1, p2 = at_least_float32(p1), at_least_float32(p2)
        rec = -(p1 * torch.log(p2 + eps)).sum(dim=1) - (p2 * torch.log(p1 + eps)).sum(dim=1)
        return 0.5 * rec.mean()


# ----------------------------------------------------------------------------- module wrappers


class ERSphereLoss(nn.Module):
    """``R - lambda H`` on the sphere for one (prediction, target) pair.

    ``forward(z1, z2, entropy_input=None)`` returns ``(loss, {"reconstruction", "entropy"})`` with
    ``R = er_sphere_reconstruction(z1, z2)`` and ``H = er_sphere_entropy(entropy_input or z1)``.
    Symmetrise by averaging the two directions (as :class:`mvssl_lightning.methods.er.ERSimCLR`).
    """

    def __init__(
        self,
        kappa: float = 10.0,
        entropy_weight: float = 1.0,
        reduction: str = "expectation",
        official_constant: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.kappa = kappa
        self.entropy_weight = entropy_weight
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
        return rec - self.entropy_weight * ent, {"reconstruction": rec.detach(), "entropy": ent.detach()}


class ERDiscreteLoss(nn.Module):
    """``R - lambda H`` for probability rows: ``R = er_discrete_reconstruction(p1, p2)``,
    ``H = er_discrete_entropy(entropy_input or p1)``; ``forward`` returns ``(loss, terms)``."""

    def __init__(
        self,
        entropy_weight: float = 1.0,
        reduction: str = "expectation",
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
