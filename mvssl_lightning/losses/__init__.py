"""Pure objectives (tensors in, scalar out) and thin ``nn.Module`` wrappers, one file per paper."""

from mvssl_lightning.losses.amdim import AMDIMLoss, amdim_loss, amdim_nce, amdim_terms
from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.er import (
    ERDiscreteLoss,
    ERSphereLoss,
    er_discrete_entropy,
    er_discrete_reconstruction,
    er_sphere_entropy,
    er_sphere_reconstruction,
    log_bessel_iv,
    vmf_log_normalizer,
)
from mvssl_lightning.losses.infonce import InfoNCEQueueLoss, infonce_queue_logits, infonce_queue_loss
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
    "AMDIMLoss",
    "amdim_loss",
    "amdim_nce",
    "amdim_terms",
    "ERDiscreteLoss",
    "ERSphereLoss",
    "InfoNCEQueueLoss",
    "MECLoss",
    "MVEBLoss",
    "er_discrete_entropy",
    "er_discrete_reconstruction",
    "er_sphere_entropy",
    "er_sphere_reconstruction",
    "gather_with_grad",
    "infonce_queue_logits",
    "infonce_queue_loss",
    "log_bessel_iv",
    "mec_lambda",
    "mec_loss",
    "mec_taylor_logdet",
    "mveb_alignment",
    "mveb_entropy",
    "mveb_entropy_surrogate",
    "mveb_loss",
    "stein_score",
    "vmf_log_normalizer",
]
