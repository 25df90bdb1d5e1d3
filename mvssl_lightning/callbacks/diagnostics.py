"""Information-theoretic diagnostics of the representation during training, with pictures.

:class:`RepresentationDiagnostics` is a plain :class:`lightning.Callback` (house style: Lightning's own
callbacks such as ``LearningRateMonitor``): it uses hooks and the public ``LightningModule`` /
``Trainer`` API only. At every validation epoch it embeds a fixed, seeded subset of one validation
split and computes, on the embedding ``Z (n, d)`` of each *space*:

* ``backbone``: ``pl_module(x)``, the features the probe and kNN read;
* ``projector``: ``pl_module.projector(pl_module(x))`` when the module has an ``nn.Module`` attribute
  named ``projector`` (every method here with a projection head: MVEB, MEC, InfoMin, ER-SimCLR,
  ER-BYOL, ER-SwAV; not AMDIM, and ER-DINO's head is called ``head``). Another attribute name, or
  ``None`` for the backbone only, is set with ``projector=``.

the statistics of :mod:`mvssl_lightning.core.statistics` (their equations and sources are there), all in
float64 and logged as ``diag/<space>/<statistic>``: ``rankme`` (RankMe, Garrido et al. 2023),
``std_mean``, ``std_min``, ``std_sqrt_d`` and ``dead_fraction`` (the per-dimension spread of the
L2-normalised rows, Chen & He 2021), ``alignment`` and ``uniformity`` (Wang & Isola 2020),
``er_entropy`` (ER's vMF kernel entropy, Rodríguez-Gálvez et al. 2023) and ``mec_coding_length`` (MEC's
coding length, Liu et al. 2022). The last two depend on ``n``: compare them across epochs of a run, not
across subset sizes.

**The two views of alignment** are the first two (the global crops) of the datamodule's *training*
recipe (``trainer.datamodule.view_transform``), applied to the subset's images read untransformed from
the validation dataset (a dataset with a ``transform`` attribute applied in ``__getitem__``, e.g.
torchvision's and this library's, possibly inside ``torch.utils.data.Subset``: a shallow copy of it is
read with ``transform = None``, :mod:`mvssl_lightning.data.inspection`; the dataset itself is never
changed, and one whose copy cannot be read so, e.g. a ``__getitem__`` that always calls ``self.transform``,
gets no alignment, with one info message). Sample ``i``'s views are
drawn under the seed ``(seed, index)``, with the global torch (CPU), NumPy and ``random`` states
restored afterwards, so they are the same at every epoch and on any number of processes, and attaching
the callback changes nothing in the run. Without a view recipe or untransformed images, alignment is
skipped (one info message). Uniformity needs no views: it is computed on the eval-transform embedding
``u_i`` of the subset.

**Collapse warning**: when ``rankme < collapse_rank`` (default
:data:`~mvssl_lightning.core.statistics.COLLAPSE_RANK` = 2: about one direction) or
``std_sqrt_d < collapse_std`` (default :data:`~mvssl_lightning.core.statistics.COLLAPSE_STD` = 0.05: 20
times less spread than isotropic) in any space, one :class:`RepresentationCollapseWarning` naming the
epoch, the space and the value is issued, once per run (the thresholds of ``benchmarks/quality``'s
collapse check, defined once in :mod:`mvssl_lightning.core.statistics`).

**Distributed.** Each process embeds a contiguous share of the subset; the rows (and labels) are
gathered in rank order (``all_gather_cat``), so every process computes every statistic on the same
global set, identical to a single process on the whole subset.

**Pictures** (rank 0, the first validation epoch and every ``plot_every_n_epochs``-th after it): the
2-D PCA map of the subset's normalised embedding coloured by class, the singular-value spectrum and the
histogram of ``sqrt(d) sigma_j``, one panel per space (:func:`mvssl_lightning.core.plotting.plot_diagnostics`,
which says why PCA). They are added to every ``TensorBoardLogger`` (``add_figure``, tags ``diag/pca``,
``diag/spectrum``, ``diag/std_hist``) and saved as ``<trainer.log_dir>/diagnostics/epoch_XXX_<name>.png``.
matplotlib is imported only there (the Agg canvas; pyplot's global state is not touched).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from mvssl_lightning.core.features import all_gather_cat, checked_features, eval_mode, param_dtype
from mvssl_lightning.core.plotting import plot_diagnostics
from mvssl_lightning.core.statistics import (
    COLLAPSE_RANK,
    COLLAPSE_STD,
    DEAD_THRESHOLD,
    embedding_statistics_and_spectra,
    is_collapsed,
)
from mvssl_lightning.data.inspection import as_tensor, class_names, stack_cpu, untransformed_reader
from mvssl_lightning.data.order import seeded_permutation, seeded_rngs
from mvssl_lightning.losses.er import Reduction

__all__ = ["RepresentationCollapseWarning", "RepresentationDiagnostics"]

#: Subset tensors (inputs and views of one process) up to this size are kept between epochs.
CACHE_MAX_BYTES = 256 * 2**20
#: Subset size under ``Trainer(fast_dev_run=...)``.
FAST_DEV_RUN_SAMPLES = 32


class RepresentationCollapseWarning(UserWarning):
    """The representation collapsed (RankMe or spread below the callback's thresholds)."""


def _base(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset

@dataclass
class _Inputs:
    """This process's share of the subset: eval images, labels, and the two views (or None)."""

    x: Tensor
    y: Tensor
    views: Optional[tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------- the callback


class RepresentationDiagnostics(pl.Callback):
    """Effective rank, spread, alignment / uniformity and entropy estimates of the embedding, logged
    under ``diag/<space>/<statistic>`` at every validation epoch, with pictures (module docstring).

    Args:
        num_samples: size of the fixed subset of the validation split (all of it if smaller).
        dataloader_idx: the validation loader whose dataset the subset is drawn from (our datamodule:
            ``1`` = the test split with the eval transform; ``0`` for a single validation loader).
        seed: seed of the subset choice and of its views.
        projector: name of the module attribute applied to the backbone features for the
            ``projector`` space (used when it is an ``nn.Module``); None: backbone only.
        batch_size: images per forward pass.
        dead_threshold: a dimension is dead when ``sqrt(d) sigma_j`` is below this.
        collapse_rank: warn when RankMe is below this in any space.
        collapse_std: warn when ``std_sqrt_d`` is below this in any space.
        kappa: vMF concentration of the ER entropy estimate.
        er_reduction: ``"expectation"`` (ER's default, plug-in) or ``"average"`` (mean of ``nlp_i``).
        mec_eps_sq: ``eps^2`` of MEC's ``lambda = d / (n eps^2)``.
        plot_every_n_epochs: draw the pictures at the first validation epoch and every n-th after it;
            None or 0: no pictures.
        log_prefix: prefix of the logged names (``diag``).

    ``last_statistics`` holds the latest values (``{"backbone/rankme": ..., ...}``, float64 precision),
    identical on every process. Sanity-check validation is skipped. The subset's inputs and views are
    kept on the CPU between epochs when they take at most 256 MiB per process (512 CIFAR images with two
    views: 19 MB); larger ones (224 px) are rebuilt, identically, at each epoch. Under
    ``Trainer(fast_dev_run=...)``, a smoke test, the subset has at most 32 samples and no pictures are
    drawn. Forward passes run in eval mode without gradients, and every submodule's train/eval flag is
    restored afterwards.
    """

    def __init__(
        self,
        num_samples: int = 512,
        dataloader_idx: int = 1,
        seed: int = 0,
        projector: Optional[str] = "projector",
        batch_size: int = 256,
        dead_threshold: float = DEAD_THRESHOLD,
        collapse_rank: float = COLLAPSE_RANK,
        collapse_std: float = COLLAPSE_STD,
        kappa: float = 10.0,
        er_reduction: Reduction = "expectation",
        mec_eps_sq: float = 64.0,
        plot_every_n_epochs: Optional[int] = 1,
        log_prefix: str = "diag",
    ) -> None:
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if kappa <= 0 or mec_eps_sq <= 0:
            raise ValueError(f"kappa and mec_eps_sq must be > 0, got {kappa}, {mec_eps_sq}")
        if er_reduction not in ("expectation", "average"):
            raise ValueError(f"er_reduction must be 'expectation' or 'average', got {er_reduction!r}")
        if plot_every_n_epochs is not None and plot_every_n_epochs < 0:
            raise ValueError(f"plot_every_n_epochs must be >= 0 or None, got {plot_every_n_epochs}")
        self.num_samples = int(num_samples)
        self.dataloader_idx = int(dataloader_idx)
        self.seed = int(seed)
        self.projector = projector
        self.batch_size = int(batch_size)
        self.dead_threshold = float(dead_threshold)
        self.collapse_rank = float(collapse_rank)
        self.collapse_std = float(collapse_std)
        self.kappa = float(kappa)
        self.er_reduction: Reduction = er_reduction
        self.mec_eps_sq = float(mec_eps_sq)
        self.plot_every_n_epochs = plot_every_n_epochs
        self.log_prefix = log_prefix

        self.last_statistics: dict[str, float] = {}
        self._validations = 0
        self._collapse_warned = False
        self._warned: set[str] = set()
        self._cache: Optional[tuple[tuple, _Inputs]] = None

    # ------------------------------------------------------------------ subset
    def subset_indices(self, dataset_size: int, num_samples: Optional[int] = None) -> Tensor:
        """The subset: the first ``min(num_samples, dataset_size)`` of a permutation drawn with ``seed``, in
        increasing order (``num_samples`` defaults to the callback's)."""
        n = self.num_samples if num_samples is None else num_samples
        return seeded_permutation(dataset_size, self.seed)[:n].sort().values

    def _warn_once(self, key: str, message: str, info: bool = False) -> None:
        if key not in self._warned:
            (rank_zero_info if info else rank_zero_warn)(f"RepresentationDiagnostics: {message}")
            self._warned.add(key)

    def _dataset(self, trainer: pl.Trainer) -> Optional[Dataset]:
        loaders = trainer.val_dataloaders
        if isinstance(loaders, DataLoader):
            loaders = [loaders]
        if not isinstance(loaders, Sequence) or not 0 <= self.dataloader_idx < len(loaders):
            return None
        loader = loaders[self.dataloader_idx]
        return getattr(loader, "dataset", None)

    def _view_transform(self, trainer: pl.Trainer) -> Optional[Callable]:
        datamodule = getattr(trainer, "datamodule", None)
        transform = getattr(datamodule, "view_transform", None)
        return transform if callable(transform) else None

    def _inputs(self, trainer: pl.Trainer, dataset: Dataset) -> Optional[_Inputs]:
        """This process's contiguous share of the subset (cached when small)."""
        n_total = len(dataset)  # type: ignore[arg-type]
        view_transform = self._view_transform(trainer)
        # a fast_dev_run is a smoke test of the code paths: a few samples exercise them all
        smoke = bool(getattr(trainer, "fast_dev_run", False))
        num_samples = min(self.num_samples, FAST_DEV_RUN_SAMPLES) if smoke else self.num_samples
        key = (id(dataset), n_total, num_samples, id(view_transform), trainer.world_size, trainer.global_rank)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        indices = self.subset_indices(n_total, num_samples)
        if len(indices) < max(2, trainer.world_size):  # the same on every process
            self._warn_once("small", f"validation dataset {self.dataloader_idx} has {n_total} samples, fewer "
                            f"than 2 or than the {trainer.world_size} processes; no diagnostics.")
            return None
        share = torch.tensor_split(indices, max(trainer.world_size, 1))[trainer.global_rank].tolist()
        raw_reader = untransformed_reader(dataset) if view_transform is not None else None
        if view_transform is None or raw_reader is None:
            self._warn_once(
                "views",
                "no training view recipe (trainer.datamodule.view_transform) or no untransformed images in "
                f"validation dataset {self.dataloader_idx} (a dataset with a `transform` attribute); "
                "alignment is not computed.",
                info=True,
            )
        xs, ys, v1s, v2s = [], [], [], []
        with_views = raw_reader is not None and view_transform is not None
        for i in share:
            with seeded_rngs(self.seed * 1_000_003 + int(i)):
                item = dataset[i]
                x = as_tensor(item[0]) if isinstance(item, Sequence) and len(item) >= 2 else None
                if x is None:
                    self._warn_once("items", f"validation dataset {self.dataloader_idx} does not yield "
                                    "(tensor, label) items; no diagnostics.")
                    return None
                xs.append(x)
                ys.append(int(item[1]))
                if with_views:
                    assert raw_reader is not None and view_transform is not None
                    try:  # a copy of the dataset with transform = None; the user's dataset is never changed
                        views = view_transform(raw_reader(i)[0])
                    except Exception as error:  # e.g. a __getitem__ that always calls self.transform
                        self._warn_once(
                            "views", f"validation dataset {self.dataloader_idx} ({type(_base(dataset)).__name__}) "
                            f"gives no untransformed images (reading a copy with transform = None raised "
                            f"{type(error).__name__}: {error}); alignment is not computed.", info=True)
                        with_views = False
                        continue
                    if not isinstance(views, Sequence) or len(views) < 2 or not all(
                        isinstance(v, Tensor) for v in views[:2]
                    ):
                        self._warn_once("views", "the view recipe gives fewer than two tensor views; "
                                        "alignment is not computed.", info=True)
                        with_views = False
                    else:
                        v1s.append(views[0])
                        v2s.append(views[1])
        inputs = _Inputs(
            x=stack_cpu(xs) if xs else torch.empty(0),
            y=torch.tensor(ys, dtype=torch.long),
            views=(stack_cpu(v1s), stack_cpu(v2s)) if with_views and xs else None,
        )
        size = sum(t.numel() * t.element_size() for t in (inputs.x, *(inputs.views or ())))
        self._cache = (key, inputs) if size <= CACHE_MAX_BYTES else None
        return inputs

    # ------------------------------------------------------------------ embedding
    def _projector(self, pl_module: pl.LightningModule) -> Optional[nn.Module]:
        if self.projector is None:
            return None
        module = getattr(pl_module, self.projector, None)
        return module if isinstance(module, nn.Module) else None

    @torch.no_grad()
    def _embed(self, pl_module: pl.LightningModule, x: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Backbone and projector embeddings ``(n, d)`` (float32, on the module's device), in eval mode."""
        projector = self._projector(pl_module)
        dtype = param_dtype(pl_module, torch.float32)
        hs, ps = [], []
        with eval_mode(pl_module):
            for chunk in x.split(self.batch_size):
                chunk = chunk.to(pl_module.device, dtype=dtype if chunk.is_floating_point() else None)
                h = checked_features(pl_module(chunk), pl_module)
                hs.append(h.flatten(start_dim=1).float())
                if projector is not None:
                    ps.append(projector(h).flatten(start_dim=1).float())
        return torch.cat(hs), (torch.cat(ps) if ps else None)

    # ------------------------------------------------------------------ hooks
    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dataset = self._dataset(trainer)
        if dataset is None:
            self._warn_once("loader", f"no validation dataloader {self.dataloader_idx}; set dataloader_idx "
                            "(0 for a single validation loader). No diagnostics.")
            return
        inputs = self._inputs(trainer, dataset)
        if inputs is None:
            return
        self._validations += 1
        spaces, y = self._gathered_embeddings(trainer, pl_module, inputs)
        results: dict[str, tuple[dict[str, float], Tensor, Tensor]] = {}
        for name, (z, views) in spaces.items():
            results[name] = embedding_statistics_and_spectra(z, views, self.dead_threshold, self.kappa,
                                                             self.er_reduction, self.mec_eps_sq)
        self.last_statistics = {f"{space}/{k}": v for space, (stats, _, _) in results.items() for k, v in stats.items()}
        # identical on every process: sync_dist's mean is exact (and silences Lightning's warning)
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, add_dataloader_idx=False, sync_dist=True)
        for name, value in self.last_statistics.items():
            pl_module.log(f"{self.log_prefix}/{name}", value, **kw)
        self._check_collapse(trainer.current_epoch)
        n = self.plot_every_n_epochs
        # like Lightning's loggers and checkpoints, no pictures under fast_dev_run
        if n and (self._validations - 1) % n == 0 and not getattr(trainer, "fast_dev_run", False):
            log_dir = trainer.log_dir  # a collective under DDP: every process asks
            has_tensorboard = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
            if trainer.is_global_zero and (log_dir is not None or has_tensorboard):
                embeddings = {name: z for name, (z, _) in spaces.items()}
                self._draw(trainer, embeddings, y, results, log_dir, class_names(dataset))

    def _gathered_embeddings(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: _Inputs
    ) -> tuple[dict[str, tuple[Tensor, Optional[tuple[Tensor, Tensor]]]], Tensor]:
        """``({space: (z, views or None)}, labels)`` of the subset gathered from every process."""
        h, p = self._embed(pl_module, inputs.x)
        tensors = [h, inputs.y.to(h.device)] + ([p] if p is not None else [])
        n_views = 0
        if inputs.views is not None:
            for v in inputs.views:
                hv, pv = self._embed(pl_module, v)
                tensors.append(hv)
                if pv is not None:
                    tensors.append(pv)
            n_views = len(tensors) - (3 if p is not None else 2)
        gathered = list(all_gather_cat(trainer, pl_module, *tensors))
        h, y = gathered[0], gathered[1]
        out: dict[str, tuple[Tensor, Optional[tuple[Tensor, Tensor]]]] = {}
        views = gathered[len(gathered) - n_views :] if n_views else []
        if p is not None:
            p = gathered[2]
            out["backbone"] = (h, (views[0], views[2]) if views else None)
            out["projector"] = (p, (views[1], views[3]) if views else None)
        else:
            out["backbone"] = (h, (views[0], views[1]) if views else None)
        return out, y

    def _check_collapse(self, epoch: int) -> None:
        if self._collapse_warned:
            return
        for space in ("backbone", "projector"):
            rank, spread = self.last_statistics.get(f"{space}/rankme"), self.last_statistics.get(f"{space}/std_sqrt_d")
            if rank is None or spread is None:
                continue
            if is_collapsed(rank, spread, self.collapse_rank, self.collapse_std):
                rank_zero_warn(
                    f"RepresentationDiagnostics: the {space} embedding collapsed at epoch {epoch}: "
                    f"RankMe {rank:.3g} (threshold {self.collapse_rank:g}), std x sqrt(d) {spread:.3g} "
                    f"(threshold {self.collapse_std:g}). Warned once per run.",
                    category=RepresentationCollapseWarning,
                )
                self._collapse_warned = True
                return

    # ------------------------------------------------------------------ pictures
    def _draw(
        self,
        trainer: pl.Trainer,
        embeddings: dict[str, Tensor],
        labels: Tensor,
        results: dict[str, tuple[dict[str, float], Tensor, Tensor]],
        log_dir: Optional[str],
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        figures = plot_diagnostics(
            embeddings,
            labels,
            {name: s for name, (_, s, _) in results.items()},
            {name: std for name, (_, _, std) in results.items()},
            {name: stats for name, (stats, _, _) in results.items()},
            epoch=trainer.current_epoch,
            dead_threshold=self.dead_threshold,
            class_names=class_names,
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, fig in figures.items():
                    logger.experiment.add_figure(f"{self.log_prefix}/{name}", fig, global_step=trainer.global_step,
                                                 close=False)
        if log_dir is not None:
            out = Path(log_dir) / "diagnostics"
            out.mkdir(parents=True, exist_ok=True)
            for name, fig in figures.items():
                fig.savefig(out / f"epoch_{trainer.current_epoch:03d}_{name}.png", dpi=100)

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations, "collapse_warned": self._collapse_warned}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
        self._collapse_warned = bool(state_dict.get("collapse_warned", False))
