"""The online probe's defaults never diverge: after one epoch its loss is below ln(C) (uniform guessing)
on random-initialisation features of the embedded data and on nearly collapsed features."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mvssl_lightning import OnlineLinearProbe
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.models import build_backbone

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


class GivenFeatures(pl.LightningModule):
    """Training batches are ``(features, labels)``; the step hands the features to the callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        return {"loss": self.dummy * 0.0, "features": x}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def one_epoch_loss(x: torch.Tensor, y: torch.Tensor, probe: OnlineLinearProbe, batch_size: int = 128):
    """Train the probe for one epoch of shuffled batches: ``(its training loss over the epoch, as logged,
    its cross-entropy on all of x afterwards)``."""
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g, drop_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe])
    trainer.fit(GivenFeatures(), loader)
    return float(trainer.callback_metrics["probe/train_loss_epoch"]), float(F.cross_entropy(probe.predict(x), y))


@pytest.fixture(scope="module")
def random_init_features():
    """Pooled features of a random-initialisation ResNet-18 (ImageNet stem, as the quickstart) of the
    5,000 embedded training images."""
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18")
    data = MultiViewDataModule("default", views="two_views_cifar", batch_size=256, eval_batch_size=500,
                               num_workers=0)
    data.setup()
    feats, labels = [], []
    with torch.no_grad():
        for x, y in data.val_dataloader()[0]:
            feats.append(net.eval()(x))
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def test_default_probe_beats_uniform_on_random_init_features_within_one_epoch(random_init_features):
    x, y = random_init_features
    # the former default, SGD lr 0.1 momentum 0.9, over-shoots here: 2.85 over the epoch, above ln 10
    during, after = one_epoch_loss(x, y, OnlineLinearProbe(num_classes=10))
    assert during < math.log(10) and after < math.log(10), (during, after)


def test_default_probe_beats_uniform_on_nearly_collapsed_features():
    """One dominant direction (norm 10) plus a class signal 1000x smaller and noise: what a collapsing
    method gives. BatchNorm standardisation and AdamW's scale-free steps still find the signal."""
    g = torch.Generator().manual_seed(1)
    n, d, c = 4096, 256, 10
    y = torch.randint(0, c, (n,), generator=g)
    u = F.normalize(torch.randn(d, generator=g), dim=0)
    means = torch.randn(c, d, generator=g)
    x = 10.0 * u + 0.01 * means[y] + 0.01 * torch.randn(n, d, generator=g)
    during, after = one_epoch_loss(x, y, OnlineLinearProbe(num_classes=c))
    assert during < math.log(c) and after < math.log(c), (during, after)
