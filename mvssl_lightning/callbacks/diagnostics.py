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

The statistics (``u_i = z_i / ||z_i||`` are the L2-normalised rows, all computed in float64):

**Effective rank** (RankMe; Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream
performance of pretrained self-supervised representations by their rank", ICML 2023, eq. 1), from the
singular values ``s_1 >= ... >= s_r`` (``r = min(n, d)``) of the (unnormalised) embedding matrix::

    p_k = s_k / sum_j s_j + eps,      RankMe(Z) = exp(-sum_k p_k log p_k),      eps = 1e-7

``~ d`` for an isotropic embedding with ``n >> d``, ``k`` for ``k`` equal non-zero singular values,
``~ 1`` when every row is the same vector.

**Spread** (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, §4.1; lightly's
``std_of_l2_normalized``): ``sigma_j = std_i(u_ij)`` (unbiased, as ``torch.std``), logged as
``std_mean = mean_j sigma_j``, ``std_min = min_j sigma_j``, ``std_sqrt_d = sqrt(d) std_mean`` (about 1
for an isotropic embedding, 0 for a collapsed one) and ``dead_fraction``: the fraction of dimensions
with ``sqrt(d) sigma_j < dead_threshold`` (default 0.01: less than 1 % of the isotropic spread).

**Alignment and uniformity** (Wang & Isola, "Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere", ICML 2020, eqs. 4-5; alpha = 2, t = 2)::

    alignment  = E_i ||u(x_i) - u(y_i)||^2                 (x_i, y_i: two augmented views of image i)
    uniformity = log E_{i<j} exp(-2 ||u_i - u_j||^2)         (all distinct pairs of the subset)

The two views are the first two (the global crops) of the datamodule's *training* recipe
(``trainer.datamodule.view_transform``), applied to the subset's images read untransformed from the
validation dataset (a dataset with a ``transform`` attribute applied in ``__getitem__``, e.g.
torchvision's and this library's, possibly inside ``torch.utils.data.Subset``): the dataset is shallow
copied with ``transform = None``. Sample ``i``'s views are drawn under the seed ``(seed, index)``, with
the global torch (CPU), NumPy and ``random`` states restored afterwards, so they are the same at every
epoch and on any number of processes, and attaching the callback changes nothing in the run. Without a
view recipe or untransformed images, alignment is skipped (one info message). Uniformity needs no views:
it is computed on the eval-transform embedding ``u_i`` of the subset.

**Entropy estimates** of the normalised embedding ``U (n, d)``:

* ``er_entropy``: ER's von Mises-Fisher kernel density estimate (Rodríguez-Gálvez et al., "The Role of
  Entropy and Reconstruction in Multi-View Self-Supervised Learning", ICML 2023; the official
  estimator, :func:`mvssl_lightning.losses.er_sphere_entropy`)::

      nlp_i = -log((1/n) sum_j C_d(kappa) exp(kappa u_i.u_j)),   H = sum_i softmax(-nlp)_i nlp_i

  with ``C_d(kappa) = kappa^(d/2-1) / ((2 pi)^(d/2) I_{d/2-1}(kappa))`` and ``kappa = 10`` (the ER
  methods' default), in nats. No distribution on the sphere has more entropy than the uniform one,
  ``log |S^{d-1}| = log(2 pi^(d/2) / Gamma(d/2))`` (-127 nats at ``d = 128``, -868 at ``d = 512``),
  so the values are very negative in high dimensions: follow their trend, not their sign;
* ``mec_coding_length``: MEC's coding length (Liu, Wang, Li, Wang, "Self-Supervised Learning via
  Maximum Entropy Coding", NeurIPS 2022, eq. 2), per sample::

      L = mu log det(I_d + lambda U^T U) / n,     mu = (n + d) / 2,    lambda = d / (n eps^2)

  with ``eps^2 = 64`` (MEC's default; :func:`mvssl_lightning.losses.mec.mec_lambda`), computed exactly
  with ``torch.linalg.slogdet`` on the smaller of ``I_d + lambda U^T U`` and ``I_n + lambda U U^T``
  (Sylvester's identity: same determinant), in nats per sample, the unit of MEC's logged ``train/mec``
  (which is this quantity on the training batch, from the 4th-order Taylor series of the cross-view
  product). Both depend on ``n``: compare them across epochs of a run, not across subset sizes.

**Collapse warning**: when ``rankme < collapse_rank`` (default 2: about one direction) or
``std_sqrt_d < collapse_std`` (default 0.05: 20 times less spread than isotropic) in any space, one
:class:`RepresentationCollapseWarning` naming the epoch, the space and the value is issued, once per
run (the thresholds of ``benchmarks/quality``'s collapse check).

**Distributed.** Each process embeds a contiguous share of the subset; the rows (and labels) are
gathered in rank order (``all_gather_cat``), so every process computes every statistic on the same
global set, identical to a single process on the whole subset.

**Pictures** (rank 0, the first validation epoch and every ``plot_every_n_epochs``-th after it): the
2-D PCA map of the subset's normalised embedding coloured by class, the singular-value spectrum (log
scale, normalised by the largest) and the histogram of ``sqrt(d) sigma_j``, one panel per space. PCA
(an exact float64 SVD with a fixed sign convention) rather than t-SNE or UMAP: it is deterministic (the
same embedding gives the same map, so maps of successive epochs are comparable), its axes are linear
directions of the embedding whose explained variance is shown, it costs one small SVD, and it needs no
extra dependency. They are added to every ``TensorBoardLogger`` (``add_figure``, tags ``diag/pca``,
``diag/spectrum``, ``diag/std_hist``) and saved as ``<trainer.log_dir>/diagnostics/epoch_XXX_<name>.png``.
matplotlib is imported only there (the Agg canvas; pyplot's global state is not touched).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from mvssl_lightning.callbacks.features import all_gather_cat, eval_mode, param_dtype
from mvssl_lightning.data.order import seeded_permutation, seeded_rngs
from mvssl_lightning.losses.er import Reduction, er_sphere_entropy
from mvssl_lightning.losses.mec import mec_lambda

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RANKME_EPS",
    "RepresentationCollapseWarning",
    "RepresentationDiagnostics",
    "alignment",
    "dimension_std",
    "embedding_statistics",
    "mec_coding_length",
    "rankme",
    "uniformity",
]

#: ``eps`` added to the normalised singular values in RankMe (Garrido et al. 2023).
RANKME_EPS = 1e-7
#: Subset tensors (inputs and views of one process) up to this size are kept between epochs.
CACHE_MAX_BYTES = 256 * 2**20
#: Subset size under ``Trainer(fast_dev_run=...)``.
FAST_DEV_RUN_SAMPLES = 32


class RepresentationCollapseWarning(UserWarning):
    """The representation collapsed (RankMe or spread below the callback's thresholds)."""


# ----------------------------------------------------------------------------- statistics


def _unit_rows(z: Tensor) -> Tensor:
    return F.normalize(z.detach().double().flatten(start_dim=1), dim=1)


def rankme(z: Tensor, eps: float = RANKME_EPS) -> Tensor:
    """RankMe ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum s + eps``, of the singular values ``s`` of
    ``z (n, d)`` (Garrido et al. 2023), in float64. 1.0 for an all-zero matrix."""
    return _rankme_from_singular_values(torch.linalg.svdvals(z.detach().double().flatten(start_dim=1)), eps)


def _rankme_from_singular_values(s: Tensor, eps: float = RANKME_EPS) -> Tensor:
    total = s.sum()
    if not bool(total > 0):
        return s.new_ones(())
    p = s / total + eps
    return torch.exp(-(p * torch.log(p)).sum())


def dimension_std(z: Tensor) -> Tensor:
    """Per-dimension standard deviation ``(d,)`` (unbiased) of the L2-normalised rows of ``z (n >= 2, d)``,
    in float64 (Chen & He 2021; lightly's ``std_of_l2_normalized`` is its mean)."""
    if z.shape[0] < 2:
        raise ValueError(f"dimension_std needs at least 2 rows, got {z.shape[0]}")
    return _unit_rows(z).std(dim=0)


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2.0) -> Tensor:
    """``E_i ||u(z1_i) - u(z2_i)||^alpha`` of the L2-normalised rows (Wang & Isola 2020), in float64."""
    if z1.shape != z2.shape:
        raise ValueError(f"alignment needs two embeddings of the same shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    return (_unit_rows(z1) - _unit_rows(z2)).norm(dim=1).pow(alpha).mean()


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """``log E_{i<j} exp(-t ||u_i - u_j||^2)`` over the distinct pairs of the L2-normalised rows of
    ``z (n >= 2, d)`` (Wang & Isola 2020), in float64 (a log-sum-exp, stable for any ``t``)."""
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {n}")
    u = _unit_rows(z)
    sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # ||u_i - u_j||^2 for unit rows
    logits = (-t * sq).masked_fill(torch.eye(n, dtype=torch.bool, device=u.device), -math.inf)
    # the ordered pairs i != j count every distinct pair twice: the mean is the same
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


def mec_coding_length(z: Tensor, eps_sq: float = 64.0) -> Tensor:
    """MEC's coding length per sample, ``mu log det(I_d + lambda U^T U) / n`` with ``U`` the
    L2-normalised rows of ``z (n, d)``, ``mu = (n + d) / 2`` and ``lambda = d / (n eps^2)`` (Liu et al.
    2022, eq. 2), exactly (``torch.linalg.slogdet`` in float64 on the smaller Gram matrix)."""
    u = _unit_rows(z)
    n, d = u.shape
    lam = mec_lambda(d, n, eps_sq)
    gram = u @ u.T if n <= d else u.T @ u
    sign, logabsdet = torch.linalg.slogdet(torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) + lam * gram)
    if not bool(sign > 0):  # I + lambda G is positive definite; only round-off could break this
        raise FloatingPointError("mec_coding_length: I + lambda Z^T Z is not positive definite")
    return (n + d) / 2 * logabsdet / n


def embedding_statistics(
    z: Tensor,
    views: Optional[tuple[Tensor, Tensor]] = None,
    dead_threshold: float = 0.01,
    kappa: float = 10.0,
    er_reduction: Reduction = "expectation",
    mec_eps_sq: float = 64.0,
) -> dict[str, float]:
    """Every statistic of the module docstring for one embedding ``z (n >= 2, d >= 2)`` (and the two
    views' embeddings ``(n, d)`` for alignment), as Python floats."""
    return _statistics(z, views, dead_threshold, kappa, er_reduction, mec_eps_sq)[0]


def _statistics(
    z: Tensor,
    views: Optional[tuple[Tensor, Tensor]],
    dead_threshold: float,
    kappa: float,
    er_reduction: Reduction,
    mec_eps_sq: float,
) -> tuple[dict[str, float], Tensor, Tensor]:
    """``(statistics, singular values, sqrt(d) sigma_j)``."""
    z = z.detach().double().flatten(start_dim=1)
    n, d = z.shape
    if n < 2 or d < 2:
        raise ValueError(f"the diagnostics need an embedding with n >= 2 rows and d >= 2 dims, got {tuple(z.shape)}")
    s = torch.linalg.svdvals(z)
    scaled_std = dimension_std(z) * math.sqrt(d)
    u = _unit_rows(z)
    stats = {
        "rankme": float(_rankme_from_singular_values(s)),
        "std_mean": float(scaled_std.mean()) / math.sqrt(d),
        "std_min": float(scaled_std.min()) / math.sqrt(d),
        "std_sqrt_d": float(scaled_std.mean()),
        "dead_fraction": float((scaled_std < dead_threshold).double().mean()),
        "uniformity": float(uniformity(u)),
        "er_entropy": float(er_sphere_entropy(u, kappa, er_reduction)),
        "mec_coding_length": float(mec_coding_length(u, mec_eps_sq)),
    }
    if views is not None:
        stats["alignment"] = float(alignment(*views))
    return stats, s, scaled_std


# ----------------------------------------------------------------------------- inputs


@dataclass
class _Inputs:
    """This process's share of the subset: eval images, labels, and the two views (or None)."""

    x: Tensor
    y: Tensor
    views: Optional[tuple[Tensor, Tensor]]


def _untransformed_reader(dataset: Dataset) -> Optional[Callable[[int], Any]]:
    """``i -> item i without the dataset's transform`` (through ``Subset`` wrappers), or None."""
    chain: list[Sequence[int]] = []
    base: Any = dataset
    while isinstance(base, Subset):
        chain.append(base.indices)
        base = base.dataset
    if not hasattr(base, "transform"):
        return None
    raw = copy.copy(base)
    raw.transform = None

    def read(i: int) -> Any:
        for indices in chain:
            i = int(indices[i])
        return raw[i]

    return read


def _class_names(dataset: Dataset) -> Optional[list[str]]:
    """``dataset.classes`` (through ``Subset`` wrappers) when it is a list of names, as in torchvision."""
    base: Any = dataset
    while isinstance(base, Subset):
        base = base.dataset
    names = getattr(base, "classes", None)
    return [str(c) for c in names] if isinstance(names, (list, tuple)) else None


def _as_tensor(x: Any) -> Optional[Tensor]:
    return x if isinstance(x, Tensor) else None


def _stack(items: list[Tensor]) -> Tensor:
    return torch.stack([t.detach().cpu() for t in items])


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
        dead_threshold: float = 0.01,
        collapse_rank: float = 2.0,
        collapse_std: float = 0.05,
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
        raw_reader = _untransformed_reader(dataset) if view_transform is not None else None
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
                x = _as_tensor(item[0]) if isinstance(item, Sequence) and len(item) >= 2 else None
                if x is None:
                    self._warn_once("items", f"validation dataset {self.dataloader_idx} does not yield "
                                    "(tensor, label) items; no diagnostics.")
                    return None
                xs.append(x)
                ys.append(int(item[1]))
                if with_views:
                    assert raw_reader is not None and view_transform is not None
                    views = view_transform(raw_reader(i)[0])
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
            x=_stack(xs) if xs else torch.empty(0),
            y=torch.tensor(ys, dtype=torch.long),
            views=(_stack(v1s), _stack(v2s)) if with_views and xs else None,
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
                h = pl_module(chunk)
                hs.append(h.flatten(start_dim=1).float())
                if projector is not None:
                    ps.append(projector(h).flatten(start_dim=1).float())
        return torch.cat(hs), (torch.cat(ps) if ps else None)

    # ------------------------------------------------------------------ hooks
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
            results[name] = _statistics(z, views, self.dead_threshold, self.kappa, self.er_reduction,
                                        self.mec_eps_sq)
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
                self._draw(trainer, embeddings, y, results, log_dir, _class_names(dataset))

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
            if rank < self.collapse_rank or spread < self.collapse_std:
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
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations, "collapse_warned": self._collapse_warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
        self._collapse_warned = bool(state_dict.get("collapse_warned", False))


# ----------------------------------------------------------------------------- pictures


def pca_2d(z: Tensor) -> tuple[Tensor, Tensor]:
    """2-D PCA of the L2-normalised rows of ``z (n, d)``: coordinates ``(n, 2)`` and the explained
    variance ratios ``(2,)``, by an exact float64 SVD of the centred rows. Signs are fixed so that
    each component's largest-magnitude loading is positive (the same embedding always gives the same
    map)."""
    u = _unit_rows(z)
    centred = u - u.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True))).clamp_min(0) * 2 - 1
    comps = comps * signs
    coords = centred @ comps.T
    if k < 2:
        coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 2 - k)], dim=1)
    var = s.pow(2)
    ratio = var[:2] / var.sum().clamp_min(torch.finfo(var.dtype).tiny)
    ratio = torch.cat([ratio, ratio.new_zeros(2 - ratio.numel())])
    return coords, ratio


