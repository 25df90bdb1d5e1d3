"""InfoNCE against a queue of negatives (MoCo; InfoMin, Tian et al., NeurIPS 2020, §4.2 / App. D).

Computes what the official code computes (``HobbitLong/PyContrast``, ``pycontrast/memory/mem_moco.py``
``BaseMoCo._compute_logit`` + ``nn.CrossEntropyLoss``)::

    logits_i = [ <q_i, k_i>,  <q_i, Q_1>, ..., <q_i, Q_K> ] / tau            (1 + K entries)
    l(q)     = mean_i  -log softmax(logits_i)_0
             = mean_i  [ log( e^{<q_i,k_i>/tau} + sum_j e^{<q_i,Q_j>/tau} ) - <q_i,k_i>/tau ]

``q (B, D)`` are the unit-norm queries (online encoder), ``k (B, D)`` the unit-norm positive keys
(momentum encoder, no gradient), ``Q (K, D)`` the queue of past keys (the negatives), ``tau = 0.15``
for InfoMin.  ``-l`` is the InfoNCE lower bound on ``I(q; k)`` up to the constant ``log(K + 1)``.

The logits and the log-sum-exp are computed in float32 also under bf16/fp16 autocast (``tau = 0.15``
turns bf16 rounding of the similarities into large logit errors).  Unlike the official code we do
not ``squeeze`` the logits, so a batch of one works.

Distributed (official behaviour, ``gather_distributed=False``): each process uses its local ``q``
and ``k`` with the shared (identical) queue, and DDP averages the gradients.  Every term of the mean
depends on one ``(q_i, k_i)`` pair only, so with equal per-process batches this already equals the
single-process loss on the global batch; ``gather_distributed=True`` gathers ``q`` and ``k`` (with
gradients) and averages over the global batch, which gives the same update and only costs
communication.  It exists for uniformity with the other losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvssl_lightning.losses.distributed import gather_with_grad
from mvssl_lightning.losses.precision import at_least_float32

__all__ = ["InfoNCEQueueLoss", "infonce_queue_logits", "infonce_queue_loss"]


def _check(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> None:
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, D={q.shape[1]}), got {tuple(queue.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")




def infonce_queue_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.15) -> Tensor:
    """Logits ``(B, 1 + K)``: column 0 is ``<q_i, k_i> / tau``, column ``1 + j`` is ``<q_i, Q_j> / tau``.

    Half-precision inputs are promoted to float32 (float64 stays float64); ``k`` and ``queue`` are
    treated as constants (detached), as in the official code.
    """
    _check(q, k, queue, temperature)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = at_least_float32(q)
        k = at_least_float32(k.detach()).to(q.dtype)
        queue = at_least_float32(queue.detach()).to(q.dtype)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue.T
        return torch.cat([positive, negative], dim=1) / temperature


def infonce_queue_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.15) -> Tensor:
    """``CE([<q,k>, q Q^T] / tau, label 0)`` averaged over the batch (float32 or float64 scalar).

    Args:
        q: unit-norm queries ``(B, D)`` (gradient flows into them).
        k: unit-norm positive keys ``(B, D)`` (no gradient).
        queue: negatives ``(K, D)``, unit-norm rows (no gradient).
        temperature: ``tau`` (0.15 in InfoMin, 0.07 in MoCo v1, 0.2 in MoCo v2).
    """
    logits = infonce_queue_logits(q, k, queue, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


class InfoNCEQueueLoss(nn.Module):
    """Module wrapper of :func:`infonce_queue_loss`.

    ``forward(q, k, queue)`` returns ``(loss, {"pos_logit", "acc"})``: the mean positive similarity
    ``<q_i, k_i>`` (not divided by ``tau``) and the contrastive top-1 accuracy (the fraction of
    queries whose positive beats every negative; the official code's ``acc``), both detached.
    """

    def __init__(self, temperature: float = 0.15, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.gather_distributed:
            q, k = gather_with_grad(q), gather_with_grad(k.detach())
        logits = infonce_queue_logits(q, k, queue, self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            pos = logits[:, 0] * self.temperature
            acc = (logits.argmax(dim=1) == 0).float().mean()
        return loss, {"pos_logit": pos.mean(), "acc": acc}

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"
