"""InfoMin: queue InfoNCE, ring-buffer queue, shuffled BN, the InfoMin augmentation, and the module.

References are independent: explicit float64 loops for the loss, a Python list simulating sequential
slot writes for the queue, per-group statistics recomputed by hand for shuffled BN.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gloo import run_in_processes
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

from mvssl_lightning.data.views.infomin import (
    RAND_AUGMENT_OPS,
    InfoMinRandAugment,
    JigsawPatches,
    infomin_views,
    infomin_views_cifar,
    rand_augment_op,
)
from mvssl_lightning.losses.infonce import InfoNCEQueueLoss, infonce_queue_logits, infonce_queue_loss
from mvssl_lightning.methods.infomin import InfoMin, JigsawHead
from mvssl_lightning.methods.queue import KeyQueue
from mvssl_lightning.methods.shuffle_bn import shuffled_key_forward


def unit(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


# ----------------------------------------------------------------------------- loss


def reference_infonce(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float) -> float:
    """mean_i [ log(e^{q_i.k_i/tau} + sum_j e^{q_i.Q_j/tau}) - q_i.k_i/tau ], explicit loops."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = sum(q[i, d] * k[i, d] for d in range(q.shape[1])) / tau
        denom = math.exp(pos)
        for j in range(queue.shape[0]):
            denom += math.exp(sum(q[i, d] * queue[j, d] for d in range(q.shape[1])) / tau)
        total += math.log(denom) - pos
    return total / q.shape[0]


@pytest.mark.parametrize("b,d,k_size,tau", [(5, 4, 7, 0.15), (1, 3, 4, 0.07), (6, 8, 1, 1.0)])
def test_loss_matches_float64_loop_reference(b, d, k_size, tau):
    q, k, queue = unit(b, d, seed=1), unit(b, d, seed=2), unit(k_size, d, seed=3)
    expected = reference_infonce(q.numpy(), k.numpy(), queue.numpy(), tau)
    assert infonce_queue_loss(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-12)
    loss, stats = InfoNCEQueueLoss(tau)(q, k, queue)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["pos_logit"].item() == pytest.approx(float((q * k).sum(1).mean()), rel=1e-12)
    logits = infonce_queue_logits(q, k, queue, tau)
    assert logits.shape == (b, 1 + k_size)
    wins = [float(q[i] @ k[i]) > max(float(q[i] @ queue[j]) for j in range(k_size)) for i in range(b)]
    assert stats["acc"].item() == pytest.approx(sum(wins) / b)


def test_loss_gradcheck_and_no_gradient_into_keys():
    q = unit(4, 5, seed=4).requires_grad_(True)
    k, queue = unit(4, 5, seed=5).requires_grad_(True), unit(6, 5, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: infonce_queue_loss(x, k, queue, 0.15), (q,))
    infonce_queue_loss(q, k, queue).backward()
    assert k.grad is None and queue.grad is None and q.grad is not None


def test_loss_runs_in_float32_under_bf16_autocast():
    q, k, queue = (unit(8, 16, seed=s, dtype=torch.float32) for s in (7, 8, 9))
    ref = infonce_queue_loss(q, k, queue)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = infonce_queue_loss(q.bfloat16(), k.bfloat16(), queue)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        infonce_queue_loss(unit(4, 3), unit(5, 3), unit(2, 3))
    with pytest.raises(ValueError, match="queue must be"):
        infonce_queue_loss(unit(4, 3), unit(4, 3), unit(2, 4))


# ----------------------------------------------------------------------------- queue


def simulate(size: int, initial: list, batches: list[list]) -> tuple[list, int]:
    """Sequential slot writes: the i-th key of a batch goes to slot (ptr + i) mod size."""
    slots, ptr = list(initial), 0
    for batch in batches:
        for key in batch:
            slots[ptr] = key
            ptr = (ptr + 1) % size
    return slots, ptr


def test_queue_wraps_around_like_sequential_writes():
    size, dim = 10, 3
    queue = KeyQueue(size, dim, seed=0)
    initial = [tuple(r) for r in queue.keys.tolist()]
    sizes = [4, 4, 4, 13, 3]
    batches = [torch.full((n, dim), float(100 * t + 1)) + torch.arange(n)[:, None] for t, n in enumerate(sizes)]
    done = []
    for batch in batches:  # 4, 4 (ptr 8), 4 straddles (8, 9, 0, 1), 13 > size, 3
        queue.enqueue(batch)
        done.append([tuple(r) for r in batch.tolist()])
        slots, ptr = simulate(size, initial, done)
        assert [tuple(r) for r in queue.keys.tolist()] == slots
        assert int(queue.ptr) == ptr
    assert int(queue.ptr) == (4 + 4 + 4 + 13 + 3) % size


