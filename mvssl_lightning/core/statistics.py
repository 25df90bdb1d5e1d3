"""Representation statistics of an embedding, and the one definition of a collapsed representation.

Read by :class:`mvssl_lightning.callbacks.RepresentationDiagnostics` (every statistic, logged as
``diag/<space>/<statistic>``), :class:`mvssl_lightning.callbacks.TrainingHealth` (``std_sqrt_d`` of the
training batch) and ``benchmarks/quality`` (the collapse check). On an embedding ``Z (n, d)``, with
``u_i = z_i / ||z_i||`` the L2-normalised rows, all computed in float64 unless said otherwise:

**Effective rank** (RankMe; Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream
performance of pretrained self-supervised representations by their rank", ICML 2023, eq. 1), from the
singular values ``s_1 >= ... >= s_r`` (``r = min(n, d)``) of the (unnormalised) embedding matrix::

    p_k = s_k / sum_j s_j + eps,      RankMe(Z) = exp(-sum_k p_k log p_k),      eps = 1e-7

``~ d`` for an isotropic embedding with ``n >> d``, ``k`` for ``k`` equal non-zero singular values,
``~ 1`` when every row is the same vector.

**Spread** (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, §4.1; lightly's
``std_of_l2_normalized``): ``sigma_j = std_i(u_ij)`` (unbiased, as ``torch.std``), reported as
``std_mean = mean_j sigma_j``, ``std_min = min_j sigma_j``, ``std_sqrt_d = sqrt(d) std_mean`` (about 1
for an isotropic embedding, 0 for a collapsed one) and ``dead_fraction``: the fraction of dimensions
with ``sqrt(d) sigma_j < dead_threshold`` (default :data:`DEAD_THRESHOLD` = 0.01: less than 1 % of the
isotropic spread).

**Alignment and uniformity** (Wang & Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020, eqs. 4-5; alpha = 2, t = 2)::

    alignment  = E_i ||u(x_i) - u(y_i)||^2                 (x_i, y_i: two augmented views of image i)
    uniformity = log E_{i<j} exp(-2 ||u_i - u_j||^2)         (all distinct pairs of the embedding)

**Entropy estimates** of the normalised embedding ``U (n, d)``:

* ``er_entropy``: ER's von Mises-Fisher kernel density estimate (Rodríguez-Gálvez et al., "The Role of
  Entropy and Reconstruction in Multi-View Self-Supervised Learning", ICML 2023; the official
  estimator, :func:`mvssl_lightning.losses.er_sphere_entropy`)::

      nlp_i = -log((1/n) sum_j C_d(kappa) exp(kappa u_i.u_j)),   H = sum_i softmax(-nlp)_i nlp_i

  with ``C_d(kappa) = kappa^(d/2-1) / ((2 pi)^(d/2) I_{d/2-1}(kappa))`` and ``kappa = 10`` (the ER
  methods' default), in nats. No distribution on the sphere has more entropy than the uniform one,
  ``log |S^{d-1}| = log(2 pi^(d/2) / Gamma(d/2))`` (-127 nats at ``d = 128``, -868 at ``d = 512``),
  so the values are very negative in high dimensions: follow their trend, not their sign;
* ``mec_coding_length``: MEC's coding length (Liu, Wang, Li, Wang, "Self-Supervised Learning via
  Maximum Entropy Coding", NeurIPS 2022, eq. 2), per sample::

      L = mu log det(I_d + lambda U^T U) / n,     mu = (n + d) / 2,    lambda = d / (n eps^2)

  with ``eps^2 = 64`` (MEC's default; :func:`mvssl_lightning.losses.mec.mec_lambda`), computed exactly
  with ``torch.linalg.slogdet`` on the smaller of ``I_d + lambda U^T U`` and ``I_n + lambda U U^T``
  (Sylvester's identity: same determinant), in nats per sample, the unit of MEC's logged ``train/mec``
  (which is this quantity on the training batch, from the 4th-order Taylor series of the cross-view
  product). Both depend on ``n``: compare them across epochs of a run, not across sample sizes.

**Collapse** (:func:`is_collapsed`): an effective rank below :data:`COLLAPSE_RANK` (2: about one
direction) or ``std_sqrt_d`` below :data:`COLLAPSE_STD` (0.05: 20 times less spread than isotropic).
These constants are the library's only definition of the thresholds: the defaults of
``RepresentationDiagnostics(collapse_rank=, collapse_std=, dead_threshold=)`` and
``TrainingHealth(min_feature_std=)``, and ``benchmarks/quality``'s collapse check.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mvssl_lightning.losses.er import Reduction, er_sphere_entropy
from mvssl_lightning.losses.mec import mec_lambda

__all__ = [
    "COLLAPSE_RANK",
    "COLLAPSE_STD",
    "DEAD_THRESHOLD",
    "RANKME_EPS",
    "alignment",
    "dimension_std",
    "embedding_statistics",
    "embedding_statistics_and_spectra",
    "is_collapsed",
    "mec_coding_length",
    "rankme",
    "rankme_from_singular_values",
    "uniformity",
    "unit_rows",
]

#: ``eps`` added to the normalised singular values in RankMe (Garrido et al. 2023).
RANKME_EPS = 1e-7
#: Below this effective rank (RankMe) a representation counts as collapsed: about one direction.
COLLAPSE_RANK = 2.0
#: Below this ``std_sqrt_d`` a representation counts as collapsed: 20 times less spread than isotropic.
COLLAPSE_STD = 0.05
#: A dimension with ``sqrt(d) sigma_j`` below this is dead: less than 1 % of the isotropic spread.
DEAD_THRESHOLD = 0.01


def is_collapsed(
    rank: float, std_sqrt_d: float, collapse_rank: float = COLLAPSE_RANK, collapse_std: float = COLLAPSE_STD
) -> bool:
    """``rank < collapse_rank or std_sqrt_d < collapse_std`` (the module docstring's collapse)."""
    return rank < collapse_rank or std_sqrt_d < collapse_std


def unit_rows(z: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """The L2-normalised rows of ``z`` flattened to ``(n, d)``, detached, in ``dtype``."""
    return F.normalize(z.detach().to(dtype).flatten(start_dim=1), dim=1)


def rankme(z: Tensor, eps: float = RANKME_EPS) -> Tensor:
    """RankMe ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum s + eps``, of the singular values ``s`` of
    ``z (n, d)`` (Garrido et al. 2023), in float64. 1.0 for an all-zero matrix."""
    return rankme_from_singular_values(torch.linalg.svdvals(z.detach().double().flatten(start_dim=1)), eps)


def rankme_from_singular_values(s: Tensor, eps: float = RANKME_EPS) -> Tensor:
    """RankMe of the singular values ``s (r,)``; 1.0 when they are all zero."""
    total = s.sum()
    if not bool(total > 0):
        return s.new_ones(())
    p = s / total + eps
    return torch.exp(-(p * torch.log(p)).sum())


def dimension_std(z: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Per-dimension standard deviation ``(d,)`` (unbiased) of the L2-normalised rows of ``z (n >= 2, d)``,
    in ``dtype`` (float64 by default; Chen & He 2021; lightly's ``std_of_l2_normalized`` is its mean)."""
    if z.shape[0] < 2:
        raise ValueError(f"dimension_std needs at least 2 rows, got {z.shape[0]}")
    return unit_rows(z, dtype).std(dim=0)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """``E_i ||u(z1_i) - u(z2_i)||^alpha`` of the L2-normalised rows (Wang & Isola 2020), in float64."""
    if z1.shape != z2.shape:
        raise ValueError(f"alignment needs two embeddings of the same shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    return (unit_rows(z1) - unit_rows(z2)).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(-t ||u_i - u_j||^2)`` over the distinct pairs of the L2-normalised rows of
    ``z (n >= 2, d)`` (Wang & Isola 2020), in float64 (a log-sum-exp, stable for any ``t``)."""
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {n}")
    u = unit_rows(z)
    sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # ||u_i - u_j||^2 for unit rows
    logits = (-t * sq).masked_fill(torch.eye(n, dtype=torch.bool, device=u.device), -math.inf)
    # the ordered pairs i != j count every distinct pair twice: the mean is the same
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


def mec_coding_length(z: Tensor, eps_sq: float = 64.0) -> Tensor:
    """MEC's coding length per sample, ``mu log det(I_d + lambda U^T U) / n`` with ``U`` the
    L2-normalised rows of ``z (n, d)``, ``mu = (n + d) / 2`` and ``lambda = d / (n eps^2)`` (Liu et al.
    2022, eq. 2), exactly (``torch.linalg.slogdet`` in float64 on the smaller Gram matrix)."""
    u = unit_rows(z)
    n, d = u.shape
    lam = mec_lambda(d, n, eps_sq)
    gram = u @ u.T if n <= d else u.T @ u
    sign, logabsdet = torch.linalg.slogdet(torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) + lam * gram)
    if not bool(sign > 0):  # I + lambda G is positive definite; only round-off could break this
        raise FloatingPointError("mec_coding_length: I + lambda Z^T Z is not positive definite")
    return (n + d) / 2 * logabsdet / n


def embedding_statistics(
    z: Tensor,
    views: Optional[tuple[Tensor, Tensor]] = None,
    dead_threshold: float = DEAD_THRESHOLD,
    kappa: float = 10.0,
    er_reduction: Reduction = "expectation",
    mec_eps_sq: float = 64.0,
) -> dict[str, float]:
    """Every statistic of the module docstring for one embedding ``z (n >= 2, d >= 2)`` (and the two
    views' embeddings ``(n, d)`` for alignment), as Python floats."""
    return embedding_statistics_and_spectra(z, views, dead_threshold, kappa, er_reduction, mec_eps_sq)[0]


def embedding_statistics_and_spectra(
    z: Tensor,
    views: Optional[tuple[Tensor, Tensor]] = None,
    dead_threshold: float = DEAD_THRESHOLD,
    kappa: float = 10.0,
    er_reduction: Reduction = "expectation",
    mec_eps_sq: float = 64.0,
) -> tuple[dict[str, float], Tensor, Tensor]:
    """``(statistics, singular values s (r,), sqrt(d) sigma_j (d,))``: :func:`embedding_statistics` and the
    two vectors the diagnostics' pictures draw (float64)."""
    z = z.detach().double().flatten(start_dim=1)
    n, d = z.shape
    if n < 2 or d < 2:
        raise ValueError(f"the diagnostics need an embedding with n >= 2 rows and d >= 2 dims, got {tuple(z.shape)}")
    s = torch.linalg.svdvals(z)
    scaled_std = dimension_std(z) * math.sqrt(d)
    u = unit_rows(z)
    stats = {
        "rankme": float(rankme_from_singular_values(s)),
        "std_mean": float(scaled_std.mean()) / math.sqrt(d),
        "std_min": float(scaled_std.min()) / math.sqrt(d),
        "std_sqrt_d": float(scaled_std.mean()),
        "dead_fraction": float((scaled_std < dead_threshold).double().mean()),
        "uniformity": float(uniformity(u)),
        "er_entropy": float(er_sphere_entropy(u, kappa, er_reduction)),
        "mec_coding_length": float(mec_coding_length(u, mec_eps_sq)),
    }
    if views is not None:
        stats["alignment"] = float(alignment(*views))
    return stats, s, scaled_std
