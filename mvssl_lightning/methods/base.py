"""``SiameseModule``: the small shared base of every method.

It owns what all methods share and nothing else: the backbone, the optimiser with its per-step
learning-rate schedule and batch-size lr scaling, the EMA teachers' update, the view-count check, the
non-finite-loss guard, logging, and the hand-off of features to callbacks.  A method implements
:meth:`compute_loss` (its algorithm box) and sets ``self.ema`` when it has an EMA teacher.

Contract (``docs/architecture.md``):
- a training batch is ``(views, targets)``, ``views`` a list of ``V`` tensors ``(B, 3, H_v, W_v)``;
- ``forward(x)`` returns the backbone's pooled features ``(B, feat_dim)``;
- ``training_step`` returns ``{"loss": loss, "features": f}`` with ``f`` the detached backbone features
  of the first view; ``validation_step`` returns ``{"features": f, "targets": y}``.

Constructor arguments: each method's ``__init__`` lists its own arguments, then every argument of
:class:`SiameseModule` with the official recipe's value as its default, and passes the latter on by
name.  The signature is thus what a type checker, an IDE, LightningCLI's ``--help`` and the saved
hyperparameters all see; ``tests/test_signatures.py`` checks that every method lists and forwards every
base argument.  A user's own subclass may instead take ``**kwargs`` and pass them on.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from mvssl_lightning.core.compat import attached_trainer, is_compiled
from mvssl_lightning.core.optim import OptimizerName, build_optimizer, clip_per_parameter, parameter_groups
from mvssl_lightning.core.schedules import cosine_anneal, warmup_cosine_factor
from mvssl_lightning.core.steps import LRScaling, epochs_to_steps, scaled_lr, steps_per_epoch, total_steps
from mvssl_lightning.methods.momentum import EMATeacher
from mvssl_lightning.models.backbones import Backbone, backbone_kind, backbone_name, build_backbone
from mvssl_lightning.models.timm_backbone import check_view_size

LR_SCALINGS = ("linear", "sqrt", "none")


class ViewCountError(ValueError):
    """The data module's view recipe gives the method the wrong number of views (the message says what to change)."""


