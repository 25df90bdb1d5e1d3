"""Use MVEB inside your own Lightning project, then export the backbone to plain torchvision.

    python examples/use_in_your_project.py            # a few steps on the embedded CIFAR-10 subset (CPU)

Nothing here is specific to our CLI: the method is an ordinary ``LightningModule``, the data module an
ordinary ``LightningDataModule`` and the probe an ordinary ``Callback``.  Swap in your own Trainer
settings, loggers, datasets (``dataset="imagefolder", data_dir=...``) or any lightly transform as
``views``.  The pre-trained backbone comes out as a torchvision ``state_dict``: downstream code needs
neither this library nor Lightning.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import lightning as L
import torch
import torchvision

from mvssl_lightning import MVEB, MultiViewDataModule, OnlineLinearProbe, export_torchvision_state_dict


def main(max_steps: int = 4) -> None:
    L.seed_everything(0)
    data = MultiViewDataModule(
        dataset="default",                   # the embedded 5,000-image CIFAR-10 subset
        views="mveb_multicrop_cifar",        # 2 globals + locals, as MVEB expects
        view_kwargs={"n_local": 2},
        batch_size=16,
        num_workers=0,
        train_subset=256,
        test_subset=64,
    )
    model = MVEB(backbone="resnet50", proj_hidden_dim=256, proj_output_dim=128, optimizer="sgd", lr=0.05)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        callbacks=[OnlineLinearProbe(num_classes=10)],
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)

    # export: a plain torchvision ResNet-50 state_dict (fc excluded), loadable without this library
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mveb_resnet50_backbone.pt"
        torch.save(export_torchvision_state_dict(model.backbone), path)
        resnet = torchvision.models.resnet50()
        missing, unexpected = resnet.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected, (missing, unexpected)
    resnet.fc = torch.nn.Identity()

    model.eval()
    resnet.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        same = torch.allclose(model(x), resnet(x), atol=1e-5)
    print(f"trained {trainer.global_step} steps; torchvision resnet50 reproduces the backbone: {same}")
    assert same


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=4)
    main(parser.parse_args().max_steps)
