"""Tests of the evaluation callbacks (OnlineLinearProbe, OnlineKNN) on CPU.

Every check compares against an independent reference: a hand-written float64 kNN, a plain PyTorch
training loop of the probe head, the same run without the callback, or a run without the unlabelled
samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe

# ----------------------------------------------------------------------------- helpers


def make_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def blobs(num_classes: int, n_train: int, n_test: int, dim: int, seed: int = 0, std: float = 0.5):
    """Separable Gaussian blobs: class means ``4 * N(0, I)``, isotropic noise ``std``."""
    g = torch.Generator().manual_seed(seed)
    means = 4.0 * torch.randn(num_classes, dim, generator=g)

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        return means[y] + std * torch.randn(n, dim, generator=g), y

    return draw(n_train), draw(n_test)


class MultiView(Dataset):
    """Yields ``([x, x + noise], y)`` like the multi-view datamodule (views are lists)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.noise = 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return [self.x[i], self.x[i] + self.noise[i]], self.y[i]


class FixedFeatures(pl.LightningModule):
    """Features are the input vectors themselves (``forward`` is the identity).

    ``return_features=True`` follows the method contract (steps return ``{"features": ...}``);
    otherwise ``training_step`` returns a plain loss and ``validation_step`` returns None, so the
    callbacks must use the fallback ``pl_module(x)``.
    """

    def __init__(self, dim: int, return_features: bool = True) -> None:
        super().__init__()
        self.net = nn.Linear(dim, 2)
        self.return_features = return_features

    def forward(self, x):
        return x

    def training_step(self, batch, batch_idx):
        views, _ = batch
        loss = self.net(views[0]).pow(2).mean()
        return {"loss": loss, "features": views[0].detach()} if self.return_features else loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        return {"features": x, "targets": y} if self.return_features else None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class SmallNet(pl.LightningModule):
    """A small trainable module with BatchNorm and Dropout (both sensitive to extra forwards/RNG)."""

    def __init__(self, return_features: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3))
        self.proj = nn.Linear(16, 8)
        self.feat_dim = 16
        self.return_features = return_features

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        views, _ = batch
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        z1, z2 = F.normalize(self.proj(h1), dim=1), F.normalize(self.proj(h2), dim=1)
        loss = -(z1 * z2).sum(1).mean() + z1.mean(0).pow(2).sum()
        return {"loss": loss, "features": h1.detach()} if self.return_features else loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)]


def train_loader(x, y, batch_size=32):
    return DataLoader(MultiView(x, y), batch_size=batch_size, shuffle=False)


def val_loaders(train, test, batch_size=64):
    return [DataLoader(TensorDataset(*d), batch_size=batch_size) for d in (train, test)]


def reference_probe(batches, feat_dim, num_classes, lr=0.1, momentum=0.9, weight_decay=0.0):
    """Plain PyTorch reference of the probe: BN(affine=False) + zero-init Linear, SGD on each batch."""
    bn = nn.BatchNorm1d(feat_dim, affine=False, dtype=torch.float64)
    lin = nn.Linear(feat_dim, num_classes, dtype=torch.float64)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for f, y in batches:
        keep = y >= 0
        loss = F.cross_entropy(lin(bn(f[keep].double())), y[keep])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bn, lin


def brute_force_knn(queries, bank, bank_labels, num_classes, k, t):
    """Float64 weighted kNN straight from the formula (Wu et al. 2018), one query at a time."""
    q = queries.double()
    b = bank.double()
    q = q / q.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    scores = torch.zeros(len(q), num_classes, dtype=torch.float64)
    for i in range(len(q)):
        sims = [float(q[i] @ b[j]) for j in range(len(b))]
        nearest = sorted(range(len(b)), key=lambda j: -sims[j])[:k]
        for j in nearest:
            scores[i, int(bank_labels[j])] += math.exp(sims[j] / t)
    return scores


# ----------------------------------------------------------------------------- linear probe


