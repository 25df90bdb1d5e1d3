"""Weighted k-nearest-neighbour classification of features (Wu et al. 2018, "Unsupervised Feature
Learning via Non-Parametric Instance Discrimination"; the classifier of the official code,
``zhirongw/lemniscate.pytorch``, ``test.py``, as lightly's ``lightly.utils.benchmarking.knn_predict``
computes it). With L2-normalised features, a bank ``(b_j, c_j)`` and a query ``q``:

* ``s_j = <q, b_j>`` (cosine similarity), ``N_k(q)`` = the ``k`` largest ``s_j``;
* class score ``score_c(q) = sum_{j in N_k(q), c_j = c} exp(s_j / T)``;
* prediction ``argmax_c score_c(q)`` (top-5: the five highest scores).

**Bounded memory.** The bank is never copied whole: it is read in chunks of rows (consecutive small
pieces joined up to a chunk; each chunk normalised and cast to float32 on its own), every chunk's
similarities to a chunk of queries are reduced at once to their ``k`` largest, and those are merged into
a running top-``k`` per query (``top-k(A u B) = top-k(top-k(A) u top-k(B))``, exact). No temporary
exceeds ``max_chunk_elements`` elements besides the running ``(Q, k)`` values and indices, so the bank
may be a list of pieces (the batches it was collected in) and held in a lower precision (``bfloat16`` /
``float16``: half the bytes; the similarities are still computed in float32, of the rounded features).

Used by :class:`~mvssl_lightning.callbacks.OnlineKNN` and, through it, by
:class:`~mvssl_lightning.evaluation.KNNEval`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CHUNK_ELEMENTS", "knn_classify", "knn_topk"]

#: elements of the largest temporary (a bank chunk in float32, a chunk of similarities)
CHUNK_ELEMENTS = 2**25

Bank = Union[Tensor, Sequence[Tensor]]


def _pieces(bank: Bank) -> list[Tensor]:
    pieces = [bank] if isinstance(bank, Tensor) else list(bank)
    for p in pieces:
        if p.dim() != 2:
            raise ValueError(f"the kNN bank must be (N, D) rows (or a list of them), got a piece of shape "
                             f"{tuple(p.shape)}")
    return [p for p in pieces if p.shape[0] > 0]


@torch.no_grad()
def knn_topk(queries: Tensor, bank: Bank, k: int, max_chunk_elements: int = CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """The ``k`` largest cosine similarities of each query to the bank, largest first, and their bank rows.

    ``queries (Q, D)``; ``bank (N, D)`` or a list of ``(N_i, D)`` pieces (rows numbered across them);
    ``k <= N``. Returns ``(values (Q, k) float32, indices (Q, k) int64)``, exactly the top-k of the full
    ``(Q, N)`` similarity matrix, computed chunk by chunk (module docstring).
    """
    pieces = _pieces(bank)
    n_total = sum(p.shape[0] for p in pieces)
    if not 1 <= k <= n_total:
        raise ValueError(f"k must be in [1, bank size {n_total}], got {k}")
    q = F.normalize(queries.float(), dim=1)
    dim = q.shape[1]
    rows = max(1, min(n_total, max_chunk_elements // max(dim, 1)))  # bank rows per chunk
    q_rows = max(1, max_chunk_elements // rows)  # queries per chunk of similarities
    top_v = q.new_full((q.shape[0], k), -float("inf"))
    top_i = torch.zeros((q.shape[0], k), dtype=torch.long, device=q.device)
    offset = 0
    for chunk, fresh in _row_chunks(pieces, rows):
        b = chunk.to(q.device, torch.float32)  # (n, D)
        if fresh or b.data_ptr() != chunk.data_ptr():  # our own copy: normalised in place, no third chunk
            b.div_(b.norm(dim=1, keepdim=True).clamp_min_(1e-12))
        else:  # a view of the caller's bank
            b = F.normalize(b, dim=1)
        kk = min(k, b.shape[0])
        for qs in range(0, q.shape[0], q_rows):
            v, i = (q[qs:qs + q_rows] @ b.t()).topk(kk, dim=1)
            merged_v = torch.cat([top_v[qs:qs + q_rows], v], dim=1)
            merged_i = torch.cat([top_i[qs:qs + q_rows], i + offset], dim=1)
            best_v, pos = merged_v.topk(k, dim=1)
            top_v[qs:qs + q_rows] = best_v
            top_i[qs:qs + q_rows] = merged_i.gather(1, pos)
        offset += b.shape[0]
    return top_v, top_i


def _row_chunks(pieces: list[Tensor], rows: int) -> Iterator[tuple[Tensor, bool]]:
    """Consecutive chunks of ``rows`` bank rows (the last one shorter), joining small pieces (the batches the
    bank was collected in) so that each matrix product is large: a copy of at most ``rows`` rows. Each comes
    with whether it is such a copy (``True``) or a view of a piece (``False``)."""
    buf: list[Tensor] = []
    n = 0
    for piece in pieces:
        start = 0
        while start < piece.shape[0]:
            take = min(rows - n, piece.shape[0] - start)
            buf.append(piece[start:start + take])
            n, start = n + take, start + take
            if n == rows:
                yield (buf[0], False) if len(buf) == 1 else (torch.cat(buf), True)
                buf, n = [], 0
    if buf:
        yield (buf[0], False) if len(buf) == 1 else (torch.cat(buf), True)


@torch.no_grad()
def knn_classify(
    queries: Tensor, bank: Bank, bank_labels: Tensor, num_classes: int, k: int = 200, temperature: float = 0.1,
    max_chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """Class ranking ``(Q, num_classes)`` (best first) of ``queries (Q, D)`` against ``bank`` (``(N, D)`` of any
    float dtype, or a list of pieces) with labels ``bank_labels (N,)`` in ``[0, num_classes)``; features are
    L2-normalised here, ``k`` is capped at ``N``; classes of equal score rank by class index. Memory: see
    :func:`knn_topk`."""
    labels = bank_labels.long()
    n_total = sum(p.shape[0] for p in _pieces(bank))
    if labels.shape[0] != n_total:
        raise ValueError(f"bank_labels has {labels.shape[0]} entries for a bank of {n_total} rows")
    if queries.shape[0] == 0:
        return torch.empty(0, num_classes, dtype=torch.long, device=queries.device)
    values, index = knn_topk(queries, bank, min(k, n_total), max_chunk_elements)
    weights = (values / temperature).exp()
    scores = weights.new_zeros(values.shape[0], num_classes)
    scores.scatter_add_(1, labels.to(index.device)[index], weights)
    return scores.argsort(dim=1, descending=True, stable=True)
