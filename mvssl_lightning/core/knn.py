"""Weighted k-nearest-neighbour classification of features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"), as lightly's
:func:`lightly.utils.benchmarking.knn_predict`, which computes each chunk. With L2-normalised features, a
bank ``(b_j, c_j)`` and a query ``q``:

* ``s_j = <q, b_j>`` (cosine similarity), ``N_k(q)`` = the ``k`` largest ``s_j``;
* class score ``score_c(q) = sum_{j in N_k(q), c_j = c} exp(s_j / T)``;
* prediction ``argmax_c score_c(q)`` (top-5: the five highest scores).

Used by :class:`~mvssl_lightning.callbacks.OnlineKNN` and, through it, by
:class:`~mvssl_lightning.evaluation.KNNEval`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import Tensor

__all__ = ["knn_classify"]

#: elements of the largest temporary (similarity chunk / one-hot votes) per query chunk
CHUNK_ELEMENTS = 2**25


def knn_classify(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200, temperature: float = 0.1
) -> Tensor:
    """Class ranking ``(Q, num_classes)`` (best first) of ``queries (Q, D)`` against ``bank (N, D)`` with
    labels ``bank_labels (N,)`` in ``[0, num_classes)``; features are L2-normalised here, ``k`` is capped at
    ``N``. The queries are processed in chunks so that no temporary exceeds :data:`CHUNK_ELEMENTS`."""
    queries = F.normalize(queries.float(), dim=1)
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()  # (D, N)
    labels = bank_labels.long()
    k = min(k, bank_t.shape[1])
    chunk = max(1, min(CHUNK_ELEMENTS // (k * num_classes), CHUNK_ELEMENTS // bank_t.shape[1]))
    out = [
        knn_predict(q, bank_t, labels, num_classes=num_classes, knn_k=k, knn_t=temperature)
        for q in queries.split(chunk)
    ]
    if not out:
        return torch.empty(0, num_classes, dtype=torch.long, device=queries.device)
    return torch.cat(out)
