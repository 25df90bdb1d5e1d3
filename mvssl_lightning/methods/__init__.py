"""The methods, one ``LightningModule`` each on :class:`SiameseModule`, and :data:`METHODS`, the registry
that the CLI docs, the tests, the benchmarks and the README's method table read.

Adding a method: its file here (the algorithm box), its entry in :data:`METHODS` (and its export from
``mvssl_lightning``), a config in ``configs/`` and a docs page in ``docs/methods/``.
"""

from mvssl_lightning.methods.amdim import AMDIM
from mvssl_lightning.methods.base import SiameseModule
from mvssl_lightning.methods.er import ERBYOL, ERDINO, ERSimCLR, ERSwAV
from mvssl_lightning.methods.infomin import InfoMin
from mvssl_lightning.methods.mec import MEC
from mvssl_lightning.methods.mveb import MVEB

#: every method of the library, by the short name the configs, tests and benchmarks use
METHODS: dict[str, type[SiameseModule]] = {
    "mveb": MVEB,
    "mec": MEC,
    "amdim": AMDIM,
    "infomin": InfoMin,
    "er_simclr": ERSimCLR,
    "er_byol": ERBYOL,
    "er_dino": ERDINO,
    "er_swav": ERSwAV,
}

__all__ = ["AMDIM", "ERBYOL", "ERDINO", "ERSimCLR", "ERSwAV", "InfoMin", "MEC", "METHODS", "MVEB", "SiameseModule"]
