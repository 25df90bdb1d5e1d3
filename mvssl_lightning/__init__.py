"""mvssl_lightning: information-theoretic multi-view self-supervised learning on PyTorch Lightning."""

from mvssl_lightning.callbacks import (
    OnlineKNN,
    OnlineLinearProbe,
    PreemptionCheckpoint,
    RepresentationDiagnostics,
    TrainingHealth,
)
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.evaluation import FineTune, LinearEval
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
from mvssl_lightning.models import build_backbone, build_resnet, export_torchvision_state_dict, torchvision_resnet
from mvssl_lightning.precision import auto_precision

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
    "FineTune",
    "InfoMin",
    "InfoNCEQueueLoss",
    "LinearEval",
    "MEC",
    "MECLoss",
    "MVEB",
    "MVEBLoss",
    "MultiViewDataModule",
    "OnlineKNN",
    "OnlineLinearProbe",
    "PreemptionCheckpoint",
    "RepresentationDiagnostics",
    "SiameseModule",
    "TrainingHealth",
    "amdim_loss",
    "amdim_nce",
    "auto_precision",
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
    "torchvision_resnet",
]