class SiameseModule(L.LightningModule):
    """Base class of the multi-view SSL methods.

    Args:
        backbone: ``resnet18`` / ``resnet34`` / ``resnet50`` (torchvision, ``fc`` removed), ``amdim``,
            ``"timm:<model name>"``, ``"torchvision:<model name>"``, or an ``nn.Module`` returning ``(B, D)``
            features (``class_path`` / ``init_args`` in a config); :mod:`mvssl_lightning.models.backbones`.
        cifar_stem: small-image stem for 32 px data (the library's ResNets: 3x3 stride-1 conv, no max-pool;
            AMDIM: its 32 px encoder); an error on other backbones.
        zero_init_residual: zero-init the last layer of each residual block (Goyal et al. 2017); ResNets only.
        backbone_kwargs: further arguments of the backbone builder (e.g. AMDIM's ``ndf``, a timm model's
            ``img_size``, ``patch_size``, ``drop_path_rate``, ``dynamic_img_size``).
        optimizer: ``lars`` (lightly), ``larc`` (apex), ``sgd``, ``adamw`` or ``adam``
            (:mod:`mvssl_lightning.core.optim`).
        lr: base learning rate at ``reference_batch_size``; scaled by the global batch with ``lr_scaling``.
        lr_scaling: ``linear`` (``lr * B / 256``), ``sqrt`` (``lr * sqrt(B / 256)``) or ``none``.
        reference_batch_size: the batch size at which ``lr`` is given (256).
        batch_size: per-process batch size used for lr scaling; read from the data module when None.
        weight_decay, momentum, betas, trust_coefficient: optimiser settings.
        exclude_bias_and_norm: no weight decay and no LARS adaptation on biases and norm parameters.
        exclude_embeddings: no weight decay on what a backbone's ``no_weight_decay()`` names (timm: position
            embeddings, class and register tokens), as timm, DeiT and MAE; DINO's code decays them (False).
        weight_decay_end: cosine schedule of the weight decay, per optimiser step, from ``weight_decay`` to
            this value (DINO: 0.04 -> 0.4); None keeps it constant.
        clip_grad: clip each parameter's gradient to this L2 norm before the step (DINO's per-parameter
            ``clip_gradients``, 3.0); None: off. Lightning's ``gradient_clip_val`` clips the global norm.
        warmup_epochs: linear warm-up length (fractional epochs, converted to optimiser steps);
            ``warmup_steps`` overrides it.
        warmup_start_factor: the warm-up starts at ``warmup_start_factor * lr``.
        min_lr_factor: the cosine ends at ``min_lr_factor * lr``.
        cosine_over_total: divide the cosine by all steps instead of the post-warm-up steps (MVEB code).
        channels_last: run the backbone in ``channels_last`` memory format (faster convs on GPU).
        compile: ``torch.compile`` the backbone and its EMA copies (in ``configure_model``, in place, so
            checkpoints keep plain parameter names).
        check_finite: raise on a non-finite loss, naming the step and the offending terms. Checked on the
            device at every step and read on the host every ``log_every_n_steps`` steps, at the end of each
            epoch and before a checkpoint is written (no host sync per step), so the error comes up to that
            many steps after the step it names and no checkpoint holds a non-finite run.
        skip_nonfinite_grads: when a gradient holds NaN or inf, zero all gradients of that step and warn
            (the official MVEB code's ``skip_nan_grad_backward``); off by default.
    """

    #: how many views ``compute_loss`` accepts (``max_views=None``: no upper bound)
    min_views: int = 2
    max_views: Optional[int] = 2
    #: the EMA teachers, if the method has any (set in the constructor)
    ema: Optional[EMATeacher] = None
    #: the view recipe of the official code (``MultiViewDataModule(views="auto")`` uses it; ``_cifar``
    #: variant on 32 px data)
    default_views: str = "two_views"

    def __init__(
        self,
        backbone: Backbone = "resnet50",
        cifar_stem: bool = False,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        trust_coefficient: float = 0.001,
        exclude_bias_and_norm: bool = True,
        warmup_epochs: float = 10.0,
        warmup_steps: Optional[int] = None,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 0.0,
        cosine_over_total: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        check_finite: bool = True,
        skip_nonfinite_grads: bool = False,
        exclude_embeddings: bool = True,
        weight_decay_end: Optional[float] = None,
        clip_grad: Optional[float] = None,
    ) -> None:
        super().__init__()
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {lr_scaling!r}")
        if lr <= 0 or weight_decay < 0 or warmup_epochs < 0:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0, warmup_epochs >= 0; got {lr}, {weight_decay}, {warmup_epochs}"
            )
        if (weight_decay_end is not None and weight_decay_end < 0) or (clip_grad is not None and clip_grad <= 0):
            raise ValueError(
                f"need weight_decay_end >= 0 and clip_grad > 0 (or None); got {weight_decay_end}, {clip_grad}"
            )
        self.backbone_kind = backbone_kind(backbone)
        self.backbone_name = backbone_name(backbone)
        self.backbone, self.feat_dim = build_backbone(
            backbone, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual, **(backbone_kwargs or {})
        )
        if self.backbone_kind in ("timm", "torchvision", "module"):
            unused = "" if self.backbone_kind == "torchvision" else "; zero_init_residual does not apply to it"
            rank_zero_info(f"backbone {self.backbone_name}: {self.feat_dim}-d features{unused}")
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.optimizer_name = optimizer
        self.lr = lr
        self.lr_scaling = lr_scaling
        self.reference_batch_size = reference_batch_size
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.betas = (float(betas[0]), float(betas[1]))
        self.trust_coefficient = trust_coefficient
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.min_lr_factor = min_lr_factor
        self.cosine_over_total = cosine_over_total
        self.channels_last = channels_last
        self.compile_backbone = compile
        self.check_finite = check_finite
        self.skip_nonfinite_grads = skip_nonfinite_grads
        self.exclude_embeddings = exclude_embeddings
        self.weight_decay_end = weight_decay_end
        self.clip_grad = clip_grad
        self._rng_to_restore: Optional[dict[str, Any]] = None
        self._view_sizes: set[tuple[int, int]] = set()
        self._nonfinite: Optional[dict[str, Any]] = None  # see _check_finite
        # every constructor argument, the subclass's included (Lightning reads them off the call frames;
        # under LightningCLI, its own record with the class path that ``--ckpt_path`` needs)
        self.save_hyperparameters()
        if isinstance(self.hparams.get("backbone"), nn.Module):
            # a module given from Python: checkpoints record its class (they hold its weights, not its code)
            self.hparams["backbone"] = self.backbone_name

    # ------------------------------------------------------------------ features
    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, feat_dim)``: what probes, kNN and users consume."""
        return self.backbone(self._prepare(x))

    def compute_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Returns ``(loss, {term_name: value}, features of the first view)``. Implemented by each method."""
        raise NotImplementedError

    def on_after_optimizer_step(self, step: int) -> None:
        """Called after every optimiser step; ``step`` counts the optimiser steps done so far (1, 2, ...).

        The EMA teachers (``self.ema``) update here, so gradient accumulation counts optimiser steps.
        """
        if self.ema is not None:
            total = self.total_steps() if self.ema.schedule == "cosine" else step
            momentum = self.ema.update(self, step, total)
            # a fill on the device, not Lightning's torch.tensor(float, device=...) copy (a host sync on CUDA)
            self.log("train/ema_momentum", torch.full((), momentum, device=self.device))

    @override
    def configure_model(self) -> None:
        """Compile every module of the backbone's type (the backbone and its EMA teachers) once."""
        if not self.compile_backbone:
            return
        for module in self.children():
            if type(module) is type(self.backbone) and not is_compiled(module):
                module.compile()

    # ------------------------------------------------------------------ steps
    @override
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        views, _ = batch
        self._check_views(views)
        loss, terms, features = self.compute_loss([self._prepare(v) for v in views])
        if self.check_finite:
            self._check_finite(loss, terms, batch_idx)
        batch_size = views[0].shape[0]
        # not prog_bar: Lightning converts progress-bar values to Python numbers at every step and every read
        # of callback_metrics, a host sync each; the loss is in the logger and RunSummary's table
        self.log("train/loss", loss, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=batch_size)
        return {"loss": loss, "features": features.detach()}

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        images, targets = batch
        return {"features": self(images).detach(), "targets": targets}

    @override
    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.clip_grad is not None:
            clip_per_parameter(self.parameters(), self.clip_grad)
        if not self.skip_nonfinite_grads:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        # one host sync per step, not one per parameter
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            rank_zero_warn(
                f"non-finite gradient at global step {self.global_step}: all gradients of this step are "
                f"zeroed (skip_nonfinite_grads)"
            )
            for g in grads:
                g.zero_()

    @override
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if self.weight_decay_end is not None:
            # DINO: the decayed group's weight decay at iteration t (0-indexed), set before that step
            step, total = self.trainer.global_step, self.total_steps()
            decay = cosine_anneal(step, total, self.weight_decay, self.weight_decay_end)
            for group in optimizer.param_groups:
                if group.get("name") == "decay":
                    group["weight_decay"] = decay
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning increments global_step after this hook returns
        self.on_after_optimizer_step(self.trainer.global_step + 1)

    def _check_views(self, views: Any) -> None:
        if not isinstance(views, (list, tuple)) or not all(isinstance(v, Tensor) for v in views):
            raise TypeError(
                f"{type(self).__name__} expects batches (views, targets) with views a list of image tensors, "
                f"got {type(views).__name__}; use a multi-view recipe in the data module"
            )
        n = len(views)
        if n < self.min_views or (self.max_views is not None and n > self.max_views):
            raise ViewCountError(self._view_count_message(n, None))
        for v in views:  # each new view size once (Python ints: no device sync)
            size = (int(v.shape[-2]), int(v.shape[-1]))
            if size not in self._view_sizes:
                check_view_size(self.backbone, self.backbone_name, *size)
                self._view_sizes.add(size)

    def _view_count_message(self, n: int, recipe: Optional[str]) -> str:
        if self.max_views == self.min_views:
            wanted = f"{self.min_views}"
        elif self.max_views is None:
            wanted = f"at least {self.min_views}"
        else:
            wanted = f"{self.min_views}..{self.max_views}"
        gave = f"the view recipe{f' {recipe!r}' if recipe else ''} gave {n}"
        return f"{type(self).__name__} needs {wanted} views per sample, but {gave}; {self.views_hint()}"

    def views_hint(self) -> str:
        """What to change when the view recipe gives this method the wrong number of views (a method whose
        options change the count, InfoMin's ``jigsaw``, names that option too)."""
        return "pick a matching recipe (data.views)"

    @override
    def setup(self, stage: str) -> None:
        """Check the data module's view count (its ``num_views``, known once its ``setup`` chose the recipe) before
        anything runs, the start-of-run validation included; the training step checks every batch again."""
        trainer = attached_trainer(self)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        n = getattr(datamodule, "num_views", None)
        if isinstance(n, int) and (n < self.min_views or (self.max_views is not None and n > self.max_views)):
            raise ViewCountError(self._view_count_message(n, getattr(datamodule, "views_name", None)))

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], batch_idx: int) -> None:
        """Record the first non-finite loss on the device (no host sync) and read the record every
        ``log_every_n_steps`` steps, at the end of each epoch and of the fit (every step without a Trainer):
        the error names the step where the loss first went non-finite, up to that many steps later."""
        values = torch.stack([v.detach().float().reshape(()) for v in (loss, *terms.values())])
        names = list(terms)
        record = self._nonfinite
        if record is None or record["names"] != names:
            self._raise_if_nonfinite()
            record = self._nonfinite = {
                "names": names, "step": torch.full((), -1, dtype=torch.long, device=values.device),
                "values": values.clone(), "at": {},
            }
        first = (record["step"] < 0) & ~torch.isfinite(values[0])
        record["step"] = torch.where(first, self.global_step, record["step"])
        record["values"] = torch.where(first, values, record["values"])
        record["at"][self.global_step] = (self.current_epoch, batch_idx)
        trainer = attached_trainer(self)
        interval = max(int(getattr(trainer, "log_every_n_steps", 1) or 50), 1) if trainer is not None else 1
        if (self.global_step + 1) % interval == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        """Read the record of :meth:`_check_finite` (one host sync) and raise if a loss was non-finite."""
        record, self._nonfinite = self._nonfinite, None
        if record is None:
            return
        step = int(record["step"])
        if step < 0:
            record["at"] = {}
            self._nonfinite = record
            return
        loss, *values = record["values"].tolist()
        epoch, batch_idx = record["at"].get(step, (self.current_epoch, "?"))
        bad = [k for k, v in zip(record["names"], values, strict=True) if not math.isfinite(v)]
        terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(record["names"], values, strict=True))
        raise FloatingPointError(
            f"non-finite loss {loss:.4g} at global step {step} "
            f"(epoch {epoch}, batch {batch_idx}); non-finite terms: {bad or ['loss']}; "
            f"terms: {terms}. Lower the learning rate, check the inputs, or use precision 32 to debug."
        )

    @override
    def on_train_epoch_end(self) -> None:
        if self.check_finite:
            self._raise_if_nonfinite()

    @override
    def on_train_end(self) -> None:
        if self.check_finite:
            self._raise_if_nonfinite()

    # ------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the method class, the logger version and the random-number generators' states, so that a
        resumed run is checked against its configuration, logs into the same run directory and draws the
        same random numbers (:mod:`mvssl_lightning.resume`), and the data module's ``data_summary()``."""
        if self.check_finite:  # never write a checkpoint of a run whose loss went non-finite since the last read
            self._raise_if_nonfinite()
        trainer = attached_trainer(self)
        logger = trainer.logger if trainer is not None else None
        version = getattr(logger, "version", None)
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        summary = getattr(datamodule, "data_summary", None)
        checkpoint["mvssl"] = {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "log_version": version if isinstance(version, int) else None,
            "rng": rng,
            # the pre-training data as evaluation and export describe it (dataset, image size, normalisation)
            "data": summary() if callable(summary) else {},
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("mvssl", {}).get("rng")

    @override
    def on_train_start(self) -> None:
        # a resumed run continues the random stream where the checkpoint left it
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    # ------------------------------------------------------------------ optimisation
    def scaled_lr(self) -> float:
        """``lr`` scaled by the global batch ``batch_size * world_size * accumulate_grad_batches``
        (:func:`mvssl_lightning.core.steps.scaled_lr`)."""
        return scaled_lr(self.lr, self.lr_scaling, self.trainer, self.batch_size, self.reference_batch_size)

    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch (:func:`mvssl_lightning.core.steps.steps_per_epoch`)."""
        return steps_per_epoch(self.trainer)

    def epochs_to_steps(self, epochs: float) -> int:
        """``epochs`` (fractional) as a number of optimiser steps, capped at the run's total."""
        return epochs_to_steps(self.trainer, epochs)

    def _warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        return self.epochs_to_steps(self.warmup_epochs)

    def lr_factor(self, total_steps: int) -> Callable[[int], float]:
        """The learning-rate schedule: optimiser step (0-indexed) -> multiplier of the scaled lr.

        Linear warm-up then cosine (:func:`~mvssl_lightning.core.schedules.warmup_cosine_factor`); a method
        with another schedule (AMDIM's step decay) overrides this hook.
        """
        return partial(
            warmup_cosine_factor,
            total_steps=total_steps,
            warmup_steps=self._warmup_steps(total_steps),
            warmup_start_factor=self.warmup_start_factor,
            end_factor=self.min_lr_factor,
            cosine_over_total=self.cosine_over_total,
        )

    @override
    def configure_optimizers(self) -> Any:
        groups = parameter_groups([self], self.weight_decay, self.exclude_bias_and_norm, self.exclude_embeddings)
        optimizer = build_optimizer(
            self.optimizer_name, groups, self.scaled_lr(), momentum=self.momentum, betas=self.betas,
            trust_coefficient=self.trust_coefficient,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor(self.total_steps()))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_steps(self) -> int:
        """Number of optimiser steps of the whole run (for schedules)."""
        return total_steps(self.trainer)