def test_queue_init_is_seeded_unit_and_checkpointed():
    a, b = KeyQueue(50, 8, seed=3), KeyQueue(50, 8, seed=3)
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, KeyQueue(50, 8, seed=4).keys)
    torch.testing.assert_close(a.keys.norm(dim=1), torch.ones(50))
    a.enqueue(torch.ones(7, 8))
    assert set(a.state_dict()) == {"keys", "ptr"}
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.keys, b.keys) and int(b.ptr) == 7


# ----------------------------------------------------------------------------- shuffled BN


class _ChunkStats(nn.Module):
    """BN-like encoder that also reports which chunk (by its mean) each row was normalised with."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)

    def forward(self, x):
        return torch.cat([self.bn(x), x.mean(0, keepdim=True).expand_as(x)], dim=1)


def test_shuffled_bn_identity_encoder_preserves_row_order():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(12, 3, 8, 8)
    net.train()
    net(x)  # give the running statistics non-trivial values
    net.eval()
    for groups in (1, 3, 12):
        k, k_all = shuffled_key_forward(net, x, groups)
        torch.testing.assert_close(k, net(x))
        torch.testing.assert_close(k_all, k)


def test_shuffled_bn_train_mode_uses_random_groups_of_equal_size():
    torch.manual_seed(1)
    b, d, groups = 24, 5, 4
    x = torch.randn(b, d, dtype=torch.float64)
    enc = _ChunkStats(d).double().train()
    k, _ = shuffled_key_forward(enc, x, groups)
    normed, chunk_mean = k[:, :d], k[:, d:]
    members: dict[tuple, list[int]] = {}
    for i in range(b):
        members.setdefault(tuple(chunk_mean[i].tolist()), []).append(i)
    assert sorted(len(m) for m in members.values()) == [b // groups] * groups
    for rows in members.values():
        xs = x[rows]
        mean, var = xs.mean(0), xs.var(0, unbiased=False)
        torch.testing.assert_close(normed[rows], (xs - mean) / torch.sqrt(var + enc.bn.eps))
    contiguous = {tuple(range(g * b // groups, (g + 1) * b // groups)) for g in range(groups)}
    assert {tuple(m) for m in members.values()} != contiguous  # the batch was permuted
    # without shuffling, the groups are the contiguous chunks
    k, _ = shuffled_key_forward(enc, x, groups, shuffle=False)
    for g in range(groups):
        rows = slice(g * b // groups, (g + 1) * b // groups)
        torch.testing.assert_close(k[rows, d:], x[rows].mean(0).expand(b // groups, d))


# ----------------------------------------------------------------------------- DDP (gloo, 2 processes)


def _ddp_worker(rank, world):
    torch.manual_seed(100 + rank)  # different local randomness: the permutation must come from rank 0
    queue = KeyQueue(10, 2, seed=0)
    for step, n in enumerate([3, 3, 2]):  # global batches 6, 6 (straddles 6..1), 4
        queue.enqueue(torch.full((n, 2), float(10 * step + rank)) + torch.arange(n)[:, None])
    # shuffled keys: BN-free encoder -> the local keys come back in the local order
    x = torch.arange(8, dtype=torch.float32).reshape(4, 2) + 100 * rank
    k, k_all = shuffled_key_forward(lambda c: 2 * c, x, groups=2)
    # the queue loss on local rows vs. gathered rows
    g = torch.Generator().manual_seed(7)
    q_all, key_all, bank = (F.normalize(torch.randn(n, 4, generator=g), dim=1) for n in (6, 6, 5))
    local = slice(3 * rank, 3 * rank + 3)
    gathered = InfoNCEQueueLoss(0.2, gather_distributed=True)(q_all[local], key_all[local], bank)[0]
    return (queue.keys.clone(), int(queue.ptr), k, k_all, gathered.item())


def test_ddp_queues_identical_with_keys_in_rank_order():
    world = 2
    out = run_in_processes(_ddp_worker, world=world)
    initial = [tuple(r) for r in KeyQueue(10, 2, seed=0).keys.tolist()]
    batches = []
    for step, n in enumerate([3, 3, 2]):
        batches.append([(10.0 * step + r + i, 10.0 * step + r + i) for r in range(world) for i in range(n)])
    slots, ptr = simulate(10, initial, batches)
    for rank in range(world):
        keys, p, k, k_all, gathered = out[rank]
        assert [tuple(r) for r in keys.tolist()] == slots and p == ptr == 6
        x = torch.arange(8, dtype=torch.float32).reshape(4, 2) + 100 * rank
        torch.testing.assert_close(k, 2 * x)
        expected_all = torch.cat([2 * (torch.arange(8.0).reshape(4, 2) + 100 * r) for r in range(world)])
        torch.testing.assert_close(k_all, expected_all)
    g = torch.Generator().manual_seed(7)
    q_all, key_all, bank = (F.normalize(torch.randn(n, 4, generator=g), dim=1) for n in (6, 6, 5))
    assert out[0][4] == pytest.approx(infonce_queue_loss(q_all, key_all, bank, 0.2).item(), rel=1e-6)


# ----------------------------------------------------------------------------- augmentation


def _test_image(w: int = 48, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // (w - 1), yy * 200 // (h - 1), (xx + yy) % 64 + 60], axis=-1)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    arr[:4, :4] = 255  # bright corner: Solarize has something to invert
    return Image.fromarray(arr, "RGB")


def test_op_list_is_the_official_one():
    assert RAND_AUGMENT_OPS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize", "SolarizeAdd",
        "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    )


@pytest.mark.parametrize("name", RAND_AUGMENT_OPS)
def test_each_op_applied_with_prob_one_gives_a_valid_changed_image(name):
    img = _test_image()
    torch.manual_seed(0)
    out = InfoMinRandAugment(num_ops=1, magnitude=9, magnitude_std=0.0, prob=1.0, ops=(name,))(img)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_op_magnitude_mapping():
    img = _test_image()
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    assert same(rand_augment_op(img, "PosterizeTpu", 10), ImageOps.posterize(img, 4))
    assert same(rand_augment_op(img, "PosterizeTpu", 9.9), ImageOps.posterize(img, 3))
    assert same(rand_augment_op(img, "Solarize", 5), ImageOps.solarize(img, 128))
    assert same(rand_augment_op(img, "Solarize", 10), img)  # threshold 256: no-op, as official
    assert same(rand_augment_op(img, "Brightness", 10), ImageEnhance.Brightness(img).enhance(1.9))
    assert same(rand_augment_op(img, "Contrast", 0), ImageEnhance.Contrast(img).enhance(0.1))
    assert same(rand_augment_op(img, "Rotate", 5, sign=-1.0),
                img.rotate(-15.0, resample=Image.Resampling.BILINEAR, fillcolor=(124, 116, 104)))
    add = np.asarray(rand_augment_op(img, "SolarizeAdd", 10)).astype(int)
    src = np.asarray(img).astype(int)
    np.testing.assert_array_equal(add, np.where(src < 128, np.minimum(src + 110, 255), src))
    # TranslateXRel at level 10 on a 48-px-wide image: 0.45 * 48 = 21.6 px, rows filled with the mean
    moved = np.asarray(rand_augment_op(img, "TranslateXRel", 10, fill=(1, 2, 3), sign=1.0))
    filled = [(moved[:, c] == (1, 2, 3)).all() for c in range(48)]
    assert not any(filled[:26]) and all(filled[27:])  # content moved left by 21.6 px


class _Recorder(InfoMinRandAugment):
    def _apply(self, img, name, level):
        self.calls.append((name, level))
        return img


def test_rand_augment_choice_probability_and_magnitude_noise():
    torch.manual_seed(0)
    ra = _Recorder()  # n 2, m 10, std 0.5, p 0.5, all ops
    ra.calls = []
    trials = 3000
    for _ in range(trials):
        ra(None)
    names = [n for n, _ in ra.calls]
    levels = np.array([lv for _, lv in ra.calls])
    assert len(names) / (2 * trials) == pytest.approx(0.5, abs=0.03)  # each op applied with p 0.5
    counts = np.array([names.count(op) for op in RAND_AUGMENT_OPS])
    assert counts.min() > 0.7 * len(names) / 15 and counts.max() < 1.3 * len(names) / 15  # uniform
    assert levels.max() <= 10.0 and levels.min() > 7.5
    # min(N(10, 0.5^2), 10): mean 10 - 0.5 / sqrt(2 pi), half the draws clipped at 10
    assert levels.mean() == pytest.approx(10 - 0.5 / math.sqrt(2 * math.pi), abs=0.03)
    assert (levels == 10.0).mean() == pytest.approx(0.5, abs=0.05)
    ra = _Recorder(prob=1.0)
    ra.calls = []
    for _ in range(trials):
        ra(None)
    pairs = [ra.calls[i:i + 2] for i in range(0, len(ra.calls), 2)]
    repeats = np.mean([a[0] == b[0] for a, b in pairs])  # with replacement: 1/15 repeats
    assert len(ra.calls) == 2 * trials and repeats == pytest.approx(1 / 15, abs=0.02)


def test_recipes_view_counts_and_shapes():
    img = _test_image(300, 260)
    torch.manual_seed(0)
    recipe = infomin_views()
    views = recipe(img)
    assert recipe.num_views == len(views) == 11
    assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 64, 64)] * 9
    assert infomin_views(jigsaw=False).num_views == 2
    small = _test_image(32, 32)
    cifar = infomin_views_cifar()
    assert [tuple(v.shape) for v in cifar(small)] == [(3, 32, 32)] * 2
    cifar_jig = infomin_views_cifar(jigsaw=True)(small)
    assert len(cifar_jig) == 11 and all(tuple(v.shape) == (3, 8, 8) for v in cifar_jig[2:])


def test_jigsaw_patches_come_from_their_grid_cells():
    # pixel (r, c) stores r in the red and c in the green channel; the 255-px crop is the whole image
    yy, xx = np.mgrid[0:255, 0:255]
    img = Image.fromarray(np.stack([yy, xx, np.zeros_like(xx)], -1).astype(np.uint8), "RGB")
    torch.manual_seed(0)
    jig = JigsawPatches(255, scale=(1.0, 1.0), normalize=None)
    jig.crop.transforms[0].ratio = (1.0, 1.0)
    for _ in range(5):
        patches = jig(img)
        assert len(patches) == 9
        for i, p in enumerate(patches):
            rows, cols = (p[0] * 255).round().long(), (p[1] * 255).round().long()
            assert p.shape == (3, 64, 64)
            assert rows.min() >= 85 * (i // 3) and rows.max() < 85 * (i // 3 + 1)
            cell = int(cols.min()) // 85  # horizontal flip mirrors the columns
            assert cols.max() < 85 * (cell + 1)
            assert (rows[1:, 0] - rows[:-1, 0] == 1).all()  # a contiguous crop


# ----------------------------------------------------------------------------- module


def test_jigsaw_head_shapes_permutation_invariance_of_the_set():
    torch.manual_seed(0)
    head = JigsawHead(16, 8, 4, num_patches=9)
    h = torch.randn(2 * 9, 16)
    z = head(h)
    assert z.shape == (2, 4) and torch.allclose(z.norm(dim=1), torch.ones(2))
    assert not torch.allclose(head(h), head(h))  # a new random patch order per call
    with pytest.raises(ValueError, match="multiple of 9"):
        head(torch.randn(10, 16))


class _Views(torch.utils.data.Dataset):
    def __init__(self, n: int, patches: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.patches = patches

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        views = [x, x.flip(-1)] + [x[:, :8, :8] + 0.1 * j for j in range(self.patches)]
        return views, 0


class _RecordingInfoMin(InfoMin):
    def compute_loss(self, views):
        loss, terms, features = super().compute_loss(views)
        self.record.append(float(loss))
        return loss, terms, features


def _tiny(**kwargs) -> InfoMin:
    return _RecordingInfoMin(backbone="resnet18", proj_hidden_dim=32, proj_output_dim=16, queue_size=64,
                             batch_size=8, lr=0.05, **kwargs)


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=1, **kwargs)


@pytest.mark.usefixtures("one_thread")  # tests/conftest.py
def test_infomin_trains_with_jigsaw_queue_and_ema():
    torch.manual_seed(0)
    model = _tiny(jigsaw=True, shuffle_bn_groups=2)
    model.record = []
    queue_before = model.queue.keys.clone()
    teacher_before = [p.detach().clone() for p in model.teacher_backbone.parameters()]
    loader = torch.utils.data.DataLoader(_Views(24, 9), batch_size=8, drop_last=True)
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, loader)
    assert len(model.record) == 3 and all(math.isfinite(x) for x in model.record)
    assert len(set(model.record)) == 3
    assert int(model.queue.ptr) == 24
    assert not torch.equal(model.queue.keys[:24], queue_before[:24])
    assert torch.equal(model.queue.keys[24:], queue_before[24:])
    torch.testing.assert_close(model.queue.keys[:24].norm(dim=1), torch.ones(24))
    assert all(not torch.equal(a, b) for a, b in zip(teacher_before, model.teacher_backbone.parameters()))
    assert not any(p.requires_grad for p in model.teacher_backbone.parameters())
    logged = set(trainer.logged_metrics)
    assert {"train/loss", "train/nce", "train/nce_jigsaw", "train/pos_logit", "train/acc"} <= logged
    loss = trainer.logged_metrics["train/loss"]
    expected = 0.5 * trainer.logged_metrics["train/nce"] + 0.5 * trainer.logged_metrics["train/nce_jigsaw"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"queue.keys", "queue.ptr"} <= set(model.state_dict())
    # optimiser recipe: SGD, weight decay on every parameter, no teacher parameters
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(opt.param_groups[0]["params"]) == n_trainable


def test_ema_update_is_constant_momentum():
    model = InfoMin(backbone="resnet18", proj_hidden_dim=8, proj_output_dim=4, queue_size=8, jigsaw=False)
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(1.0)
    old = [p.clone() for p in model.teacher_projector.parameters()]
    model.on_after_optimizer_step(1)
    for t, o, p in zip(model.teacher_projector.parameters(), old, model.projector.parameters()):
        torch.testing.assert_close(t, 0.999 * o + 0.001 * p)


def test_view_count_depends_on_jigsaw():
    with pytest.raises(ValueError, match="needs 2 views"):
        InfoMin(backbone="resnet18", queue_size=8, jigsaw=False)._check_views([torch.zeros(2, 3, 8, 8)] * 11)
    with pytest.raises(ValueError, match="needs 11 views"):
        InfoMin(backbone="resnet18", queue_size=8, jigsaw=True)._check_views([torch.zeros(2, 3, 8, 8)] * 2)


@pytest.mark.usefixtures("one_thread")  # tests/conftest.py
def test_infomin_with_datamodule_probe_and_knn():
    from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
    from mvssl_lightning.data import MultiViewDataModule

    torch.manual_seed(0)
    data = MultiViewDataModule(
        dataset="default", views="mvssl_lightning.data.views.infomin.infomin_views_cifar",
        view_kwargs={"jigsaw": False}, batch_size=8, num_workers=0, train_subset=16, test_subset=16,
    )
    model = _tiny(jigsaw=False)
    model.record = []
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=0,
                       callbacks=[OnlineLinearProbe(num_classes=10), OnlineKNN(k=5)])
    trainer.fit(model, datamodule=data)
    assert len(model.record) == 2 and all(math.isfinite(x) for x in model.record)
    metrics = trainer.logged_metrics
    assert {"probe/val_top1", "knn/top1", "train/nce", "train/pos_logit"} <= set(metrics)
    assert "train/nce_jigsaw" not in metrics


def test_posterize_to_zero_bits_is_black_as_in_the_official_code():
    # level < 2.5 keeps int(4 * level / 10) = 0 bits; Pillow >= 10 refuses bits=0, the official
    # (older Pillow) result is a black image
    from PIL import Image

    from mvssl_lightning.data.views.infomin import rand_augment_op

    img = Image.new("RGB", (8, 8), (200, 100, 50))
    out = rand_augment_op(img, "PosterizeTpu", 1.0)
    assert out.size == (8, 8) and out.getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize("name", ["infomin", "infomin_cifar"])
def test_view_kwargs_of_the_infomin_view_reach_it_through_the_recipe_name(name):
    """``views: infomin`` with ``view_kwargs: {ra_magnitude: 3, gray: 0}`` builds those views, without an
    "ignored" warning (the names are arguments of the recipe)."""
    import warnings

    from torchvision import transforms as T

    from mvssl_lightning.data.views import get_view_recipe
    from mvssl_lightning.data.views.infomin import InfoMinRandAugment

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe = get_view_recipe(name, ra_magnitude=3.0, gray=0.0)
    steps = recipe.transforms[0].transforms
    (ra,) = [s for s in steps if isinstance(s, InfoMinRandAugment)]
    (gray,) = [s for s in steps if isinstance(s, T.RandomGrayscale)]
    assert ra.magnitude == 3.0 and gray.p == 0.0
