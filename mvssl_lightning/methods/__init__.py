from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.mec import MEC
from mvssl_lightning.methods.mveb import MVEB

__all__ = ["MEC", "MVEB", "SiameseModule"]
