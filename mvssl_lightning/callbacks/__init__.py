"""Evaluation callbacks: attach to any ``lightning.Trainer``."""

from mvssl_lightning.callbacks.diagnostics import RepresentationDiagnostics
from mvssl_lightning.callbacks.health import TrainingHealth
from mvssl_lightning.callbacks.knn import OnlineKNN
from mvssl_lightning.callbacks.online_probe import OnlineLinearProbe
from mvssl_lightning.callbacks.preemption import PreemptionCheckpoint, RunCheckpoint
from mvssl_lightning.callbacks.summary import RunSummary

__all__ = [
    "OnlineKNN",
    "OnlineLinearProbe",
    "PreemptionCheckpoint",
    "RepresentationDiagnostics",
    "RunCheckpoint",
    "RunSummary",
    "TrainingHealth",
]
