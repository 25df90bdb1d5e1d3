"""Pure objectives (tensors in, scalar out) and thin ``nn.Module`` wrappers, one file per paper."""

from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.mec import MECLoss, mec_lambda, mec_loss, mec_taylor_logdet
from mvssl_lightning.losses.mveb import (
    MVEBLoss,
    mveb_alignment,
    mveb_entropy,
    mveb_entropy_surrogate,
    mveb_loss,
    stein_score,
)

__all__ = [
    "MECLoss",
    "MVEBLoss",
    "gather_with_grad",
    "mec_lambda",
    "mec_loss",
    "mec_taylor_logdet",
    "mveb_alignment",
    "mveb_entropy",
    "mveb_entropy_surrogate",
    "mveb_loss",
    "stein_score",
]
