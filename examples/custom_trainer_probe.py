"""Online linear probe and kNN accuracy for your own LightningModule, on a plain ``lightning.Trainer``.

``OnlineLinearProbe`` and ``OnlineKNN`` are ordinary Lightning callbacks: they need nothing from
``mvssl_lightning``'s methods. They work with any module that either

* returns ``{"loss": loss, "features": f.detach()}`` from ``training_step`` and
  ``{"features": f, "targets": y}`` from ``validation_step`` (what our methods do: no extra forward), or
* only defines ``forward(x) -> features (B, D)`` and returns a plain loss (this example): the callbacks
  then call ``pl_module(x)`` under ``torch.no_grad()`` (in eval mode, so BatchNorm statistics and the
  random-number stream of the module stay untouched). ``validation_step`` must still exist (it may
  return None), or Lightning skips validation.

Batches are ``(x, y)`` or ``(views, y)`` with ``views`` a list (the first view is used) and
``y (B,)`` int64, ``-1`` for an unknown label. Validation loader 0 is the kNN bank (train images, eval
transform), loader 1 the test images, on which the probe and the kNN are scored.

Run (offline, CPU, well under a minute)::

    python examples/custom_trainer_probe.py

The data are synthetic 32x32 images of 10 classes (a class colour and stripe orientation, plus
noise); the module is a tiny SimCLR-style contrastive network. Expect the probe and kNN top-1 well
above the 10 % of chance after a few epochs.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe

NUM_CLASSES = 10


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (3, 32, 32) in [0, 1]: class colour x stripes of a class angle, plus noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(NUM_CLASSES, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    angle = y.float() * torch.pi / NUM_CLASSES
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    phase = torch.rand(n, 1, 1, generator=g) * 6.28
    stripes = torch.sin(0.6 * (xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]) + phase)
    x = colours[y][:, :, None, None] * (0.6 + 0.4 * stripes[:, None])
    x = x + 0.3 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


class TwoViews(Dataset):
    """Training set yielding ``([view1, view2], y)``: random crop (pad 4), flip, brightness jitter."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def _view(self, img: torch.Tensor) -> torch.Tensor:
        i, j = torch.randint(0, 9, (2,)).tolist()
        img = F.pad(img, (4, 4, 4, 4), mode="reflect")[:, i : i + 32, j : j + 32]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img * (0.8 + 0.4 * torch.rand(()))).clamp(0, 1)

    def __getitem__(self, idx: int):
        img = self.x[idx]
        return [self._view(img), self._view(img)], self.y[idx]


class TinySimCLR(pl.LightningModule):
    """A user's own module: ``forward(x) -> features``; ``training_step`` returns a plain loss."""

    def __init__(self, temperature: float = 0.2, lr: float = 0.05) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.projector = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.temperature, self.lr = temperature, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, 64): what the probe and the kNN consume

    def training_step(self, batch, batch_idx):
        (x1, x2), _ = batch  # labels are not used by the method
        z = F.normalize(self.projector(self.backbone(torch.cat([x1, x2]))), dim=1)
        sim = z @ z.t() / self.temperature
        sim.fill_diagonal_(float("-inf"))
        n = x1.shape[0]
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        loss = F.cross_entropy(sim, positives)  # NT-Xent
        self.log("train/loss", loss, prog_bar=True)
        return loss  # no "features": the callbacks fall back to self(x)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return None  # nothing to do; the callbacks compute self(images) themselves

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    pl.seed_everything(0)
    x_train, y_train = synthetic_images(1200, seed=1)
    x_test, y_test = synthetic_images(400, seed=2)
    y_train[::4] = -1  # a quarter of the training labels unknown: ignored by probe and kNN bank

    train = DataLoader(TwoViews(x_train, y_train), batch_size=128, shuffle=True, drop_last=True)
    val = [
        DataLoader(TensorDataset(x_train, y_train), batch_size=256),  # 0: kNN bank
        DataLoader(TensorDataset(x_test, y_test), batch_size=256),  # 1: probe / kNN queries
    ]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[
            OnlineLinearProbe(num_classes=NUM_CLASSES),  # evaluates on val loader 1
            OnlineKNN(k=20, temperature=0.1, num_classes=NUM_CLASSES),  # bank 0, queries 1
        ],
    )
    trainer.fit(TinySimCLR(), train, val)
    m = trainer.callback_metrics
    print(
        f"probe top-1 {m['probe/val_top1']:.3f}  top-5 {m['probe/val_top5']:.3f}  |  "
        f"kNN top-1 {m['knn/top1']:.3f}  top-5 {m['knn/top5']:.3f}  (chance {1 / NUM_CLASSES:.2f})"
    )


if __name__ == "__main__":
    main()
