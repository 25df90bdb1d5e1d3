"""mvssl_lightning: information-theoretic multi-view self-supervised learning on PyTorch Lightning."""

from mvssl_lightning.callbacks import OnlineKNN, OnlineLinearProbe
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.losses import (
    AMDIMLoss,
    ERDiscreteLoss,
    ERSphereLoss,
    InfoNCEQueueLoss,
    MECLoss,
    MVEBLoss,
    amdim_loss,
    amdim_nce,
    er_discrete_entropy,
    er_discrete_reconstruction,
    er_sphere_entropy,
    er_sphere_reconstruction,
    infonce_queue_loss,
    mec_loss,
    mec_taylor_logdet,
    mveb_entropy_surrogate,
    mveb_loss,
)
from mvssl_lightning.methods import AMDIM, ERBYOL, ERDINO, MEC, MVEB, ERSimCLR, ERSwAV, InfoMin, SiameseModule
from mvssl_lightning.models import build_backbone, build_resnet, export_torchvision_state_dict

__version__ = "0.1.0"

__all__ = [
    "AMDIM",
    "AMDIMLoss",
    "ERBYOL",
    "ERDINO",
    "ERDiscreteLoss",
    "ERSimCLR",
    "ERSphereLoss",
    "ERSwAV",
    "InfoMin",
    "InfoNCEQueueLoss",
    "MEC",
    "MECLoss",
    "MVEB",
    "MVEBLoss",
    "MultiViewDataModule",
    "OnlineKNN",
    "OnlineLinearProbe",
    "SiameseModule",
    "amdim_loss",
    "amdim_nce",
    "build_backbone",
    "build_resnet",
    "er_discrete_entropy",
    "er_discrete_reconstruction",
    "er_sphere_entropy",
    "er_sphere_reconstruction",
    "export_torchvision_state_dict",
    "infonce_queue_loss",
    "mec_loss",
    "mec_taylor_logdet",
    "mveb_entropy_surrogate",
    "mveb_loss",
]
