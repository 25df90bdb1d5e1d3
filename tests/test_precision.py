"""bf16 autocast vs float32 for every functional loss/estimator, and no NaN/inf on adversarial inputs.

Every objective promotes half-precision inputs to float32 and runs with autocast disabled, so under
``torch.autocast("cpu", dtype=torch.bfloat16)`` with bf16 inputs the only error should be the
rounding of the inputs to bf16.  For each function we compare

* ``f(x_bf16)`` under autocast with ``f(x_bf16.float())`` in float32 (same rounded inputs): tight
  tolerance ``rtol_same`` on the value, ``gtol_same`` on the input gradients (relative norm error;
  the gradient of a bf16 leaf is itself rounded to bf16, ~2^-9 relative);
* ``f(x_bf16)`` with ``f(x)`` in float32 on the unrounded inputs: looser ``rtol_exact`` /
  ``gtol_exact`` (the conditioning of each objective w.r.t. an input perturbation of ~2^-9).

The independent float64 references live in each loss's own test file; here float32 is the reference.
Then every function must give finite values and gradients, in float32 and under bf16 autocast, on
collapsed (all rows identical, all views identical), duplicated (second half of the batch copies the
first), batch-of-2 and, for probability inputs, one-hot and near-zero probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mvssl_lightning.losses import (
    amdim_loss,
    amdim_nce,
    er_discrete_entropy,
    er_discrete_reconstruction,
    er_sphere_entropy,
    er_sphere_reconstruction,
    infonce_queue_loss,
    mec_lambda,
    mec_loss,
    mec_taylor_logdet,
    mveb_entropy_surrogate,
    mveb_loss,
)

B, D = 8, 16  # default batch and embedding dimension
FLOAT_MODES = ("random", "collapsed", "duplicated", "batch2")
PROB_MODES = ("onehot", "near_zero")


class Draw:
    """Random inputs under an adversarial ``mode``; ``b`` is the batch size to build."""

    def __init__(self, mode: str, seed: int = 0) -> None:
        self.mode = mode
        self.b = 2 if mode == "batch2" else B
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape: Sequence[int]) -> Tensor:
        """``randn(shape)``; collapsed: every row (dim 0) is the same vector for every call with the
        same trailing shape (so all views collapse onto one point too); duplicated: rows
        ``[n//2:]`` copy rows ``[:n//2]``."""
        shape = tuple(shape)
        if self.mode == "collapsed":
            row = torch.randn(shape[1:], generator=torch.Generator().manual_seed(1234))
            return row.expand(shape).clone()
        x = torch.randn(shape, generator=self.gen)
        if self.mode == "duplicated":
            half = shape[0] // 2
            x[half : 2 * half] = x[:half]
        return x

    def unit(self, shape: Sequence[int], like: Tensor | None = None, noise: float = 0.5) -> Tensor:
        """Unit rows; ``like`` given: a positive of ``like`` (``N(like + noise * eps)``)."""
        x = self.normal(shape)
        if like is None or self.mode == "collapsed":  # collapsed: positives are the same point
            return F.normalize(x, dim=-1)
        return F.normalize(like + noise * x, dim=-1)

    def prob(self, shape: Sequence[int], like: Tensor | None = None) -> Tensor:
        """Probability rows (softmax); one-hot: exact 0/1 rows; near_zero: a sharp softmax, most
        entries below 1e-6 and the smallest ~1e-24 (none zero, all float32/bf16 normal numbers)."""
        if self.mode == "onehot":
            idx = torch.randint(0, shape[1], (shape[0],), generator=self.gen)
            return F.one_hot(idx, shape[1]).float()
        logits = self.normal(shape)
        if self.mode == "near_zero":
            return torch.softmax(15.0 * logits, dim=-1)
        return torch.softmax(logits if like is None else like.log() + 0.5 * logits, dim=-1)


# ----------------------------------------------------------------------------- input builders


def _mveb_inputs(d: Draw) -> list[Tensor]:
    online = [d.unit((d.b, D)) for _ in range(4)]  # 2 globals + 2 locals
    targets = [d.unit((d.b, D), like=online[1]), d.unit((d.b, D), like=online[0])]
    return online + targets


def _pair(d: Draw, m: int | None = None, dim: int = D) -> list[Tensor]:
    z1 = d.unit((m or d.b, dim))
    return [z1, d.unit((m or d.b, dim), like=z1)]


def _mec_inputs(d: Draw) -> list[Tensor]:
    m, dim = (16, 8) if d.b == B else (d.b, 8)  # m > d: the d x d Gram branch
    p1, z2 = _pair(d, m, dim)
    p2, z1 = _pair(d, m, dim)
    return [p1, p2, z1, z2]


def _mec_lambda_inv(x: Tensor) -> float:
    return 1.0 / mec_lambda(x.shape[1], x.shape[0])


def _prob_pair(d: Draw, k: int = 10) -> list[Tensor]:
    p1 = d.prob((d.b, k))
    return [p1, d.prob((d.b, k), like=p1)]


def _maps(d: Draw, c: int = 32) -> tuple[Tensor, Tensor]:
    """Un-normalised features ``(r1, r5, r7)`` of two views; view 2 is a noisy copy of view 1."""
    feats = []
    for _view in range(2):
        base = d.normal((d.b, c))
        r1 = base[:, :, None, None]
        r5 = base[:, :, None, None] + 0.5 * d.normal((d.b, c, 5, 5))
        r7 = base[:, :, None, None] + 0.5 * d.normal((d.b, c, 7, 7))
        feats.append((r1, r5, r7))
    (a1, a5, a7), (b1, b5, b7) = feats
    # correlate view 2 with view 1 so that positives score higher than negatives
    return [a1, a5, a7, a1 + 0.5 * b1, a5 + 0.5 * b5, a7 + 0.5 * b7]


def _amdim_nce_inputs(d: Draw) -> list[Tensor]:
    a1, _, _, _, _, b7 = _maps(d)
    return [a1.flatten(1), b7]


def _infonce_inputs(d: Draw) -> list[Tensor]:
    q = d.unit((d.b, D))
    return [q, d.unit((d.b, D), like=q), d.unit((32, D))]


def _amdim_loss(*x: Tensor) -> Tensor:
    b = x[0].shape[0]
    loc1 = torch.arange(b) % 25
    loc2 = (7 * torch.arange(b) + 3) % 25
    return amdim_loss(x[:3], x[3:], r5_loc1=loc1, r5_loc2=loc2, gather_distributed=False)


@dataclass(frozen=True)
class Case:
    make: Callable[[Draw], list[Tensor]]
    fn: Callable[..., Tensor]
    probs: bool = False  # probability inputs: also the one-hot / near-zero modes


CASES = {
    "mveb_entropy_surrogate": Case(lambda d: [d.unit((d.b, D))], mveb_entropy_surrogate),
    "mveb_loss": Case(_mveb_inputs, lambda *x: mveb_loss(list(x[:4]), list(x[4:]))),
    "mec_taylor_logdet": Case(lambda d: _pair(d), lambda p, z: mec_taylor_logdet(p, z, _mec_lambda_inv(p))),
    "mec_loss": Case(
        _mec_inputs, lambda *x: mec_loss(*x, lambda_inv=_mec_lambda_inv(x[0]), gather_distributed=False)
    ),
    "er_sphere_entropy_expectation": Case(
        lambda d: [d.unit((d.b, D))], lambda z: er_sphere_entropy(z, reduction="expectation")
    ),
    "er_sphere_entropy_average": Case(
        lambda d: [d.unit((d.b, D))], lambda z: er_sphere_entropy(z, reduction="average")
    ),
    "er_sphere_reconstruction": Case(lambda d: _pair(d), er_sphere_reconstruction),
    "er_discrete_entropy_expectation": Case(
        lambda d: [d.prob((d.b, 10))], lambda p: er_discrete_entropy(p, reduction="expectation"), probs=True
    ),
    "er_discrete_entropy_average": Case(
        lambda d: [d.prob((d.b, 10))], lambda p: er_discrete_entropy(p, reduction="average"), probs=True
    ),
    "er_discrete_reconstruction": Case(_prob_pair, er_discrete_reconstruction, probs=True),
    "amdim_nce": Case(_amdim_nce_inputs, lambda s, t: torch.stack(amdim_nce(s, t, gather_distributed=False))),
    "amdim_loss": Case(lambda d: _maps(d), _amdim_loss),
    "infonce_queue_loss": Case(_infonce_inputs, infonce_queue_loss),
}

# Relative (norm) errors of bf16 autocast vs float32: "same" = float32 on the same bf16-rounded
# inputs, "exact" = float32 on the unrounded inputs.  bf16's unit roundoff is u = 2^-8 ~ 3.9e-3.
#   rtol_same: every estimator upcasts and runs in float32, so the value is bit-identical: 1e-6.
#   gtol_same: the gradient of a bf16 leaf is the float32 gradient rounded to bf16 (<= u per
#     element), accumulated in bf16 where an input feeds two paths (AMDIM's r5/r7): 8e-3 = 2u.
#   rtol_exact / gtol_exact: conditioning w.r.t. input rounding (observed max over 20 seeds x ~3).
TOLERANCES = [  # name, rtol_same, rtol_exact, gtol_same, gtol_exact
    pytest.param("mveb_entropy_surrogate", 1e-6, 1e-3, 8e-3, 1e-2, id="mveb_entropy_surrogate"),
    pytest.param("mveb_loss", 1e-6, 1e-2, 8e-3, 1e-2, id="mveb_loss"),
    # what mveb_loss achieves today (bf16 alignment): guards against anything worse
    pytest.param("mec_taylor_logdet", 1e-6, 5e-3, 8e-3, 1e-2, id="mec_taylor_logdet"),
    pytest.param("mec_loss", 1e-6, 1e-3, 8e-3, 1e-2, id="mec_loss"),
    # "expectation" weights points by softmax(lse) and lse_i contains the self term kappa |z_i|^2:
    # rounding moves |z_i|^2 by up to 2u, i.e. lse_i by ~0.08 at kappa = 10, which re-weights the
    # points (the "same" comparison is exact: this is the estimator's sensitivity, not bf16 compute)
    pytest.param("er_sphere_entropy_expectation", 1e-6, 1e-2, 8e-3, 1e-1, id="er_sphere_entropy_expectation"),
    pytest.param("er_sphere_entropy_average", 1e-6, 1e-2, 8e-3, 1e-2, id="er_sphere_entropy_average"),
    # value = -kappa mean(cos) - log C_d(kappa) partly cancels (|value| ~ 0.3): relative error amplified
    pytest.param("er_sphere_reconstruction", 1e-6, 5e-2, 8e-3, 1e-2, id="er_sphere_reconstruction"),
    pytest.param("er_discrete_entropy_expectation", 1e-6, 1e-3, 8e-3, 1e-2, id="er_discrete_entropy_expectation"),
    pytest.param("er_discrete_entropy_average", 1e-6, 1e-3, 8e-3, 1e-2, id="er_discrete_entropy_average"),
    pytest.param("er_discrete_reconstruction", 1e-6, 1e-3, 8e-3, 1e-2, id="er_discrete_reconstruction"),
    pytest.param("amdim_nce", 1e-6, 3e-3, 8e-3, 1e-2, id="amdim_nce"),
    pytest.param("amdim_loss", 1e-6, 1e-3, 8e-3, 1e-2, id="amdim_loss"),
    pytest.param("infonce_queue_loss", 1e-6, 5e-3, 8e-3, 1e-2, id="infonce_queue_loss"),
]
assert {t.values[0] for t in TOLERANCES} == set(CASES)

# ----------------------------------------------------------------------------- helpers


def _evaluate(fn: Callable[..., Tensor], inputs: Sequence[Tensor], autocast: bool) -> tuple[Tensor, list]:
    """Value (detached) and input gradients (float32, None where no gradient flows) of ``fn``."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(*leaves)
    out.sum().backward()
    grads = [None if x.grad is None else x.grad.float() for x in leaves]
    return out.detach(), grads


def _rel(a: Tensor, b: Tensor) -> float:
    """Relative norm error ``|a - b| / |b|`` (``b`` float32; tiny floor for exact zeros)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _grad_errors(grads: list, ref: list) -> list[float]:
    assert [g is None for g in grads] == [g is None for g in ref]
    assert any(g is not None for g in ref), "no gradient reaches any input"
    return [_rel(g, r) for g, r in zip(grads, ref) if g is not None]


def _assert_finite(value: Tensor, grads: list, what: str) -> None:
    assert torch.isfinite(value).all(), f"{what}: non-finite value {value}"
    for i, g in enumerate(grads):
        if g is not None:
            assert torch.isfinite(g).all(), f"{what}: non-finite gradient w.r.t. input {i}"


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,rtol_same,rtol_exact,gtol_same,gtol_exact", TOLERANCES)
def test_bf16_autocast_matches_float32(name, rtol_same, rtol_exact, gtol_same, gtol_exact):
    case = CASES[name]
    exact = case.make(Draw("random", seed=1))
    bf16 = [x.bfloat16() for x in exact]
    rounded = [x.float() for x in bf16]

    value, grads = _evaluate(case.fn, bf16, autocast=True)
    assert value.dtype == torch.float32, f"{name} returns {value.dtype} under bf16 autocast"
    _assert_finite(value, grads, f"{name} bf16")

    value_same, grads_same = _evaluate(case.fn, rounded, autocast=False)
    value_exact, grads_exact = _evaluate(case.fn, exact, autocast=False)
    assert value_same.dtype == value_exact.dtype == torch.float32

    assert _rel(value, value_same) <= rtol_same, (value, value_same)
    assert _rel(value, value_exact) <= rtol_exact, (value, value_exact)
    assert max(_grad_errors(grads, grads_same)) <= gtol_same
    assert max(_grad_errors(grads, grads_exact)) <= gtol_exact


ADVERSARIAL = [
    pytest.param(name, mode, id=f"{name}-{mode}")
    for name, case in CASES.items()
    for mode in FLOAT_MODES[1:] + (PROB_MODES if case.probs else ())
]


# bf16 vs float32 on the same rounded adversarial inputs: value and gradient tolerances (absolute
# floor 1e-6 on the value: some collapsed values are ~0)
ADVERSARIAL_TOL = {name: (1e-6, 8e-3) for name in CASES}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name,mode", ADVERSARIAL)
def test_adversarial_inputs_stay_finite(name, mode, autocast):
    case = CASES[name]
    inputs = case.make(Draw(mode, seed=2))
    if autocast:
        inputs = [x.bfloat16() for x in inputs]
    value, grads = _evaluate(case.fn, inputs, autocast=autocast)
    assert value.dtype == torch.float32
    _assert_finite(value, grads, f"{name} {mode} {'bf16' if autocast else 'fp32'}")
    if autocast:  # and still only the input rounding
        ref, ref_grads = _evaluate(case.fn, [x.float() for x in inputs], autocast=False)
        rtol, gtol = ADVERSARIAL_TOL[name]
        assert float((value - ref).double().norm()) <= rtol * float(ref.double().norm()) + 1e-6, (value, ref)
        assert max(_grad_errors(grads, ref_grads)) <= gtol
