"""AMDIM: objective against a brute-force float64 reference, DDP gathering, encoder, views, method."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from gloo import run_in_processes
from PIL import Image

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.data.datamodule import MultiViewDataModule
from mvssl_lightning.data.views.amdim import (
    AMDIMEvalView,
    AMDIMEvalViewCifar,
    RandomTranslateWithReflect,
    amdim_views,
    amdim_views_cifar,
)
from mvssl_lightning.losses.amdim import AMDIMLoss, amdim_loss, amdim_nce, amdim_terms, sample_r5_cells
from mvssl_lightning.methods.amdim import AMDIM, amdim_lr_factor
from mvssl_lightning.models.amdim import ResUnit, amdim_heads, build_amdim_encoder


# --------------------------------------------------------------------------- reference objective
def reference_nce(src: np.ndarray, trg: np.ndarray, tclip: float = 20.0, reg_weight: float = 0.05):
    """Brute force from the equations: loops over anchors b, locations l and negatives (b' != b, all l')."""
    b_count, c = src.shape
    trg = trg.reshape(b_count, c, -1)
    n_loc = trg.shape[2]

    def raw(b, b2, l):
        return float(src[b] @ trg[b2, :, l]) / math.sqrt(c)

    def clip(u):
        return tclip * math.tanh(u / tclip)

    reg = reg_weight * np.mean([raw(b, b2, l) ** 2 for b in range(b_count) for b2 in range(b_count)
                                for l in range(n_loc)])
    losses = []
    for b in range(b_count):
        negatives = [clip(raw(b, b2, l2)) for b2 in range(b_count) if b2 != b for l2 in range(n_loc)]
        for l in range(n_loc):
            pos = clip(raw(b, b, l))
            denom = math.exp(pos) + sum(math.exp(s) for s in negatives)
            losses.append(-(pos - math.log(denom)))
    return float(np.mean(losses)), float(reg)


def reference_loss(f1, f2, loc1, loc2, tclip=20.0, reg_weight=0.05):
    """Official combination: symmetrised 1->5, 1->7, 5->5 (cell ``loc``) plus half the six penalties."""
    terms, reg = {}, 0.0

    def cells(r5, loc):
        return np.stack([r5[b, :, loc[b] // 5, loc[b] % 5] for b in range(r5.shape[0])])

    sources = {"1": (f1[0].reshape(len(loc1), -1), f2[0].reshape(len(loc2), -1)),
               "5": (cells(f1[1], loc1), cells(f2[1], loc2))}
    targets = {"5": (f1[1], f2[1]), "7": (f1[2], f2[2])}
    for name, s, t in (("1t5", "1", "5"), ("1t7", "1", "7"), ("5t5", "5", "5")):
        nce_a, reg_a = reference_nce(sources[s][0], targets[t][1], tclip, reg_weight)
        nce_b, reg_b = reference_nce(sources[s][1], targets[t][0], tclip, reg_weight)
        terms[f"nce_{name}"] = 0.5 * (nce_a + nce_b)
        reg += reg_a + reg_b
    terms["reg"] = 0.5 * reg
    return sum(terms.values()), terms


def feats(b: int, c: int, seed: int, scale: float = 3.0):
    """``(r1, r5, r7)`` float64 maps; ``scale`` large enough that the tanh clip matters."""
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(b, c, s, s, generator=g, dtype=torch.float64) for s in (1, 5, 7))


@pytest.mark.parametrize("hw,scale", [(1, 1.0), (3, 1.0), (2, 12.0)])
def test_nce_matches_brute_force_reference(hw, scale):
    g = torch.Generator().manual_seed(hw)
    src = scale * torch.randn(4, 6, generator=g, dtype=torch.float64)
    trg = scale * torch.randn(4, 6, hw, hw, generator=g, dtype=torch.float64)
    nce, reg = amdim_nce(src, trg)
    ref_nce, ref_reg = reference_nce(src.numpy(), trg.numpy())
    assert nce.item() == pytest.approx(ref_nce, rel=1e-12)
    assert reg.item() == pytest.approx(ref_reg, rel=1e-12)
    nce10, _ = amdim_nce(src, trg, tclip=10.0, reg_weight=0.0)
    assert nce10.item() == pytest.approx(reference_nce(src.numpy(), trg.numpy(), 10.0, 0.0)[0], rel=1e-12)


def test_nce_gradcheck():
    g = torch.Generator().manual_seed(1)
    src = (3 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    trg = (3 * torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, t: amdim_nce(s, t, tclip=5.0), (src, trg))


def test_loss_with_fixed_cells_matches_reference_and_gradcheck():
    b, c = 3, 4
    f1, f2 = feats(b, c, seed=2), feats(b, c, seed=3)
    loc1, loc2 = torch.tensor([0, 12, 24]), torch.tensor([7, 7, 19])
    terms = amdim_terms(f1, f2, r5_loc1=loc1, r5_loc2=loc2)
    ref_total, ref_terms = reference_loss([x.numpy() for x in f1], [x.numpy() for x in f2], loc1, loc2)
    for k, v in ref_terms.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-12), k
    assert amdim_loss(f1, f2, r5_loc1=loc1, r5_loc2=loc2).item() == pytest.approx(ref_total, rel=1e-12)
    loss, logged = AMDIMLoss()(f1, f2, loc1, loc2)
    assert loss.item() == pytest.approx(ref_total, rel=1e-12) and set(logged) == set(ref_terms)
    inputs = tuple(x.clone().requires_grad_(True) for x in (*f1, *f2))
    # fast mode: one random projection of the Jacobian (the full one takes minutes here)
    assert torch.autograd.gradcheck(
        lambda *x: amdim_loss(x[:3], x[3:], tclip=6.0, r5_loc1=loc1, r5_loc2=loc2), inputs, fast_mode=True)


def test_random_cells_are_uniform_draws_in_call_order():
    f1, f2 = feats(5, 3, seed=4), feats(5, 3, seed=5)
    torch.manual_seed(0)
    random_loss = amdim_loss(f1, f2)
    torch.manual_seed(0)
    loc1, loc2 = sample_r5_cells(5), sample_r5_cells(5)
    assert random_loss.item() == amdim_loss(f1, f2, r5_loc1=loc1, r5_loc2=loc2).item()
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        amdim_loss(f1, f2, r5_loc1=torch.full((5,), 25), r5_loc2=loc2)


def test_loss_runs_in_float32_under_bf16_autocast():
    f1 = tuple(x.float() for x in feats(4, 8, seed=6, scale=1.0))
    f2 = tuple(x.float() for x in feats(4, 8, seed=7, scale=1.0))
    loc = torch.arange(4)
    expected = amdim_loss(f1, f2, r5_loc1=loc, r5_loc2=loc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = amdim_loss(f1, f2, r5_loc1=loc, r5_loc2=loc)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)


def _ddp_worker(rank, world, f1, f2, loc1, loc2):
    b = f1[0].shape[0] // world
    rows = slice(rank * b, (rank + 1) * b)
    local = [x[rows].clone().requires_grad_(True) for x in (*f1, *f2)]
    loss = amdim_loss(local[:3], local[3:], r5_loc1=loc1[rows], r5_loc2=loc2[rows], gather_distributed=True)
    grads = torch.autograd.grad(loss, local)
    # DDP averages parameter gradients over the processes: each row's effective gradient is grad / world
    return (loss.item(), [g / world for g in grads])


def test_gather_distributed_matches_single_process_global_batch():
    world, b, c = 2, 3, 4
    f1, f2 = feats(world * b, c, seed=8, scale=1.5), feats(world * b, c, seed=9, scale=1.5)
    g = torch.Generator().manual_seed(10)
    loc1, loc2 = torch.randint(0, 25, (world * b,), generator=g), torch.randint(0, 25, (world * b,), generator=g)
    glob = [x.clone().requires_grad_(True) for x in (*f1, *f2)]
    loss = amdim_loss(glob[:3], glob[3:], r5_loc1=loc1, r5_loc2=loc2)
    expected = torch.autograd.grad(loss, glob)
    out = run_in_processes(_ddp_worker, f1, f2, loc1, loc2, world=world)
    # the mean of the per-process losses (local anchors, global negatives) is the global loss
    assert np.mean([out[r][0] for r in range(world)]) == pytest.approx(loss.item(), rel=1e-12)
    for i in range(6):
        got = torch.cat([out[r][1][i] for r in range(world)])
        rel = (got - expected[i]).norm() / expected[i].norm()
        assert rel < 1e-10, (i, rel.item())


# --------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("cifar_stem,size", [(False, 128), (True, 32)])
def test_encoder_maps_and_heads(cifar_stem, size, one_thread):
    encoder, dim = build_amdim_encoder(cifar_stem=cifar_stem, ndf=4, n_rkhs=24, depth=2)
    heads = amdim_heads(encoder)
    x = torch.randn(2, 3, size, size)
    r1, h5, h7 = encoder.forward_maps(x)
    top = 4 * (4 if cifar_stem else 8)
    assert dim == 24 and r1.shape == (2, 24, 1, 1)
    assert h5.shape == (2, top, 5, 5) and h7.shape == (2, top, 7, 7)
    assert heads["r5"](h5).shape == (2, 24, 5, 5) and heads["r7"](h7).shape == (2, 24, 7, 7)
    assert torch.equal(encoder(x), r1.flatten(1))
    units = [m for m in encoder.modules() if isinstance(m, ResUnit)]
    # 5 blocks of `depth` units + the 3x3 unit to n_rkhs (128 px); + the 1x1 stem unit, 4 blocks (32 px)
    assert len(units) == (1 + 4 * 2 + 1 if cifar_stem else 5 * 2 + 1)
    assert all(not u.conv2.weight.any() for u in units)  # zero-init residual branches
    assert any(u.conv2.weight.any() for u in build_amdim_encoder(cifar_stem, False, 4, 24, 2)[0].modules()
               if isinstance(u, ResUnit))
    with pytest.raises(ValueError, match="px inputs"):
        encoder.forward_maps(torch.randn(1, 3, 64, 64))


# --------------------------------------------------------------------------- views
def ramp_image(w: int = 48, h: int = 40) -> Image.Image:
    """Grey ramp, dark on the left, bright on the right: a flip is visible in every crop."""
    row = np.linspace(0, 255, w).astype(np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (h, 1))[..., None], 3, axis=2))


def is_flipped(view: torch.Tensor) -> bool:
    return bool(view[:, :, 0].mean() > view[:, :, -1].mean())


@pytest.mark.parametrize("recipe", ["imagenet", "cifar"])
def test_flip_is_shared_and_crops_are_independent(recipe):
    torch.manual_seed(0)
    if recipe == "imagenet":
        views = amdim_views(size=24, cj_prob=0.0, gray=0.0, normalize=None)
        img = ramp_image()
    else:
        views = amdim_views_cifar(cj_prob=0.0, gray=0.0, normalize=None)
        img = ramp_image(32, 32)
    assert views.num_views == 2 == len(views.transforms)
    flips, differ = [], 0
    for _ in range(200):
        v1, v2 = views(img)
        assert is_flipped(v1) == is_flipped(v2)
        flips.append(is_flipped(v1))
        differ += not torch.equal(v1, v2)
    assert 60 < sum(flips) < 140  # flip p = 0.5, decided once per image
    assert differ > 150  # the crops / translations are drawn per view


def test_view_shapes_and_eval_transforms():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8))
    assert [tuple(v.shape) for v in amdim_views()(img)] == [(3, 128, 128)] * 2
    assert AMDIMEvalView()(img).shape == (3, 128, 128)
    small = img.resize((32, 32))
    assert [tuple(v.shape) for v in amdim_views_cifar()(small)] == [(3, 32, 32)] * 2
    assert AMDIMEvalViewCifar()(small).shape == (3, 32, 32)


def test_translate_with_reflect_matches_index_reference():
    arr = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    m = 4

    def reflect(i, n):  # mirror without repeating the edge pixel
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    for seed in range(5):
        torch.manual_seed(seed)
        out = np.asarray(RandomTranslateWithReflect(m)(Image.fromarray(arr)))
        torch.manual_seed(seed)
        dx, dy = (int(v) for v in torch.randint(-m, m + 1, (2,)))
        expected = np.stack([np.stack([arr[reflect(i - dy, 10), reflect(j - dx, 12)] for j in range(12)])
                             for i in range(10)])
        np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- method
def test_lr_factor_warmup_and_steps():
    f = [amdim_lr_factor(t, warmup_steps=4, milestone_steps=[6, 8], gamma=0.5) for t in range(10)]
    assert f == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 0.5, 0.5, 0.25, 0.25])
    assert amdim_lr_factor(0, 0, [], 0.2) == 1.0


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.losses, self.lrs = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        assert outputs["features"].shape == (batch[0][0].shape[0], pl_module.feat_dim)


def test_module_trains_with_probe_knn_and_step_schedule(tmp_path, one_thread):
    pl.seed_everything(0)
    model = AMDIM(cifar_stem=True, backbone_kwargs={"ndf": 8, "n_rkhs": 32, "depth": 1}, lr=1e-3,
                  warmup_steps=2, lr_milestones=[1, 2], lr_gamma=0.2)
    assert model.optimizer_name == "adam" and model.lr_scaling == "none" and model.betas == (0.8, 0.999)
    dm = MultiViewDataModule(dataset="default", views=amdim_views_cifar(), eval_transform=AMDIMEvalViewCifar(),
                             batch_size=16, num_workers=0, train_subset=32, test_subset=32)
    rec = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=3, default_root_dir=tmp_path,
        callbacks=[rec, OnlineLinearProbe(num_classes=10), OnlineKNN(k=5)],
    )
    trainer.fit(model, datamodule=dm)
    assert len(rec.losses) == 6 and all(math.isfinite(v) for v in rec.losses)
    assert len(set(rec.losses)) > 1
    # the official loop (2 steps per epoch): warm-up (t + 1) / 2; MultiStepLR([1, 2]).step(e) at the end
    # of epoch e sets the lr of epoch e + 1 to 0.2 ** #{m <= e}: x 1 for epoch 1, x 0.2 for epoch 2
    assert rec.lrs == pytest.approx([1e-3 * f for f in (0.5, 1, 1, 1, 0.2, 0.2)])
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/nce_1t5", "train/nce_1t7", "train/nce_5t5", "train/reg",
                 "probe/val_top1", "knn/top1"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 32)


def test_module_rejects_other_backbones():
    with pytest.raises(ValueError, match="AMDIM is tied to its own encoder.*backbone resnet18.*use backbone: amdim"):
        AMDIM(backbone="resnet18")
