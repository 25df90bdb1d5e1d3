"""Tests of ``RepresentationDiagnostics`` and the ``mvssl-report`` command.

Every statistic is checked against an independent float64 computation (NumPy loops and
``numpy.linalg``) and against closed forms on inputs with known answers; the callback's logged values
against the same references on its seeded subset, also under 2 gloo processes; the report on a real
(tiny) MVEB run.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import random
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mvssl_lightning import MVEB, MultiViewDataModule, OnlineKNN, OnlineLinearProbe, RepresentationDiagnostics
from mvssl_lightning.callbacks.diagnostics import RepresentationCollapseWarning
from mvssl_lightning.core.statistics import (
    alignment,
    dimension_std,
    embedding_statistics,
    mec_coding_length,
    rankme,
    uniformity,
)
from mvssl_lightning.report import main as report_main
from mvssl_lightning.report import make_report

EPS = 1e-7  # RankMe's eps (Garrido et al. 2023)

# ----------------------------------------------------------------------------- float64 references


def np64(z) -> np.ndarray:
    return np.asarray(z.detach().double().numpy() if isinstance(z, torch.Tensor) else z, dtype=np.float64)


def ref_unit(z) -> np.ndarray:
    z = np64(z)
    return z / np.sqrt((z**2).sum(axis=1, keepdims=True))


def ref_rankme(z) -> float:
    s = np.linalg.svd(np64(z), compute_uv=False)
    p = s / s.sum() + EPS
    return math.exp(-float((p * np.log(p)).sum()))


def ref_rankme_closed_form(k: int, r: int) -> float:
    """RankMe of ``k`` equal non-zero singular values among ``r = min(n, d)``."""
    a = 1.0 / k + EPS
    return math.exp(-(k * a * math.log(a) + (r - k) * EPS * math.log(EPS)))


def ref_std(z) -> np.ndarray:
    return ref_unit(z).std(axis=0, ddof=1)


def ref_alignment(z1, z2) -> float:
    u1, u2 = ref_unit(z1), ref_unit(z2)
    return sum(float(((u1[i] - u2[i]) ** 2).sum()) for i in range(len(u1))) / len(u1)


def ref_uniformity(z) -> float:
    u = ref_unit(z)
    terms = [math.exp(-2.0 * float(((u[i] - u[j]) ** 2).sum())) for i in range(len(u)) for j in range(i + 1, len(u))]
    return math.log(sum(terms) / len(terms))


def ref_mec(z, eps_sq: float = 64.0) -> float:
    """``mu log det(I_d + lambda U^T U) / n`` on the d x d matrix (no Sylvester identity)."""
    u = ref_unit(z)
    n, d = u.shape
    lam = d / (n * eps_sq)
    sign, logdet = np.linalg.slogdet(np.eye(d) + lam * u.T @ u)
    assert sign > 0
    return (n + d) / 2 * logdet / n


def ref_log_bessel_i(v: int, kappa: float) -> float:
    """``log I_v(kappa)`` for integer ``v``: ``(1/pi) int_0^pi exp(kappa cos t) cos(v t) dt`` (trapezoid)."""
    t = np.linspace(0.0, math.pi, 200_001)
    f = np.exp(kappa * (np.cos(t) - 1.0)) * np.cos(v * t)  # scaled by exp(-kappa)
    h = t[1] - t[0]
    integral = h * (f.sum() - 0.5 * (f[0] + f[-1]))
    return kappa + math.log(integral / math.pi)


def ref_er_entropy(z, kappa: float = 10.0) -> float:
    """vMF-KDE entropy, plug-in ("expectation") reduction, for even d (integer Bessel order)."""
    u = ref_unit(z)
    n, d = u.shape
    assert d % 2 == 0
    log_c = (d / 2 - 1) * math.log(kappa) - d / 2 * math.log(2 * math.pi) - ref_log_bessel_i(d // 2 - 1, kappa)
    nlp = np.array([-math.log(sum(math.exp(log_c + kappa * float(u[i] @ u[j])) for j in range(n)) / n)
                    for i in range(n)])
    w = np.exp(-nlp - (-nlp).max())
    w /= w.sum()
    return float((w * nlp).sum())


def sphere(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


# ----------------------------------------------------------------------------- statistics


def test_isotropic_gaussian_on_the_sphere_is_spread_and_full_rank():
    n, d = 20_000, 16
    z = sphere(n, d, seed=0)
    std = dimension_std(z)
    np.testing.assert_allclose(std.numpy(), ref_std(z), rtol=1e-10)
    assert float(std.mean()) * math.sqrt(d) == pytest.approx(1.0, abs=0.02)
    r = float(rankme(z))
    assert r == pytest.approx(ref_rankme(z), rel=1e-10)
    assert d * 0.98 < r <= d


@pytest.mark.parametrize("n, d, k", [(64, 32, 5), (20, 50, 7), (40, 40, 1)])
def test_rankme_of_a_rank_k_embedding(n, d, k):
    u, v = orthonormal(n, k, seed=1), orthonormal(d, k, seed=2)
    equal = 3.0 * u @ v.T  # k equal singular values
    assert float(rankme(equal)) == pytest.approx(ref_rankme_closed_form(k, min(n, d)), rel=1e-6)
    assert float(rankme(equal)) == pytest.approx(k, rel=1e-4)
    spread = u @ torch.diag(torch.linspace(1.0, 10.0, k, dtype=torch.float64)) @ v.T
    assert float(rankme(spread)) == pytest.approx(ref_rankme(spread), rel=1e-8)
    assert float(rankme(spread)) <= k * (1 + 1e-4)
    if k > 1:
        assert float(rankme(spread)) < float(rankme(equal)) - 0.05


def test_fully_collapsed_features():
    z = torch.randn(1, 12, dtype=torch.float64).expand(50, 12) * torch.linspace(0.5, 2.0, 50, dtype=torch.float64)[:, None]
    std = dimension_std(z)
    assert float(std.abs().max()) < 1e-15
    assert float(rankme(z)) == pytest.approx(ref_rankme_closed_form(1, 12), rel=1e-6)
    assert float(rankme(z)) == pytest.approx(1.0, abs=1e-4)
    stats = embedding_statistics(z)
    assert stats["std_sqrt_d"] < 1e-12 and stats["std_min"] < 1e-15 and stats["dead_fraction"] == 1.0
    assert stats["rankme"] == pytest.approx(1.0, abs=1e-4)
    assert stats["uniformity"] == pytest.approx(0.0, abs=1e-12)  # every pair at distance 0


def test_alignment():
    z = torch.randn(30, 9, dtype=torch.float64)
    assert float(alignment(z, 2.5 * z)) == pytest.approx(0.0, abs=1e-14)  # identical (after normalisation)
    assert float(alignment(z, -z)) == pytest.approx(4.0, rel=1e-14)  # antipodal: ||u + u||^2 = 4
    w = torch.randn(30, 9, dtype=torch.float64)
    assert float(alignment(z, w)) == pytest.approx(ref_alignment(z, w), rel=1e-12)


def test_uniformity_on_known_point_sets():
    d = 7
    basis = torch.eye(d, dtype=torch.float64)  # all pairwise squared distances 2
    assert float(uniformity(basis)) == pytest.approx(-4.0, rel=1e-12)
    n = 6  # regular simplex: u_i.u_j = -1/(n-1), ||u_i - u_j||^2 = 2 + 2/(n-1)
    simplex = torch.eye(n, dtype=torch.float64) - 1.0 / n
    assert float(uniformity(simplex)) == pytest.approx(-2.0 * (2.0 + 2.0 / (n - 1)), rel=1e-12)
    assert float(uniformity(torch.tensor([[0.0, 3.0], [0.0, -1.0]]))) == pytest.approx(-8.0, rel=1e-12)
    z = torch.randn(25, 5, dtype=torch.float64)
    assert float(uniformity(z)) == pytest.approx(ref_uniformity(z), rel=1e-12)


@pytest.mark.parametrize("n, d", [(16, 40), (60, 12)])
def test_mec_coding_length(n, d):
    z = torch.randn(n, d, dtype=torch.float64)
    assert float(mec_coding_length(z)) == pytest.approx(ref_mec(z), rel=1e-10)
    assert float(mec_coding_length(z, eps_sq=0.5)) == pytest.approx(ref_mec(z, 0.5), rel=1e-10)
    # rows e_1..e_d (n = d): lambda = 1 / eps^2, mu = d, log det = d log(1 + lambda)
    eye = torch.eye(d, dtype=torch.float64)
    assert float(mec_coding_length(eye, 4.0)) == pytest.approx(d * math.log(1 + 1 / 4.0), rel=1e-12)
    # one direction repeated n times: U^T U = n v v^T, log det = log(1 + lambda n)
    same = torch.ones(n, d, dtype=torch.float64)
    lam = d / (n * 64.0)
    assert float(mec_coding_length(same)) == pytest.approx((n + d) / 2 * math.log(1 + lam * n) / n, rel=1e-12)


def test_embedding_statistics_match_references():
    z, v1, v2 = torch.randn(40, 6) + 0.3, torch.randn(40, 6), torch.randn(40, 6)
    stats = embedding_statistics(z, (v1, v2), dead_threshold=0.5, kappa=3.0)
    std = ref_std(z)
    assert stats["rankme"] == pytest.approx(ref_rankme(z), rel=1e-8)
    assert stats["std_mean"] == pytest.approx(std.mean(), rel=1e-8)
    assert stats["std_min"] == pytest.approx(std.min(), rel=1e-8)
    assert stats["std_sqrt_d"] == pytest.approx(std.mean() * math.sqrt(6), rel=1e-8)
    assert stats["dead_fraction"] == pytest.approx(float((std * math.sqrt(6) < 0.5).mean()))
    assert stats["alignment"] == pytest.approx(ref_alignment(v1, v2), rel=1e-8)
    assert stats["uniformity"] == pytest.approx(ref_uniformity(z), rel=1e-8)
    assert stats["er_entropy"] == pytest.approx(ref_er_entropy(z, 3.0), rel=1e-8)
    assert stats["mec_coding_length"] == pytest.approx(ref_mec(z), rel=1e-8)


# ----------------------------------------------------------------------------- the callback

D, P = 8, 4  # backbone and projector dims (even: integer Bessel orders in the ER reference)


class Identity(pl.LightningModule):
    """Backbone features are the inputs; ``projector`` a fixed linear map (or absent)."""

    def __init__(self, projector: bool = True) -> None:
        super().__init__()
        self.net = nn.Linear(D, 1)
        if projector:
            self.projector = nn.Linear(D, P, bias=False)
            with torch.no_grad():
                self.projector.weight.copy_(torch.randn(P, D, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return x

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {"features": batch[0]}

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.0)


class Images(Dataset):
    """``(transform(x_i), y_i)``; ``transform`` is a public attribute, as in torchvision's datasets."""

    def __init__(self, x, y, transform=None) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return (self.transform(x) if self.transform is not None else x), int(self.y[i])


