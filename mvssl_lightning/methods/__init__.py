from mvssl_lightning.methods.amdim import AMDIM
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.er import ERBYOL, ERDINO, ERSimCLR, ERSwAV
from mvssl_lightning.methods.infomin import InfoMin
from mvssl_lightning.methods.mec import MEC
from mvssl_lightning.methods.mveb import MVEB

__all__ = ["AMDIM", "ERBYOL", "ERDINO", "ERSimCLR", "ERSwAV", "InfoMin", "MEC", "MVEB", "SiameseModule"]
