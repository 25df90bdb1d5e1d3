"""ER versions of SimCLR, BYOL, DINO and SwAV (Rodríguez-Gálvez et al., "The Role of Entropy and
Reconstruction in Multi-View Self-Supervised Learning", ICML 2023, arXiv 2307.10907).

Every variant minimises the ER bound's negative (estimators and objectives:
:mod:`mvssl_lightning.losses.er`)::

    L = w_rec * reconstruction - w_ent * entropy,    I(Z1; Z2) >= H(Z2) + E[log q(Z2 | Z1)]

The official code (``apple/ml-entropy-reconstruction``, ``entropy_reconstruction.py``) provides only
the estimators.  How each host method is turned into its ER version (which branch the entropy is
estimated on, kappa, weights, stop-gradients, EMA) is described in the paper body, which we could not
consult: the choices in these modules are **UNVERIFIED**, derived from the bound, and every one is a
constructor argument (``docs/methods/er.md``).  Common to all variants: the entropy is estimated on a
branch that receives gradients (an EMA target has none), the reconstruction predicts the
(stop-gradient) target when there is one, and ``gather_distributed`` estimates the entropy on the
global batch.

Logged terms: ``train/reconstruction``, ``train/entropy`` and the method-specific ones.
"""

from mvssl_lightning.methods.er.byol import ERBYOL
from mvssl_lightning.methods.er.dino import ERDINO
from mvssl_lightning.methods.er.simclr import ERSimCLR
from mvssl_lightning.methods.er.swav import ERSwAV

__all__ = ["ERBYOL", "ERDINO", "ERSimCLR", "ERSwAV"]