def noisy_views(x):
    """Two random views drawn from the global torch, NumPy and ``random`` generators."""
    scale = 0.2 + 0.1 * random.random() + 0.1 * float(np.random.rand())
    return [x + scale * torch.randn_like(x), x + scale * torch.randn_like(x)]


def swap_views(x):
    return [x, -x]


class Data(pl.LightningDataModule):
    def __init__(self, test_x, test_y, view_transform=None) -> None:
        super().__init__()
        self.test_x, self.test_y = test_x, test_y
        if view_transform is not None:
            self.view_transform = view_transform

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.test_x[:16], self.test_y[:16]), batch_size=8)

    def val_dataloader(self):
        bank = TensorDataset(self.test_x[:10], self.test_y[:10])
        test = Images(self.test_x, self.test_y, transform=torch.clone)
        return [DataLoader(bank, batch_size=10), DataLoader(test, batch_size=50)]


def healthy(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, 3, (n,), generator=g)


def trainer(tmp_path, callbacks, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                    callbacks=callbacks)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def references(x: torch.Tensor, model: Identity, kappa: float = 10.0) -> dict[str, float]:
    spaces = {"backbone": x.double()}
    if hasattr(model, "projector"):
        spaces["projector"] = x.double() @ model.projector.weight.detach().double().T
    out = {}
    for name, z in spaces.items():
        std = ref_std(z)
        out.update({
            f"{name}/rankme": ref_rankme(z), f"{name}/std_mean": std.mean(), f"{name}/std_min": std.min(),
            f"{name}/std_sqrt_d": std.mean() * math.sqrt(z.shape[1]),
            f"{name}/dead_fraction": float((std * math.sqrt(z.shape[1]) < 0.01).mean()),
            f"{name}/uniformity": ref_uniformity(z), f"{name}/er_entropy": ref_er_entropy(z, kappa),
            f"{name}/mec_coding_length": ref_mec(z),
        })
    return out


