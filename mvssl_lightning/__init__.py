"""mvssl_lightning: information-theoretic multi-view self-supervised learning on PyTorch Lightning.

The top level holds what a user composes: the methods, the data modules, the callbacks, the evaluation
modules, the loss modules and the weight export. Functional objectives live in
:mod:`mvssl_lightning.losses`, backbone builders in :mod:`mvssl_lightning.models`, the method registry
in :mod:`mvssl_lightning.methods` (``METHODS``), and the shared lower layer in :mod:`mvssl_lightning.core`.
"""

from mvssl_lightning.callbacks import (
    OnlineKNN,
    OnlineLinearProbe,
    PreemptionCheckpoint,
    RepresentationDiagnostics,
    RunCheckpoint,
    RunSummary,
    TrainingHealth,
)
from mvssl_lightning.data import MultiViewDataModule
from mvssl_lightning.evaluation import FineTune, KNNEval, LabeledDataModule, LinearEval
from mvssl_lightning.export import export_checkpoint, load_pretrained
from mvssl_lightning.losses import AMDIMLoss, ERDiscreteLoss, ERSphereLoss, InfoNCEQueueLoss, MECLoss, MVEBLoss
from mvssl_lightning.methods import AMDIM, ERBYOL, ERDINO, MEC, MVEB, ERSimCLR, ERSwAV, InfoMin, SiameseModule
from mvssl_lightning.models import export_torchvision_state_dict

__version__ = "0.1.0"

__all__ = [
    # methods
    "AMDIM",
    "ERBYOL",
    "ERDINO",
    "ERSimCLR",
    "ERSwAV",
    "InfoMin",
    "MEC",
    "MVEB",
    "SiameseModule",
    # data
    "LabeledDataModule",
    "MultiViewDataModule",
    # callbacks
    "OnlineKNN",
    "OnlineLinearProbe",
    "PreemptionCheckpoint",
    "RepresentationDiagnostics",
    "RunCheckpoint",
    "RunSummary",
    "TrainingHealth",
    # evaluation
    "FineTune",
    "KNNEval",
    "LinearEval",
    # losses
    "AMDIMLoss",
    "ERDiscreteLoss",
    "ERSphereLoss",
    "InfoNCEQueueLoss",
    "MECLoss",
    "MVEBLoss",
    # weights out
    "export_checkpoint",
    "export_torchvision_state_dict",
    "load_pretrained",
]
