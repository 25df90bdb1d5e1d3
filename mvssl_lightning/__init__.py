"""mvssl_lightning: information-theoretic multi-view self-supervised learning on PyTorch Lightning."""

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.losses import MECLoss, MVEBLoss, mec_loss, mec_taylor_logdet, mveb_entropy_surrogate, mveb_loss
from mvssl_lightning.methods import MEC, MVEB, SiameseModule
from mvssl_lightning.models import build_resnet, export_torchvision_state_dict

__version__ = "0.1.0"

__all__ = [
    "MEC",
    "MECLoss",
    "MVEB",
    "MVEBLoss",
    "MultiViewDataModule",
    "OnlineKNN",
    "OnlineLinearProbe",
    "SiameseModule",
    "build_resnet",
    "export_torchvision_state_dict",
    "mec_loss",
    "mec_taylor_logdet",
    "mveb_entropy_surrogate",
    "mveb_loss",
]