def plot_diagnostics(
    embeddings: dict[str, Tensor],
    labels: Tensor,
    singular_values: dict[str, Tensor],
    scaled_std: dict[str, Tensor],
    statistics: dict[str, dict[str, float]],
    epoch: int,
    dead_threshold: float = 0.01,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, Figure]:
    """The three pictures (``"pca"``, ``"spectrum"``, ``"std_hist"``) as matplotlib figures, one panel per
    space; the PCA legend names class ``c`` ``class_names[c]`` when given. matplotlib is imported here,
    with the Agg canvas (no pyplot, no global backend change)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(embeddings)
    k = len(names)
    y = labels.detach().cpu().long()
    classes = sorted(int(c) for c in torch.unique(y) if c >= 0)

    def new(width: float) -> tuple[Figure, list]:
        fig = Figure(figsize=(width * k, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        return fig, [fig.add_subplot(1, k, i + 1) for i in range(k)]

    figures: dict[str, Figure] = {}
    fig, axes = new(5.0)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    for ax, name in zip(axes, names, strict=True):
        coords, ratio = pca_2d(embeddings[name])
        xy = coords.cpu().numpy()
        unknown = (y < 0).numpy()
        if unknown.any():
            ax.scatter(xy[unknown, 0], xy[unknown, 1], s=6, c="lightgrey", label="unlabelled")
        for i, c in enumerate(classes):
            sel = (y == c).numpy()
            colour = cmap(i % cmap.N if len(classes) <= 20 else i / max(len(classes) - 1, 1))
            name_c = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour, label=name_c)
        ax.set_title(f"{name}: PCA of the normalised embedding")
        ax.set_xlabel(f"PC1 ({100 * float(ratio[0]):.1f} % var.)")
        ax.set_ylabel(f"PC2 ({100 * float(ratio[1]):.1f} % var.)")
        if 0 < len(classes) <= 20:
            ax.legend(fontsize=6, markerscale=2, ncols=2, title="class", title_fontsize=7)
    fig.suptitle(f"epoch {epoch}: {len(y)} validation images")
    figures["pca"] = fig

    fig, axes = new(4.5)
    for ax, name in zip(axes, names, strict=True):
        s = singular_values[name].detach().cpu().double()
        s = s / s[0] if len(s) and s[0] > 0 else s
        ax.semilogy(np.arange(1, len(s) + 1), s.clamp_min(1e-12).numpy())
        ax.set_title(f"{name}: RankMe {statistics[name]['rankme']:.1f} of {len(s)}")
        ax.set_xlabel("index k")
        ax.set_ylabel("s_k / s_1")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"epoch {epoch}: singular-value spectrum")
    figures["spectrum"] = fig

    fig, axes = new(4.5)
    for ax, name in zip(axes, names, strict=True):
        v = scaled_std[name].detach().cpu().double().numpy()
        top = max(1.1, float(v.max()) * 1.05) if v.size else 1.1
        ax.hist(v, bins=np.linspace(0.0, top, 45), color="tab:blue")
        ax.axvline(dead_threshold, color="tab:red", linestyle="--", label=f"dead < {dead_threshold:g}")
        ax.axvline(1.0, color="grey", linestyle=":", label="isotropic (1)")
        st = statistics[name]
        ax.set_title(f"{name}: std x sqrt(d) {st['std_sqrt_d']:.3f}, dead {100 * st['dead_fraction']:.1f} %")
        ax.set_xlabel("sqrt(d) x std of dimension j")
        ax.set_ylabel("dimensions")
        ax.legend(fontsize=7)
    fig.suptitle(f"epoch {epoch}: per-dimension spread of the normalised embedding")
    figures["std_hist"] = fig
    return figures
