"""Online weighted k-nearest-neighbour evaluation of the features during validation.

The classifier (Wu et al. 2018, InstDisc; equations in :mod:`mvssl_lightning.core.knn`) scores every
query ``q`` against a labelled bank by ``score_c(q) = sum_{j in N_k(q), c_j = c} exp(<q, b_j> / T)``.

The bank is the validation loader ``bank_dataloader_idx`` (our datamodule: the train set with the
eval transform), the queries are loader ``query_dataloader_idx`` (the test set). Under DDP the bank is
gathered so every process searches the full bank; each process classifies its own queries and the
correct counts are summed over processes.

Memory at scale (ImageNet: 1.28M x 2048 features, 10 GB in float32): the bank is kept as the batches it
came in (normalised, labelled rows only, cut at ``max_bank_size``), in ``bank_dtype``; on one process it is
searched as it is, with no concatenated copy, by the chunked top-k of
:func:`~mvssl_lightning.core.knn.knn_classify` (temporaries of at most ``CHUNK_ELEMENTS`` elements). Under
DDP the local batches are concatenated once and gathered. ``benchmarks/knn_memory.py`` measures the peak.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.features import all_gather_cat, check_labels, features_and_targets
from mvssl_lightning.core.knn import knn_classify

__all__ = ["BankDtype", "OnlineKNN"]

#: precision of the stored kNN bank
BankDtype = Literal["float32", "bfloat16", "float16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

class OnlineKNN(pl.Callback):
    """Weighted kNN accuracy of the features (Wu et al. 2018), computed at each validation epoch end.

    Args:
        k: number of neighbours (capped at the bank size).
        temperature: ``T`` of the vote weights ``exp(s / T)``.
        num_classes: number of classes; when None, the data module's ``num_classes`` (the dataset's
            metadata), else ``max(label) + 1`` over bank and queries with a warning.
        bank_dataloader_idx: validation loader providing the bank (labels ``-1`` are left out).
        query_dataloader_idx: validation loader providing the queries (labels ``-1`` are not scored).
        log_prefix: prefix of the logged names ``{prefix}/top1`` and ``{prefix}/top5`` (top-5 only
            if ``num_classes >= 5``); accuracies are fractions in ``[0, 1]``.
        max_bank_size: keep at most this many labelled bank samples (the first ones in loader order,
            split evenly over processes); None keeps all. ``MultiViewDataModule``'s eval loaders come in a
            fixed random order, so the first ones are a random sample; with your own loaders, make
            sure a prefix is not a single class.
        bank_dtype: precision in which the bank is held: ``"float32"`` (default, exact), or
            ``"bfloat16"`` / ``"float16"`` (half the memory; the normalised features are rounded to 8 / 11
            significant bits, so near-ties between neighbours can change order: an explicit trade). The
            similarities are computed in float32 either way.

    A bank that holds fewer classes than the queries (e.g. ``limit_val_batches`` on a dataset sorted by
    class) gets a warning naming both counts: its accuracy cannot be trusted.

    Features come from ``validation_step``'s ``{"features": ...}`` output, or from ``pl_module(x)``
    under ``torch.no_grad()`` for a module whose ``validation_step`` returns something else. They are
    L2-normalised and kept in ``bank_dtype`` on the module's device until the epoch ends (every process
    holds the full gathered bank: ``N x D x 4`` bytes in float32, 2 in the half types; one process holds
    no second copy), then freed. Sanity-check validation is skipped: it sees only a few batches, and
    Lightning discards what is logged there.
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.1,
        num_classes: Optional[int] = None,
        bank_dataloader_idx: int = 0,
        query_dataloader_idx: int = 1,
        log_prefix: str = "knn",
        max_bank_size: Optional[int] = None,
        bank_dtype: BankDtype = "float32",
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_bank_size is not None and max_bank_size < 1:
            raise ValueError(f"max_bank_size must be >= 1 or None, got {max_bank_size}")
        if bank_dtype not in _DTYPES:
            raise ValueError(f"bank_dtype must be one of {', '.join(_DTYPES)}, got {bank_dtype!r}")
        self.k = int(k)
        self.temperature = float(temperature)
        self.num_classes = num_classes
        self.bank_dataloader_idx = bank_dataloader_idx
        self.query_dataloader_idx = query_dataloader_idx
        self.log_prefix = log_prefix
        self.max_bank_size = max_bank_size
        self.bank_dtype = bank_dtype
        self._bank: list[tuple[Tensor, Tensor]] = []
        self._queries: list[tuple[Tensor, Tensor]] = []
        self._bank_count = 0
        self._warned = False
        self._dataset_classes: Optional[int] = None
        self._warned_classes: set[str] = set()
        self._off = False  # the data module says its data have no labels

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        said = self._off
        self._off = getattr(datamodule, "has_labels", None) is False
        if self._off and not said:  # once, not again for the fit after the start-of-run validation
            rank_zero_info("OnlineKNN: off: the data module's data have no labels (every label is -1), so there "
                           "is no labelled bank to classify with")
        classes = getattr(datamodule, "num_classes", None)
        self._dataset_classes = int(classes) if isinstance(classes, int) and classes > 0 else None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_classes:
            rank_zero_warn(f"OnlineKNN: {message}")
            self._warned_classes.add(key)

    # ------------------------------------------------------------------ computation
    def predict(self, queries: Tensor, bank: Any, bank_labels: Tensor, num_classes: int) -> Tensor:
        """Class ranking ``(Q, num_classes)`` (best first) of ``queries`` against the bank (``(N, D)`` or a list
        of pieces; :func:`~mvssl_lightning.core.knn.knn_classify` with this callback's ``k`` and ``temperature``)."""
        return knn_classify(queries, bank, bank_labels, num_classes, self.k, self.temperature)

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clear()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self._off:
            return
        is_bank = dataloader_idx == self.bank_dataloader_idx
        is_query = dataloader_idx == self.query_dataloader_idx
        if not (is_bank or is_query):
            return
        local_cap = None
        if self.max_bank_size is not None:
            local_cap = -(-self.max_bank_size // max(trainer.world_size, 1))
            if is_bank and not is_query and self._bank_count >= local_cap:
                return
        f, y = features_and_targets(outputs, batch, pl_module)
        if f is None or y is None:
            return
        f = F.normalize(f, dim=1)  # f is float32 (features_and_targets)
        if is_query:
            self._queries.append((f, y))
        if is_bank:
            keep = y != -1  # unknown labels never vote (other negatives reach check_labels' error)
            bf, by = f[keep], y[keep]
            if local_cap is not None:
                bf, by = bf[: local_cap - self._bank_count], by[: local_cap - self._bank_count]
            # kept also when empty: under DDP every process must reach the gather
            self._bank.append((bf.to(_DTYPES[self.bank_dtype]), by))
            self._bank_count += bf.shape[0]

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._off:
            return
        try:
            self._evaluate(trainer, pl_module)
        finally:
            self._clear()

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._bank or not self._queries:
            if not self._warned:
                rank_zero_warn(
                    f"OnlineKNN: no validation batches from dataloader {self.bank_dataloader_idx} (bank) "
                    f"or {self.query_dataloader_idx} (queries); kNN accuracy is not computed."
                )
                self._warned = True
            return
        bank_y = torch.cat([y for _, y in self._bank])
        bank: Any = [f for f, _ in self._bank]  # one process: searched in its pieces, never concatenated
        if trainer.world_size > 1:
            local = torch.cat(bank)
            self._bank, bank = [], None  # the pieces go before the gathered copy comes
            bank, bank_y = all_gather_cat(trainer, pl_module, local, bank_y)
            del local
            if self.max_bank_size is not None:
                bank, bank_y = bank[: self.max_bank_size], bank_y[: self.max_bank_size]
        if bank_y.shape[0] == 0:
            rank_zero_warn("OnlineKNN: the bank has no labelled samples; kNN accuracy is not computed.")
            return
        queries = torch.cat([f for f, _ in self._queries])
        query_y = torch.cat([y for _, y in self._queries])
        labelled = query_y >= 0
        queries, query_y = queries[labelled], query_y[labelled]
        (all_query_y,) = all_gather_cat(trainer, pl_module, query_y)
        num_classes = self.num_classes or self._dataset_classes
        if num_classes is None:
            seen = torch.cat([bank_y, all_query_y])
            num_classes = int(seen.max()) + 1
            self._warn_once(
                "inferred", f"num_classes is not given and the data module has none: inferred {num_classes} "
                "from the labels seen; pass num_classes to be sure",
            )
        check_labels(bank_y, num_classes, "OnlineKNN")
        bank_classes, query_classes = set(bank_y.unique().tolist()), set(all_query_y.unique().tolist())
        if not query_classes <= bank_classes:
            self._warn_once(
                "bank", f"the bank holds {len(bank_classes)} classes but the queries {len(query_classes)} "
                f"(of {num_classes}): queries of the missing classes can never be right, so this kNN accuracy "
                "cannot be trusted (limit_val_batches on data sorted by class? use the full bank, or a "
                "shuffled one)",
            )
        ranking = self.predict(queries, bank, bank_y, num_classes)
        top1 = (ranking[:, 0] == query_y).sum()
        top5 = (ranking[:, :5] == query_y[:, None]).any(dim=1).sum()
        counts = torch.stack([top1, top5, torch.tensor(query_y.numel(), device=top1.device)]).float()
        if trainer.world_size > 1:
            counts = cast(Tensor, pl_module.all_gather(counts, sync_grads=False)).sum(dim=0)
        if counts[2] == 0:
            return
        # counts are already summed over ranks: identical values, sync_dist's mean is exact
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, add_dataloader_idx=False, sync_dist=True)
        pl_module.log(f"{self.log_prefix}/top1", counts[0] / counts[2], **kw)
        if num_classes >= 5:
            pl_module.log(f"{self.log_prefix}/top5", counts[1] / counts[2], **kw)

    def _clear(self) -> None:
        self._bank, self._queries, self._bank_count = [], [], 0
