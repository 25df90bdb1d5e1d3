"""Online linear probe: a linear classifier trained on the frozen features during pre-training.

The probe is a plain :class:`lightning.Callback` (house style: Lightning's own callbacks such as
``LearningRateMonitor``): it only uses hooks and the public ``LightningModule`` API (``log``,
``all_gather``), owns its head, optimiser and metrics, and never touches the method's optimiser,
learning-rate schedule, precision or gradients.

What is computed, per training batch:

* features ``f (B, D)``: ``outputs["features"]`` of ``training_step`` (the detached backbone features
  of the first view, see the method contract), or ``pl_module(x)`` under ``torch.no_grad()`` for a
  module that returns only a loss; then ``(f, y)`` of all processes are gathered (without gradients)
  and samples with ``y == -1`` are dropped (one host read per step: the labelled count);
* ``logits = W BN(f) + b`` with ``BN`` an optional ``BatchNorm1d(affine=False)`` (as the MAE / MEC
  linear probes), in float32 with autocast disabled;
* one step of the probe's own optimiser on ``cross_entropy(logits, y)``.

**Optimiser.** The default, AdamW with lr 1e-3 on BatchNorm-standardised features, takes steps whose
size does not depend on the feature dimension or scale, so the probe's loss falls below ``ln(C)``
(uniform guessing) within the first epoch on any non-degenerate features, random-initialisation ones
included, and it follows features that move as the backbone trains.  SGD with lr 0.1 and momentum 0.9
(``optimizer: sgd``; the online classifiers of solo-learn and the ImageNet-scale runs of the papers'
code bases) over-shoots on a 2-core CPU quickstart: its loss rose above ``ln(10)`` over three epochs
of 39 steps.  Keep ``sgd`` for reproducing ImageNet-scale online numbers.

Every process takes the identical step on the identical global batch from an identical (zero)
initialisation, so the head stays the same on all processes under DDP without any parameter
broadcast. On validation loader ``eval_dataloader_idx`` the head is evaluated with torchmetrics'
``MulticlassAccuracy`` (top-1 and top-5), which synchronises its counts across processes.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from mvssl_lightning.core.features import all_gather_cat, check_labels, features_and_targets

__all__ = ["OnlineLinearProbe"]


# ----------------------------------------------------------------------------- the callback


class OnlineLinearProbe(pl.Callback):
    """Linear classifier trained online on the detached features of the method.

    Args:
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or ``-1`` (unknown,
            ignored). Anything else raises ``ValueError``.
        optimizer: ``"adamw"`` (default) or ``"sgd"`` (see above), with a constant learning rate.
        lr: learning rate; default 1e-3 for AdamW, 0.1 for SGD.
        momentum: SGD momentum (0.9); unused by AdamW (betas 0.9, 0.999).
        weight_decay: weight decay of the head (0).
        feature_bn: put ``BatchNorm1d(feat_dim, affine=False)`` before the linear layer (MAE/MEC
            style linear probe); the head then needs at least 2 labelled samples per global batch
            (steps with fewer are skipped).
        log_prefix: prefix of the logged names.
        eval_dataloader_idx: validation loader the probe is evaluated on (our datamodule:
            ``1`` = test set with eval transform; use ``0`` with a single validation loader).

    Logged: ``{prefix}/train_loss`` and ``{prefix}/train_top1`` (per step and per epoch, on the
    global labelled batch before the step), ``{prefix}/val_top1`` and ``{prefix}/val_top5``
    (``top5`` only if ``num_classes >= 5``; per validation epoch, synchronised across processes).

    The head is created lazily at the first batch (the module reaches its device only after
    ``Callback.setup``) with ``feat_dim`` taken from the features; if the module has a ``feat_dim``
    attribute it must agree. Its linear layer starts at zero: identical on every process whatever
    the seed, and creating it draws no random numbers, so attaching the probe does not change the
    run of the method. Sanity-check validation batches are ignored.

    ``state_dict()`` holds the head's weights, BatchNorm statistics and the optimiser state (plain
    tensors, numbers and dicts; loadable with ``torch.load(..., weights_only=True)``) so that a
    resumed run continues the probe exactly.
    """

    def __init__(
        self,
        num_classes: int,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: Optional[float] = None,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        feature_bn: bool = True,
        log_prefix: str = "probe",
        eval_dataloader_idx: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        self.num_classes = int(num_classes)
        self.optimizer_name = optimizer
        self.lr = float(lr) if lr is not None else (1e-3 if optimizer == "adamw" else 0.1)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.feature_bn = feature_bn
        self.log_prefix = log_prefix
        self.eval_dataloader_idx = eval_dataloader_idx

        self._head: Optional[nn.Sequential] = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._pending_state: Optional[dict[str, Any]] = None  # loaded before the head exists
        self._expected_feat_dim: Optional[int] = None
        self.val_top1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.val_top5 = (
            MulticlassAccuracy(self.num_classes, top_k=5, average="micro") if self.num_classes >= 5 else None
        )
        self._val_batches = 0
        self._warned_no_eval = False
        self._warned_no_targets = False
        self._off = False  # the data module says its data have no labels

    # ------------------------------------------------------------------ public helpers
    @override
    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix, num_classes=self.num_classes)

    @property
    def head(self) -> Optional[nn.Module]:
        """The probe's head (``[BatchNorm1d(affine=False)], Linear``), or None before the first batch."""
        return self._head

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        """The probe's own optimiser (AdamW or SGD), or None before the first batch."""
        return self._optimizer

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of the head in eval mode for features ``(B, feat_dim)``."""
        f = features.detach().flatten(start_dim=1).float()
        head = self._ensure_head(f.shape[1], f.device)
        was_training = head.training
        head.eval()
        with torch.autocast(device_type=f.device.type, enabled=False):
            logits = head(f)
        head.train(was_training)
        return logits

    # ------------------------------------------------------------------ head management
    def _build(self, feat_dim: int, device: torch.device) -> None:
        layers: list[nn.Module] = []
        if self.feature_bn:
            layers.append(nn.BatchNorm1d(feat_dim, affine=False))
        # skip_init: no random numbers are drawn (the method's RNG stream stays untouched).
        linear = nn.utils.skip_init(nn.Linear, feat_dim, self.num_classes, device=device)
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        self._head = nn.Sequential(*layers).to(device)
        self._optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        assert self._head is not None
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self._head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            self._head.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def _ensure_head(self, feat_dim: int, device: torch.device) -> nn.Module:
        if self._head is None:
            if self._pending_state is not None:
                state, self._pending_state = self._pending_state, None
                self._build(int(state["feat_dim"]), device)
                assert self._head is not None and self._optimizer is not None
                self._head.load_state_dict(state["head"])
                self._optimizer.load_state_dict(state["optimizer"])
            else:
                self._build(feat_dim, device)
        assert self._head is not None and self._optimizer is not None
        linear = self._head[-1]
        if linear.in_features != feat_dim:
            raise ValueError(
                f"OnlineLinearProbe: features have dim {feat_dim}, the head expects {linear.in_features}"
            )
        if self._expected_feat_dim is not None and self._expected_feat_dim != feat_dim:
            raise ValueError(
                f"OnlineLinearProbe: features have dim {feat_dim} but pl_module.feat_dim is "
                f"{self._expected_feat_dim}"
            )
        if linear.weight.device != device:
            opt_state = self._optimizer.state_dict()
            self._head.to(device)
            self._optimizer = self._make_optimizer()
            self._optimizer.load_state_dict(opt_state)  # casts the momentum buffers to the device
        return self._head

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        feat_dim = getattr(pl_module, "feat_dim", None)
        self._expected_feat_dim = int(feat_dim) if isinstance(feat_dim, int) else None
        datamodule = getattr(trainer, "datamodule", None)
        said = self._off
        self._off = getattr(datamodule, "has_labels", None) is False
        if self._off:
            if not said:  # once, not again for the fit after the start-of-run validation
                rank_zero_info("OnlineLinearProbe: off: the data module's data have no labels (every label is -1), "
                               "so there is nothing to train the probe on")
            return
        classes = getattr(datamodule, "num_classes", None)
        if isinstance(classes, int) and classes > 0 and classes != self.num_classes:
            raise ValueError(
                f"OnlineLinearProbe(num_classes={self.num_classes}), but the data module's dataset has "
                f"{classes} classes: set the probe's num_classes to {classes}"
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._off:
            return
        f, y = features_and_targets(outputs, batch, pl_module)
        if f is None or y is None:
            if not self._warned_no_targets:
                rank_zero_warn(
                    "OnlineLinearProbe: the training batch has no (inputs, targets) structure and the "
                    "step returned no 'features'; the probe is not trained."
                )
                self._warned_no_targets = True
            return
        f, y = all_gather_cat(trainer, pl_module, f, y)  # the global batch, identical on all ranks
        keep = y >= 0
        # one host read per step: the labelled count (whether to step) and the out-of-range count
        n, out_of_range = torch.stack([keep.sum(), ((y < -1) | (y >= self.num_classes)).sum()]).tolist()
        if out_of_range:
            check_labels(y, self.num_classes, "OnlineLinearProbe")  # raises, naming the labels
        if n == 0 or (self.feature_bn and n < 2):
            return
        if n < y.shape[0]:
            # the labelled rows in order, as f[keep] but without a boolean mask (its own host sync)
            rows = torch.argsort((~keep).to(torch.uint8), stable=True)[:n]
            f, y = f.index_select(0, rows), y.index_select(0, rows)
        head = self._ensure_head(f.shape[1], f.device)
        assert self._optimizer is not None
        head.train()
        with torch.enable_grad(), torch.autocast(device_type=f.device.type, enabled=False):
            logits = head(f)
            loss = F.cross_entropy(logits, y)
            self._optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._optimizer.step()
        top1 = (logits.detach().argmax(dim=1) == y).float().mean()
        # The values are already global (identical on all ranks): the mean over ranks is exact and
        # only keeps Lightning from warning about unsynchronised epoch-level values.
        kw: dict[str, Any] = dict(on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        pl_module.log(f"{self.log_prefix}/train_loss", loss.detach(), **kw)
        pl_module.log(f"{self.log_prefix}/train_top1", top1, **kw)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_val()

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
        if trainer.sanity_checking or dataloader_idx != self.eval_dataloader_idx:
            return
        if self._head is None and self._pending_state is None:
            return  # never trained (e.g. a validation before the first step): no accuracy to report
        f, y = features_and_targets(outputs, batch, pl_module)
        if f is None or y is None:
            return
        check_labels(y, self.num_classes, "OnlineLinearProbe")
        keep = y >= 0
        if not bool(keep.any()):
            return
        logits = self.predict(f[keep])
        for metric in (self.val_top1, self.val_top5):
            if metric is not None:
                metric.to(logits.device).update(logits, y[keep])
        self._val_batches += 1

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (self._head is None and self._pending_state is None):
            return
        if self._val_batches == 0:
            if not self._warned_no_eval:
                rank_zero_warn(
                    f"OnlineLinearProbe: no validation batches from dataloader {self.eval_dataloader_idx}; "
                    "set eval_dataloader_idx (0 for a single validation loader)."
                )
                self._warned_no_eval = True
            return
        # MulticlassAccuracy.compute() synchronises its counts over processes itself; the values are
        # identical on all ranks, so sync_dist's mean is exact (and silences Lightning's warning).
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, add_dataloader_idx=False, sync_dist=True)
        pl_module.log(f"{self.log_prefix}/val_top1", self.val_top1.compute(), **kw)
        if self.val_top5 is not None:
            pl_module.log(f"{self.log_prefix}/val_top5", self.val_top5.compute(), **kw)
        self._reset_val()

    def _reset_val(self) -> None:
        self.val_top1.reset()
        if self.val_top5 is not None:
            self.val_top5.reset()
        self._val_batches = 0

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        if self._head is None:
            return copy.deepcopy(self._pending_state) if self._pending_state is not None else {}
        assert self._optimizer is not None
        return copy.deepcopy(
            {
                "feat_dim": int(cast(nn.Linear, self._head[-1]).in_features),
                "num_classes": self.num_classes,
                "head": self._head.state_dict(),
                "optimizer": self._optimizer.state_dict(),
            }
        )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if int(state_dict["num_classes"]) != self.num_classes:
            raise ValueError(
                f"OnlineLinearProbe: checkpoint has num_classes={state_dict['num_classes']}, "
                f"this probe has {self.num_classes}"
            )
        # Applied when the head is (re)built at the next batch, on the device of the features.
        self._head, self._optimizer = None, None
        self._pending_state = state_dict