def subset(n_total: int, num_samples: int, seed: int) -> torch.Tensor:
    """The documented subset: ``randperm(n_total)`` under ``seed``, first ``num_samples``, sorted."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values


@pytest.mark.usefixtures("one_thread")
def test_callback_logs_every_statistic_of_its_seeded_subset(tmp_path, caplog):
    x, y = healthy(120)
    model = Identity()
    diag = RepresentationDiagnostics(num_samples=50, seed=4, batch_size=16)
    t = trainer(tmp_path, [diag])
    with caplog.at_level(logging.INFO):
        t.validate(model, Data(x, y), verbose=False)
        t.validate(model, Data(x, y), verbose=False)
    idx = subset(120, 50, 4)
    expected = references(x[idx], model)
    assert set(diag.last_statistics) == set(expected)  # no views: no alignment
    for key, value in expected.items():
        assert diag.last_statistics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        assert t.callback_metrics[f"diag/{key}"].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert sum("alignment is not computed" in r.getMessage() for r in caplog.records) == 1  # once
    pictures = sorted(p.name for p in (tmp_path / "diagnostics").iterdir())
    assert pictures == ["epoch_000_pca.png", "epoch_000_spectrum.png", "epoch_000_std_hist.png"]
    for p in pictures:
        with Image.open(tmp_path / "diagnostics" / p) as img:
            assert img.size[0] > 100 and img.size[1] > 100


@pytest.mark.usefixtures("one_thread")
def test_alignment_of_the_recipe_views_and_untouched_global_rngs(tmp_path):
    x, y = healthy(80)
    model = Identity()

    def run(view_transform, callbacks):
        torch.manual_seed(7)
        np.random.seed(7)
        random.seed(7)
        trainer(tmp_path, callbacks).validate(model, Data(x, y, view_transform), verbose=False)
        return torch.rand(3), np.random.rand(3), random.random()

    plain = run(noisy_views, [])
    diag = RepresentationDiagnostics(num_samples=40, plot_every_n_epochs=None)
    after = run(noisy_views, [diag])
    assert torch.equal(plain[0], after[0]) and np.array_equal(plain[1], after[1]) and plain[2] == after[2]
    first = dict(diag.last_statistics)
    assert 0.0 < first["backbone/alignment"] < 1.0 and 0.0 < first["projector/alignment"] < 2.0
    diag._cache = None  # rebuilt from scratch: the same seeded views
    run(noisy_views, [diag])
    assert diag.last_statistics == first

    swapped = RepresentationDiagnostics(num_samples=40, plot_every_n_epochs=0)
    run(swap_views, [swapped])  # views x and -x: antipodal in both spaces (the projector is linear)
    assert swapped.last_statistics["backbone/alignment"] == pytest.approx(4.0, rel=1e-6)
    assert swapped.last_statistics["projector/alignment"] == pytest.approx(4.0, rel=1e-6)
    assert not (tmp_path / "diagnostics").exists()


@pytest.mark.usefixtures("one_thread")
def test_collapse_warning_fires_once_naming_the_epoch_and_is_silent_when_healthy(tmp_path):
    x, y = healthy(60)
    collapsed = Data(torch.ones(60, D) + 1e-3 * torch.arange(60.0)[:, None], y)  # rows on one ray
    diag = RepresentationDiagnostics(num_samples=30, plot_every_n_epochs=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [diag], max_epochs=2, limit_train_batches=1).fit(Identity(projector=False), collapsed)
    fired = [w for w in caught if issubclass(w.category, RepresentationCollapseWarning)]
    assert len(fired) == 1 and "epoch 0" in str(fired[0].message) and "backbone" in str(fired[0].message)
    assert diag.last_statistics["backbone/rankme"] < 1.01 and diag.last_statistics["backbone/std_sqrt_d"] < 1e-6
    assert set(diag.last_statistics) == set(references(x, Identity(projector=False)))  # backbone only

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [RepresentationDiagnostics(num_samples=30, plot_every_n_epochs=None)], max_epochs=2,
                limit_train_batches=1).fit(Identity(), Data(x, y))
    assert not [w for w in caught if issubclass(w.category, RepresentationCollapseWarning)]


@pytest.mark.usefixtures("one_thread")
def test_pictures_every_n_validation_epochs(tmp_path):
    x, y = healthy(40)
    diag = RepresentationDiagnostics(num_samples=20, plot_every_n_epochs=2)
    trainer(tmp_path, [diag], max_epochs=3, limit_train_batches=1).fit(Identity(), Data(x, y))
    epochs = {p.name[:9] for p in (tmp_path / "diagnostics").iterdir()}
    assert epochs == {"epoch_000", "epoch_002"}
    assert diag.state_dict() == {"validations": 3, "collapse_warned": False}


@pytest.mark.usefixtures("one_thread")
def test_fast_dev_run_uses_a_small_subset_and_draws_nothing(tmp_path):
    x, y = healthy(100)
    diag = RepresentationDiagnostics(num_samples=80)
    trainer(tmp_path, [diag], fast_dev_run=True).fit(Identity(), Data(x, y))
    idx = subset(100, 32, 0)  # capped at 32 samples
    assert diag.last_statistics["backbone/rankme"] == pytest.approx(ref_rankme(x[idx]), rel=1e-6)
    assert diag.last_statistics["backbone/uniformity"] == pytest.approx(ref_uniformity(x[idx]), rel=1e-6)
    assert not (tmp_path / "diagnostics").exists()  # no logger, no run directory


# ----------------------------------------------------------------------------- DDP (2 CPU processes)


class _Dump(pl.Callback):
    def __init__(self, diag: RepresentationDiagnostics, out: Path) -> None:
        self.diag, self.out = diag, out

    def on_validation_end(self, trainer, pl_module):
        torch.save(dict(self.diag.last_statistics), self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed (gloo)")
def test_ddp_statistics_equal_single_process_on_the_gathered_subset(tmp_path):
    x, y = healthy(90, seed=5)
    model = Identity()
    single = RepresentationDiagnostics(num_samples=45, plot_every_n_epochs=None)
    trainer(tmp_path, [single]).validate(model, Data(x, y, noisy_views), verbose=False)
    expected = references(x[subset(90, 45, 0)], model)
    for key, value in expected.items():  # the single-process values are the float64 references ...
        assert single.last_statistics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key

    diag = RepresentationDiagnostics(num_samples=45, plot_every_n_epochs=1)
    t = trainer(tmp_path, [diag, _Dump(diag, tmp_path)], devices=2, strategy="ddp_spawn")
    t.validate(model, Data(x, y, noisy_views), verbose=False)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0 == r1  # identical on every process
    assert set(r0) == set(single.last_statistics) and "projector/alignment" in r0
    for key, value in single.last_statistics.items():  # ... and the 2-process values equal them
        assert r0[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert len(list((tmp_path / "diagnostics").iterdir())) == 3  # drawn once, by rank 0


# ----------------------------------------------------------------------------- report on a real run


@pytest.mark.usefixtures("one_thread")
def test_report_of_a_short_mveb_run(tmp_path, capsys):
    torch.manual_seed(0)
    model = MVEB(backbone="resnet18", cifar_stem=False, proj_hidden_dim=32, proj_output_dim=16, optimizer="sgd",
                 lr=0.05, warmup_epochs=0, lr_scaling="none")
    data = MultiViewDataModule("default", views="mveb_multicrop_cifar", view_kwargs={"n_local": 1}, batch_size=8,
                               num_workers=0, train_subset=32, test_subset=40)
    diag = RepresentationDiagnostics(num_samples=40, batch_size=40)
    logger = TensorBoardLogger(tmp_path, name="run")
    t = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, log_every_n_steps=1, logger=logger,
                   callbacks=[OnlineLinearProbe(num_classes=10), OnlineKNN(k=5), diag], enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, enable_checkpointing=False)
    t.fit(model, datamodule=data)
    assert "backbone/alignment" in diag.last_statistics and "projector/alignment" in diag.last_statistics
    assert all(math.isfinite(v) for v in diag.last_statistics.values())

    report = make_report(tmp_path, tmp_path / "out" / "report.html")
    assert report.event_dir == Path(logger.log_dir)
    with Image.open(report.png) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 500 and img.size[1] > 500
    for panel in ("loss: train/loss", "loss: train/align", "loss: train/entropy_surrogate", "accuracy", "diag: rankme", "diag: std_sqrt_d",
                  "diag: alignment", "diag: uniformity", "diag: er_entropy", "diag: mec_coding_length",
                  "picture: diag/pca", "picture: diag/spectrum", "picture: diag/std_hist"):
        assert panel in report.panels, (panel, report.panels)
    assert "loss: train/ema_momentum" not in report.panels and "other: train/ema_momentum" in report.panels
    page = report.html.read_text()
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == report.png.read_bytes()
    with Image.open(io.BytesIO(base64.b64decode(embedded))) as img:
        assert img.size[0] > 0
    assert all(f"<li>{p}</li>" in page for p in report.panels)

    assert report_main([str(tmp_path), "--out", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and "no TensorBoard event files" in capsys.readouterr().err
