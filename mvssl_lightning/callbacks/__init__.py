"""Evaluation callbacks: attach to any ``lightning.Trainer``."""

from mvssl_lightning.callbacks.knn import OnlineKNN
from mvssl_lightning.callbacks.online_probe import OnlineLinearProbe

__all__ = ["OnlineKNN", "OnlineLinearProbe"]
