"""ER estimators and methods against independent float64 references written from the formulas
(official ``apple/ml-entropy-reconstruction`` ``entropy_reconstruction.py``)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_in_processes

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.losses.er import (
    er_discrete_entropy,
    er_discrete_reconstruction,
    er_sphere_entropy,
    er_sphere_reconstruction,
    log_bessel_iv,
    vmf_log_normalizer,
)
from mvssl_lightning.methods import METHODS
from mvssl_lightning.methods.er import ERBYOL, ERDINO, ERSimCLR, ERSwAV

try:
    import mpmath
except ImportError:  # pragma: no cover
    mpmath = None

# ----------------------------------------------------------------------------- references


def series_log_iv(v: float, x: float, terms: int = 4000) -> float:
    """log I_v(x) from the power series, each term from lgamma, log-sum-exp in float64."""
    k = np.arange(terms, dtype=np.float64)
    lg = np.array([math.lgamma(i + 1.0) + math.lgamma(i + v + 1.0) for i in range(terms)])
    logs = (2 * k + v) * math.log(x / 2) - lg
    m = logs.max()
    return float(m + math.log(np.exp(logs - m).sum()))


def mp_log_iv(v: float, x: float) -> float:
    mpmath.mp.dps = 40
    return float(mpmath.log(mpmath.besseli(mpmath.mpf(v), mpmath.mpf(x))))


def ref_log_c(d: int, kappa: float, log_i: float) -> float:
    return (d / 2 - 1) * math.log(kappa) - d / 2 * math.log(2 * math.pi) - log_i


def ref_sphere_entropy(z: np.ndarray, kappa: float, reduction: str, log_c: float) -> float:
    """Explicit loops: nlp_i = -log((1/N) sum_j C exp(kappa z_i.z_j)), self term included."""
    n = z.shape[0]
    nlp = []
    for i in range(n):
        s = [kappa * float(z[i] @ z[j]) for j in range(n)]
        m = max(s)
        nlp.append(-(m + math.log(sum(math.exp(a - m) for a in s))) + math.log(n) - log_c)
    if reduction == "average":
        return sum(nlp) / n
    w = [math.exp(-a) for a in nlp]
    return sum(wi / sum(w) * a for wi, a in zip(w, nlp))


def ref_sphere_rec(z1: np.ndarray, z2: np.ndarray, kappa: float, log_c: float) -> float:
    return sum(-kappa * float(a @ b) - log_c for a, b in zip(z1, z2)) / len(z1)


def ref_discrete_entropy(p: np.ndarray, reduction: str, eps: float = 1e-7) -> float:
    b, k = p.shape
    pbar = [sum(p[i, c] for i in range(b)) / b for c in range(k)]
    if reduction == "expectation":
        return -sum(q * math.log(q + eps) for q in pbar)
    return -sum(math.log(q + eps) for q in pbar) / k


def ref_discrete_rec(p1: np.ndarray, p2: np.ndarray, eps: float = 1e-7) -> float:
    total = 0.0
    for a, b in zip(p1, p2):
        total += 0.5 * (-sum(x * math.log(y + eps) for x, y in zip(a, b)) - sum(y * math.log(x + eps) for x, y in zip(a, b)))
    return total / len(p1)


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def probs(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ----------------------------------------------------------------------------- the constant

GRID = [(2, 1e-3), (2, 10.0), (2, 1e5), (3, 0.5), (4, 713.0), (16, 5.0), (33, 10.0), (60, 30.0), (61, 1001.0),
        (128, 10.0), (128, 1e3), (257, 1e-3), (512, 64.0), (2048, 1000.0), (2048, 10.0), (4096, 1e5), (4096, 1e-3)]


@pytest.mark.skipif(mpmath is None, reason="mpmath not installed")
@pytest.mark.parametrize("d,kappa", GRID)
def test_log_normalizer_matches_mpmath(d, kappa):
    ref = ref_log_c(d, kappa, mp_log_iv(d / 2 - 1, kappa))
    got = vmf_log_normalizer(d, kappa)
    assert abs(got - ref) <= 1e-12 * max(1.0, abs(ref))


@pytest.mark.parametrize("d,kappa", [(128, 10.0), (2048, 1000.0), (64, 300.0), (5, 0.01)])
def test_log_bessel_matches_float64_series(d, kappa):
    ref = series_log_iv(d / 2 - 1, kappa)
    assert log_bessel_iv(d / 2 - 1, kappa) == pytest.approx(ref, rel=1e-11, abs=1e-11)


@pytest.mark.parametrize("kappa", [1e-3, 0.7, 10.0, 700.0, 1e4, 1e5])
def test_closed_forms_d2_and_d3(kappa):
    # d = 3: C_3 = kappa / (4 pi sinh kappa); log sinh k = k - log 2 + log1p(-exp(-2k))
    log_sinh = kappa - math.log(2) + math.log1p(-math.exp(-2 * kappa))
    assert vmf_log_normalizer(3, kappa) == pytest.approx(math.log(kappa) - math.log(4 * math.pi) - log_sinh, rel=1e-12, abs=1e-12)
    # d = 2: C_2 = 1 / (2 pi I_0(kappa)); log I_0 = log i0e + kappa
    log_i0 = math.log(float(torch.special.i0e(torch.tensor(kappa, dtype=torch.float64)))) + kappa
    assert vmf_log_normalizer(2, kappa) == pytest.approx(-math.log(2 * math.pi) - log_i0, rel=1e-12, abs=1e-12)


def test_official_constant_reproduces_log_iv_plus_eps():
    # d = 128, kappa = 10: I_63(10) ~ 8e-44, log(I + 1e-7) ~ log 1e-7: ~83 nats above the exact value
    shift = vmf_log_normalizer(128, 10.0) - vmf_log_normalizer(128, 10.0, official=True)
    log_i = series_log_iv(63, 10.0)
    assert shift == pytest.approx(math.log(1e-7) - log_i, rel=1e-12)
    assert 82 < shift < 84
    z = unit(16, 128, seed=1)
    for red in ("expectation", "average"):
        gap = er_sphere_entropy(z, 10.0, red, official_constant=True) - er_sphere_entropy(z, 10.0, red)
        assert float(gap) == pytest.approx(shift, rel=1e-12)
    # moderate d, kappa: the official value is log(I + 1e-7), I from the series
    i16 = math.exp(series_log_iv(7, 5.0))
    assert vmf_log_normalizer(16, 5.0, official=True) == pytest.approx(ref_log_c(16, 5.0, math.log(i16 + 1e-7)), rel=1e-13)
    # d = 2048: iv underflows to 0 in float64, the official log term is log(1e-7)
    assert vmf_log_normalizer(2048, 10.0, official=True) == pytest.approx(ref_log_c(2048, 10.0, math.log(1e-7)), rel=1e-14)
    # kappa > ~713: iv overflows (scipy and torch.special.i0 give inf), the constant is infinite
    for d in (2, 4, 10):
        assert vmf_log_normalizer(d, 800.0, official=True) == -math.inf
        assert math.isfinite(vmf_log_normalizer(d, 800.0))
    assert er_sphere_entropy(unit(4, 2), 800.0, official_constant=True).item() == math.inf


@pytest.mark.parametrize("kappa,d", [(10.0, 128), (800.0, 8), (2.0, 4096)])
def test_gradients_identical_with_either_constant(kappa, d):
    z1, z2 = unit(12, d, seed=2), unit(12, d, seed=3)
    for fn in (
        lambda a, b, c: er_sphere_entropy(a, kappa, "expectation", official_constant=c),
        lambda a, b, c: er_sphere_entropy(a, kappa, "average", official_constant=c),
        lambda a, b, c: er_sphere_reconstruction(a, b, kappa, official_constant=c),
    ):
        grads = []
        for official in (False, True):
            a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(fn(a, b, official), (a, b), allow_unused=True, materialize_grads=True))
        for g0, g1 in zip(*grads):
            assert torch.equal(g0, g1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="reduction"):
        er_sphere_entropy(unit(4, 3), reduction="mean")
    with pytest.raises(ValueError, match="kappa"):
        vmf_log_normalizer(8, 0.0)
    with pytest.raises(ValueError, match="d >= 2"):
        vmf_log_normalizer(1, 1.0)


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("reduction", ["expectation", "average"])
@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("n,d,kappa", [(7, 5, 10.0), (9, 128, 10.0), (6, 16, 0.5)])
def test_sphere_entropy_matches_bruteforce(reduction, official, n, d, kappa):
    z = unit(n, d, seed=n + d)
    log_i = series_log_iv(d / 2 - 1, kappa)
    log_c = ref_log_c(d, kappa, math.log(math.exp(log_i) + 1e-7) if official else log_i)
    ref = ref_sphere_entropy(z.numpy(), kappa, reduction, log_c)
    got = er_sphere_entropy(z, kappa, reduction, official_constant=official)
    assert got.dtype == torch.float64 and float(got) == pytest.approx(ref, rel=1e-11, abs=1e-11)


def test_sphere_reconstruction_matches_bruteforce():
    for d, kappa in ((5, 10.0), (128, 3.0)):
        z1, z2 = unit(8, d, seed=4), unit(8, d, seed=5)
        log_c = ref_log_c(d, kappa, series_log_iv(d / 2 - 1, kappa))
        assert float(er_sphere_reconstruction(z1, z2, kappa)) == pytest.approx(
            ref_sphere_rec(z1.numpy(), z2.numpy(), kappa, log_c), rel=1e-12)


@pytest.mark.parametrize("reduction", ["expectation", "average"])
def test_discrete_estimators_match_bruteforce(reduction):
    p1, p2 = probs(10, 7, seed=6), probs(10, 7, seed=7)
    p1[:, 0] = 0.0  # exercise the eps (a prototype nobody uses)
    p1 = p1 / p1.sum(1, keepdim=True)
    assert float(er_discrete_entropy(p1, reduction)) == pytest.approx(ref_discrete_entropy(p1.numpy(), reduction), rel=1e-12)
    assert float(er_discrete_reconstruction(p1, p2)) == pytest.approx(ref_discrete_rec(p1.numpy(), p2.numpy()), rel=1e-12)


def test_gradcheck_all_estimators():
    z1, z2 = unit(5, 4, seed=8).requires_grad_(True), unit(5, 4, seed=9).requires_grad_(True)
    p1, p2 = probs(5, 6, seed=10).requires_grad_(True), probs(5, 6, seed=11).requires_grad_(True)
    for red in ("expectation", "average"):
        assert torch.autograd.gradcheck(lambda z, red=red: er_sphere_entropy(z, 3.0, red), (z1,))
        assert torch.autograd.gradcheck(lambda p, red=red: er_discrete_entropy(p, red), (p1,))
    assert torch.autograd.gradcheck(lambda a, b: er_sphere_reconstruction(a, b, 3.0), (z1, z2))
    assert torch.autograd.gradcheck(er_discrete_reconstruction, (p1, p2))


def test_entropy_prefers_spread_points_and_runs_in_float32_under_autocast():
    spread = unit(64, 8, seed=12)
    cluster = F.normalize(unit(1, 8, seed=13) + 0.1 * unit(64, 8, seed=14), dim=1)
    for red in ("expectation", "average"):
        assert er_sphere_entropy(spread, 5.0, red) > er_sphere_entropy(cluster, 5.0, red)
    zb = spread.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = er_sphere_entropy(zb, 5.0)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(er_sphere_entropy(zb.double(), 5.0)), rel=1e-5)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, z, p):
    b = z.shape[0] // world
    zl = z[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    pl_ = p[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss = (er_sphere_entropy(zl, 4.0, "expectation", gather_distributed=True)
            + 0.3 * er_sphere_entropy(zl, 4.0, "average", gather_distributed=True)
            + er_discrete_entropy(pl_, gather_distributed=True))
    gz, gp = torch.autograd.grad(loss, (zl, pl_))
    return (gz / world, gp / world)  # DDP averages gradients over processes


def test_gather_distributed_matches_single_process_global_batch():
    world, b = 2, 6
    z, p = unit(world * b, 5, seed=15), probs(world * b, 4, seed=16)
    zg, pg = z.clone().requires_grad_(True), p.clone().requires_grad_(True)
    loss = er_sphere_entropy(zg, 4.0, "expectation") + 0.3 * er_sphere_entropy(zg, 4.0, "average") + er_discrete_entropy(pg)
    expected = torch.autograd.grad(loss, (zg, pg))
    out = run_in_processes(_ddp_worker, z, p, world=world)
    for i in range(2):
        got = torch.cat([out[r][i] for r in range(world)])
        assert (got - expected[i]).norm() / expected[i].norm() < 1e-10


# ----------------------------------------------------------------------------- methods

TINY = dict(backbone="resnet18", cifar_stem=False, optimizer="sgd", lr=0.05, warmup_epochs=0, lr_scaling="none")
#: the ER family of the registry: the methods of ``mvssl_lightning.methods.er`` (the others have no
#: reconstruction / entropy terms to check; their own test files train them)
ER_METHODS = {name: cls for name, cls in METHODS.items() if cls.__module__.startswith("mvssl_lightning.methods.er.")}
#: per registry name: tiny heads, view recipe, view kwargs; an ER method added to ``METHODS`` without an entry
#: fails ``test_every_registered_er_method_has_a_tiny_recipe``
ER_TINY = {
    "er_simclr": (dict(proj_hidden_dim=32, proj_output_dim=16), "two_views_cifar", {}),
    "er_byol": (dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32, base_momentum=0.9),
                "asymmetric_cifar", {}),
    "er_dino": (dict(head_hidden_dim=32, bottleneck_dim=16, output_dim=64, freeze_last_layer=0),
                "mveb_multicrop_cifar", {"n_local": 1}),
    "er_swav": (dict(proj_hidden_dim=32, proj_output_dim=16, n_prototypes=32), "mveb_multicrop_cifar",
                {"n_local": 1}),
}


def test_every_registered_er_method_has_a_tiny_recipe():
    assert {ERSimCLR, ERBYOL, ERDINO, ERSwAV} <= set(ER_METHODS.values())
    assert set(ER_TINY) == set(ER_METHODS), "add the new ER method's tiny heads and views to ER_TINY"


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(ER_METHODS))
def test_method_trains_with_probe_and_knn(name, tmp_path):
    cls, (args, views, view_kwargs) = ER_METHODS[name], ER_TINY[name]
    torch.manual_seed(0)
    model = cls(**TINY, **args)
    data = MultiViewDataModule("default", views=views, view_kwargs=view_kwargs, batch_size=4, num_workers=0,
                               train_subset=8, test_subset=8)
    recorder, probe, knn = LossRecorder(), OnlineLinearProbe(num_classes=10), OnlineKNN(k=5)
    teacher = getattr(model, "teacher_backbone", None)
    before = None if teacher is None else [t.detach().clone() for t in teacher.parameters()]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, callbacks=[recorder, probe, knn], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 and len(recorder.losses) == 2
    assert all(math.isfinite(v) for v in recorder.losses) and len(set(recorder.losses)) > 1
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/reconstruction", "train/entropy", "probe/val_top1", "knn/top1"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    if before is not None:  # the EMA teacher moved
        assert any(not torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def _views(n_views, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32 if v < 2 else 16, 32 if v < 2 else 16, generator=g) for v in range(n_views)]


@pytest.mark.usefixtures("one_thread")
def test_er_swav_reconstruction_is_lightly_swav_loss():
    from lightly.loss import SwaVLoss

    torch.manual_seed(0)
    model = ERSwAV(**TINY, **ER_TINY["er_swav"][0], entropy_weight=0.0)
    views = _views(4, b=4)
    loss, terms, _ = model.compute_loss(views)
    scores = [model.prototypes(F.normalize(model.projector(model.backbone(x)), dim=1)) for x in views]
    expected = SwaVLoss(sinkhorn_gather_distributed=False)(scores[:2], scores[2:])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["reconstruction"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_er_dino_reconstruction_and_centre_are_lightly_dino_loss():
    from lightly.loss import DINOLoss

    torch.manual_seed(0)
    model = ERDINO(**TINY, **ER_TINY["er_dino"][0], entropy_weight=0.0)
    views = _views(4, b=4)
    reference = DINOLoss(output_dim=64, warmup_teacher_temp=0.04, teacher_temp=0.04, student_temp=0.1)
    student = [model.head(model.backbone(x)) for x in views]
    with torch.no_grad():
        teacher = [model.teacher_head(model.teacher_backbone(x)) for x in views[:2]]
    expected = reference(teacher, student)
    loss, terms, _ = model.compute_loss(views)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(model.center.value, reference.center[0], rtol=1e-5, atol=1e-7)
    # the "er" reconstruction and the entropy term are the official discrete estimators
    model_er = ERDINO(**TINY, **ER_TINY["er_dino"][0], reconstruction="er", centering=False)
    model_er.load_state_dict(model.state_dict())
    _, terms_er, _ = model_er.compute_loss(views)
    p = [torch.softmax(s / 0.1, dim=1) for s in student]
    q = [torch.softmax(t / 0.04, dim=1) for t in teacher]
    rec = sum(er_discrete_reconstruction(p[v], q[i]) for i in range(2) for v in range(4) if v != i) / 6
    ent = sum(er_discrete_entropy(pv) for pv in p) / 4
    assert float(terms_er["reconstruction"]) == pytest.approx(float(rec), rel=1e-5)
    assert float(terms_er["entropy"]) == pytest.approx(float(ent), rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_er_simclr_and_byol_objectives():
    torch.manual_seed(0)
    model = ERSimCLR(**TINY, **ER_TINY["er_simclr"][0], kappa=5.0, entropy_weight=0.5)
    views = _views(2)
    loss, terms, feats = model.compute_loss(views)
    z = [F.normalize(model.projector(model.backbone(x)), dim=1).double() for x in views]
    rec = er_sphere_reconstruction(z[0], z[1], 5.0)
    ent = (er_sphere_entropy(z[0], 5.0) + er_sphere_entropy(z[1], 5.0)) / 2
    assert float(loss) == pytest.approx(float(rec - 0.5 * ent), rel=1e-5)
    assert feats.shape == (8, model.feat_dim)
    with pytest.raises(ValueError, match="needs 2 views"):
        model.training_step((_views(3), torch.zeros(8)), 0)
    byol = ERBYOL(**TINY, **ER_TINY["er_byol"][0], entropy_on="projection")
    _, terms, _ = byol.compute_loss(views)
    assert set(terms) == {"reconstruction", "entropy", "cosine"}
    assert not any(p.requires_grad for p in byol.teacher_backbone.parameters())


def test_module_wrappers_combine_the_functional_terms():
    from mvssl_lightning.losses.er import ERDiscreteLoss, ERSphereLoss

    z1, z2, e = unit(6, 8, seed=20), unit(6, 8, seed=21), unit(6, 8, seed=22)
    loss, terms = ERSphereLoss(kappa=4.0, entropy_weight=0.5)(z1, z2, entropy_input=e)
    expected = er_sphere_reconstruction(z1, z2, 4.0) - 0.5 * er_sphere_entropy(e, 4.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-14) and set(terms) == {"reconstruction", "entropy"}
    p1, p2 = probs(6, 5, seed=23), probs(6, 5, seed=24)
    loss, _ = ERDiscreteLoss(entropy_weight=2.0, reduction="average")(p1, p2)
    expected = er_discrete_reconstruction(p1, p2) - 2.0 * er_discrete_entropy(p1, "average")
    assert float(loss) == pytest.approx(float(expected), rel=1e-14)