@pytest.mark.parametrize("return_features", [True, False], ids=["features", "fallback-forward"])
def test_probe_learns_separable_blobs(return_features):
    train, test = blobs(num_classes=6, n_train=512, n_test=256, dim=16)
    probe = OnlineLinearProbe(num_classes=6, optimizer="sgd", lr=0.1)
    trainer = make_trainer(max_epochs=3, callbacks=[probe])
    trainer.fit(FixedFeatures(16, return_features), train_loader(*train), val_loaders(train, test))
    m = trainer.callback_metrics
    assert m["probe/val_top1"] > 0.95
    assert m["probe/val_top5"] == pytest.approx(1.0)
    assert m["probe/train_top1_epoch"] > 0.9
    assert torch.isfinite(m["probe/train_loss_epoch"])
    # independent check of the logged accuracy: the head's own predictions on the test set
    pred = probe.predict(test[0]).argmax(1)
    assert float(m["probe/val_top1"]) == pytest.approx((pred == test[1]).float().mean().item())


def test_probe_matches_plain_pytorch_reference():
    """The head after training equals a hand-written SGD loop over the same batches."""
    train, test = blobs(num_classes=4, n_train=128, n_test=32, dim=8)
    y = train[1].clone()
    y[::5] = -1  # some unknown labels
    probe = OnlineLinearProbe(num_classes=4, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)
    trainer = make_trainer(max_epochs=2, callbacks=[probe], limit_val_batches=0)
    trainer.fit(FixedFeatures(8), train_loader(train[0], y, batch_size=32))
    batches = [(train[0][i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)] * 2
    bn, lin = reference_probe(batches, 8, 4, lr=0.05, momentum=0.9, weight_decay=1e-3)
    torch.testing.assert_close(probe.head[-1].weight.double(), lin.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe.head[-1].bias.double(), lin.bias.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(probe.head[0].running_mean.double(), bn.running_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("return_features", [True, False], ids=["features", "fallback-forward"])
def test_probe_leaves_method_untouched(return_features):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)

    def run(with_probe: bool):
        pl.seed_everything(7)
        model = SmallNet(return_features)
        probe = OnlineLinearProbe(num_classes=3)
        trainer = make_trainer(max_steps=8, callbacks=[probe] if with_probe else [], limit_val_batches=0)
        trainer.fit(model, train_loader(x, y, batch_size=16))
        return model, probe, trainer

    ref, _, _ = run(False)
    model, probe, trainer = run(True)
    for (name, a), (_, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name  # parameters and BatchNorm buffers, bitwise
    assert probe.head is not None and probe.head[-1].weight.abs().sum() > 0  # the probe did train
    method_params = {id(p) for opt in trainer.optimizers for group in opt.param_groups for p in group["params"]}
    assert not method_params & {id(p) for p in probe.head.parameters()}
    assert not {id(p) for p in model.parameters()} & {id(p) for p in probe.head.parameters()}


@pytest.mark.parametrize("bad", [7, -3])
def test_probe_rejects_out_of_range_labels(bad):
    x = torch.randn(32, 4)
    y = torch.zeros(32, dtype=torch.long)
    y[5] = bad
    trainer = make_trainer(max_steps=2, callbacks=[OnlineLinearProbe(num_classes=4)], limit_val_batches=0)
    with pytest.raises(ValueError, match=rf"num_classes=4.*\[{bad}\]"):
        trainer.fit(FixedFeatures(4), train_loader(x, y, batch_size=16))


def test_probe_ignores_unknown_labels():
    """Training with extra (garbage) samples labelled -1 equals training without them."""
    train, _ = blobs(num_classes=3, n_train=96, n_test=1, dim=8)
    x, y = train
    # interleave 4 unlabelled, huge-valued samples into every batch of 12 labelled ones
    xs, ys = [], []
    for i in range(0, 96, 12):
        xs += [x[i : i + 12], 100.0 * torch.randn(4, 8)]
        ys += [y[i : i + 12], torch.full((4,), -1)]
    x_mixed, y_mixed = torch.cat(xs), torch.cat(ys)

    def head_after(xd, yd, bs):
        probe = OnlineLinearProbe(num_classes=3)
        make_trainer(max_epochs=1, callbacks=[probe], limit_val_batches=0).fit(
            FixedFeatures(8), train_loader(xd, yd, batch_size=bs)
        )
        return probe.head

    a, b = head_after(x_mixed, y_mixed, 16), head_after(x, y, 12)
    torch.testing.assert_close(a[-1].weight, b[-1].weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(a[0].running_var, b[0].running_var, rtol=0, atol=1e-6)

    # a batch with no labelled sample is skipped (no step, no error)
    probe = OnlineLinearProbe(num_classes=3)
    make_trainer(max_epochs=1, callbacks=[probe], limit_val_batches=0).fit(
        FixedFeatures(8), train_loader(x, torch.full_like(y, -1), batch_size=12)
    )
    assert probe.head is None


def test_probe_state_dict_round_trip_and_exact_resume(tmp_path: Path):
    train, test = blobs(num_classes=5, n_train=128, n_test=64, dim=8)

    def fit(max_epochs, probe, ckpt_path=None):
        trainer = make_trainer(max_epochs=max_epochs, callbacks=[probe])
        trainer.fit(FixedFeatures(8), train_loader(*train), val_loaders(train, test), ckpt_path=ckpt_path)
        return trainer

    # continuous reference run: 2 epochs
    ref = OnlineLinearProbe(num_classes=5)
    fit(2, ref)

    # 1 epoch, checkpoint, then the state loads with weights_only=True and predicts identically
    probe = OnlineLinearProbe(num_classes=5)
    trainer = fit(1, probe)
    ckpt = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"][probe.state_key]
    torch.save(probe.state_dict(), tmp_path / "probe_state.pt")
    state_alone = torch.load(tmp_path / "probe_state.pt", weights_only=True)
    for s in (state, state_alone):
        restored = OnlineLinearProbe(num_classes=5)
        restored.load_state_dict(s)
        assert torch.equal(restored.predict(test[0]), probe.predict(test[0]))

    # resuming from the checkpoint continues the probe exactly (head, BN stats, SGD momentum)
    resumed = OnlineLinearProbe(num_classes=5)
    fit(2, resumed, ckpt_path=ckpt)
    for (name, a), (_, b) in zip(ref.head.state_dict().items(), resumed.head.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(ref.predict(test[0]), resumed.predict(test[0]))

    with pytest.raises(ValueError, match="num_classes"):
        OnlineLinearProbe(num_classes=6).load_state_dict(state)


# ----------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("return_features", [True, False], ids=["features", "fallback-forward"])
def test_knn_matches_brute_force(return_features):
    g = torch.Generator().manual_seed(0)
    num_classes, dim, k, t = 6, 16, 15, 0.1
    centres = torch.randn(num_classes, dim, generator=g)
    bank_y = torch.randint(0, num_classes, (300,), generator=g)
    bank = centres[bank_y] + 1.5 * torch.randn(300, dim, generator=g)
    bank_y_obs = bank_y.clone()
    bank_y_obs[::7] = -1  # unknown labels are left out of the bank
    query_y = torch.randint(0, num_classes, (120,), generator=g)
    queries = centres[query_y] + 1.5 * torch.randn(120, dim, generator=g)

    knn = OnlineKNN(k=k, temperature=t)  # num_classes inferred from the bank
    trainer = make_trainer(callbacks=[knn])
    loaders = [
        DataLoader(TensorDataset(bank, bank_y_obs), batch_size=64),
        DataLoader(TensorDataset(queries, query_y), batch_size=50),
    ]
    trainer.validate(FixedFeatures(dim, return_features), loaders, verbose=False)

    labelled = bank_y_obs >= 0
    scores = brute_force_knn(queries, bank[labelled], bank_y_obs[labelled], num_classes, k, t)
    ref_top1 = scores.argmax(1)
    ref_top5 = scores.topk(5, dim=1).indices
    ranking = knn.predict(queries, bank[labelled], bank_y_obs[labelled], num_classes)
    assert torch.equal(ranking[:, 0], ref_top1)
    acc1 = (ref_top1 == query_y).double().mean().item()
    acc5 = (ref_top5 == query_y[:, None]).any(1).double().mean().item()
    assert 0.3 < acc1 < 1.0  # a non-trivial problem
    assert trainer.callback_metrics["knn/top1"].item() == pytest.approx(acc1, abs=1e-6)
    assert trainer.callback_metrics["knn/top5"].item() == pytest.approx(acc5, abs=1e-6)


def test_knn_max_bank_size_and_small_bank():
    g = torch.Generator().manual_seed(1)
    bank, bank_y = torch.randn(100, 4, generator=g), torch.randint(0, 3, (100,), generator=g)
    queries, query_y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    knn = OnlineKNN(k=200, temperature=0.5, max_bank_size=30)  # k > bank: capped to the bank size
    trainer = make_trainer(callbacks=[knn])
    loaders = [DataLoader(TensorDataset(bank, bank_y), batch_size=16), DataLoader(TensorDataset(queries, query_y))]
    trainer.validate(FixedFeatures(4), loaders, verbose=False)
    scores = brute_force_knn(queries, bank[:30], bank_y[:30], 3, 30, 0.5)
    acc1 = (scores.argmax(1) == query_y).double().mean().item()
    assert trainer.callback_metrics["knn/top1"].item() == pytest.approx(acc1, abs=1e-6)
    assert "knn/top5" not in trainer.callback_metrics  # fewer than 5 classes
    assert knn._bank == [] and knn._queries == []  # buffers freed


# ----------------------------------------------------------------------------- DDP (2 CPU processes)


class _DumpProbe(pl.Callback):
    """Saves each process's probe head and its local training batches (the spawned copies of the
    callbacks are not returned to the test process)."""

    def __init__(self, probe: OnlineLinearProbe, out: Path) -> None:
        self.probe, self.out, self.batches = probe, out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append((batch[0][0].clone(), batch[1].clone()))

    def on_train_end(self, trainer, pl_module):
        state = {k: v.clone() for k, v in self.probe.head.state_dict().items()}
        torch.save({"head": state, "batches": self.batches}, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed (gloo)")
def test_ddp_probe_identical_and_knn_uses_gathered_bank(tmp_path: Path):
    train, test = blobs(num_classes=5, n_train=256, n_test=64, dim=8, std=2.5)
    bs, world = 16, 2
    probe = OnlineLinearProbe(num_classes=5, optimizer="sgd", lr=0.05)
    knn = OnlineKNN(k=150, temperature=0.1)
    trainer = make_trainer(
        devices=world, strategy="ddp_spawn", max_epochs=1,
        callbacks=[probe, knn, _DumpProbe(probe, tmp_path)], use_distributed_sampler=True,
    )
    trainer.fit(FixedFeatures(8), train_loader(*train, batch_size=bs), val_loaders(train, test))

    # every process holds the same head ...
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in r0["head"]:
        assert torch.equal(r0["head"][name], r1["head"][name]), name
    # ... equal to the single-process update on the global batch (the union of the local batches)
    assert len(r0["batches"]) == len(r1["batches"]) == 256 // (bs * world)
    batches = [
        (torch.cat([f0, f1]), torch.cat([y0, y1]))
        for (f0, y0), (f1, y1) in zip(r0["batches"], r1["batches"])
    ]
    bn, lin = reference_probe(batches, 8, 5, lr=0.05)
    torch.testing.assert_close(r0["head"]["1.weight"].double(), lin.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r0["head"]["0.running_var"].double(), bn.running_var, rtol=1e-4, atol=1e-5)

    # kNN on rank 0 used the full bank (gathered), not only its own half
    def acc(bank, bank_y):
        scores = brute_force_knn(test[0], bank, bank_y, 5, 150, 0.1)
        return (scores.argmax(1) == test[1]).double().mean().item()

    full, half = acc(*train), acc(train[0][0::2], train[1][0::2])
    assert full != half  # the check below can tell the two apart
    assert trainer.callback_metrics["knn/top1"].item() == pytest.approx(full, abs=1e-6)
