"""The evaluation LightningModules: linear evaluation, fine-tuning and kNN of a pre-trained backbone.

All three load their backbone with :func:`~mvssl_lightning.evaluation.checkpoint.load_backbone` (a
pre-training checkpoint of any method, a torchvision ResNet ``state_dict``, or ``None`` for a random
backbone) and read ``(images, labels)`` batches (:class:`~mvssl_lightning.evaluation.LabeledDataModule`).
The feature is the backbone's output, what the method's own ``forward`` gives: the pooled ResNet
feature, or for AMDIM ``r1`` flattened (``(B, n_rkhs)``), the feature AMDIM's own classifiers read.

**Linear evaluation** (:class:`LinearEval`), the protocol behind every ImageNet top-1 the seed papers
report::

    f = backbone(x)                       frozen: parameters fixed, BatchNorm in eval mode (encoder_bn="eval")
    logits = W [BN(f)] + b                BN: BatchNorm1d(affine=False, eps=1e-6) when head_batchnorm (MEC)
    L = cross_entropy(logits, y)          minimised over W, b only
    lr = lr_0 * B * world / 256 * schedule(t)     (lr_scaling="linear"; B the per-process batch)

"Frozen" follows the official linear scripts (``wlj6816/MVEB`` ``lineval.py``, ``xinliu20/MEC``
``benchmarks/linearprob/main_lincls.py``: ``model.eval()`` for the whole training, so BatchNorm statistics
never move, and a ``sanity_check`` that every backbone tensor is unchanged): the backbone stays in eval
mode even when Lightning or the user calls ``.train()`` (:meth:`EvalModule.train` is overridden; with
``encoder_bn="train"`` its BatchNorm layers, and only those, follow the module's mode), its
parameters have ``requires_grad=False`` and its forward runs under ``torch.no_grad``. The head's own
BatchNorm trains. The protocols' settings (optimiser, lr, schedule, head) are arguments; each paper's
values, with their sources, are the configs in ``configs/eval/``.

**BatchNorm** (``encoder_bn``, ``bn_reestimate_batches``; :mod:`mvssl_lightning.evaluation.bn`): ``encoder_bn:
train`` keeps the parameters frozen but normalises each training batch with its own statistics and lets the
running statistics follow them, and ``bn_reestimate_batches: N`` re-estimates the statistics on ``N`` random
batches of the evaluation split before each validation: AMDIM's official classifier protocol
(``configs/eval/amdim_*.yaml``, with AMDIM's MLP classifier, ``mlp_classifier``, and loss, ``loss: amdim_xent``:
:mod:`mvssl_lightning.evaluation.classifiers`).

**Fine-tuning** (:class:`FineTune`, the semi-supervised 1 % / 10 % protocol of ``facebookresearch/barlowtwins``
``evaluate.py --weights finetune``): the same head, the backbone trainable at ``backbone_lr`` and in
train mode (BatchNorm statistics update).

**kNN** (:class:`KNNEval`): validation only; the weighted kNN classifier of
:class:`~mvssl_lightning.callbacks.OnlineKNN` (returned by ``configure_callbacks``, so the computation
exists once) with the training split as the bank and the evaluation split as the queries
(``LabeledDataModule(knn_bank=True)``).

Metrics (fractions in [0, 1]): ``val/top1``, ``val/top5`` (torchmetrics ``MulticlassAccuracy``,
micro-averaged over the evaluation split), ``val/loss``, ``train/loss``; with ``mlp_classifier``:
``val/mlp_top1``, ``val/mlp_top5``, ``train/mlp_loss``; kNN: ``knn/top1``, ``knn/top5``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from mvssl_lightning.callbacks.knn import BankDtype, OnlineKNN
from mvssl_lightning.core.compat import attached_trainer
from mvssl_lightning.core.features import eval_mode, extract_features, param_dtype
from mvssl_lightning.core.optim import OPTIMIZERS, OptimizerName, build_optimizer
from mvssl_lightning.core.schedules import Schedule, ScheduleInterval, lr_factor
from mvssl_lightning.core.steps import scaled_lr, steps_per_epoch, total_steps
from mvssl_lightning.evaluation.bn import (
    EncoderBN,
    batchnorm_buffers,
    batchnorm_layers,
    reestimate_batchnorm,
    reestimation_loader,
    restore_modes,
    set_batchnorm_mode,
)
from mvssl_lightning.evaluation.checkpoint import CheckpointKey, load_backbone
from mvssl_lightning.evaluation.classifiers import ClassifierLoss, amdim_mlp_classifier, classifier_loss
from mvssl_lightning.models.backbones import Backbone
from mvssl_lightning.models.timm_backbone import check_last_blocks, last_blocks_features

__all__ = ["EvalModule", "FineTune", "HeadInit", "KNNEval", "LinearEval"]

#: ``normal``: ``W ~ N(0, head_init_std^2)``, ``b = 0`` (MVEB, MEC, Barlow Twins); ``zeros``: both 0;
#: ``default``: torch's ``nn.Linear`` init, ``U(-1/sqrt(d), 1/sqrt(d))`` for both (InfoMin; equal in
#: distribution to the PyTorch 0.4.1 init AMDIM's ``weight_init`` applies).
HeadInit = Literal["normal", "zeros", "default"]
LRScaling = Literal["linear", "none"]


class EvalModule(L.LightningModule):
    """Base of the evaluation modules: the backbone to evaluate and its features.

    Args:
        checkpoint: pre-training checkpoint, torchvision ResNet ``state_dict`` file, or ``None`` (random).
        backbone, cifar_stem, backbone_kwargs: the architecture; read from a pre-training checkpoint
            (a value given here must agree), required for a ``state_dict`` or a random backbone.
        zero_init_residual: initialisation of a random backbone.
        n_last_blocks, avgpool_patchtokens: a timm ViT's feature as DINO's ``eval_linear.py`` (:class:`LinearEval`).
        checkpoint_key: ``student`` (the trained backbone) or ``teacher`` (the EMA teacher's, as DINO's
            evaluations ``--checkpoint_key teacher``).

    Attributes: ``backbone``, ``feat_dim``, ``source`` (:class:`BackboneSource`: the file, its SHA-256, the
    pre-training method). ``frozen`` (class attribute): the backbone is fixed and stays in eval mode.
    """

    #: the backbone's parameters are fixed and its layers stay in eval mode (BatchNorm: see ``encoder_bn``)
    frozen: bool = True
    #: what the backbone's BatchNorm layers do while training (:mod:`mvssl_lightning.evaluation.bn`); set per instance
    encoder_bn: EncoderBN = "eval"

    def __init__(
        self,
        checkpoint: Optional[str],
        backbone: Optional[Backbone] = None,
        cifar_stem: Optional[bool] = None,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        n_last_blocks: int = 1,
        avgpool_patchtokens: bool = False,
        checkpoint_key: CheckpointKey = "student",
    ) -> None:
        super().__init__()
        self.backbone, self.feat_dim, self.source = load_backbone(
            checkpoint, backbone, cifar_stem, zero_init_residual, backbone_kwargs, checkpoint_key
        )
        if n_last_blocks < 1:
            raise ValueError(f"n_last_blocks must be >= 1, got {n_last_blocks}")
        # DINO's ViT feature: the last blocks' class tokens (and the mean patch token), concatenated
        self.token_features: Optional[tuple[int, bool]] = None
        if n_last_blocks > 1 or avgpool_patchtokens:
            self.token_features = (n_last_blocks, avgpool_patchtokens)
        if self.token_features is not None:
            check_last_blocks(self.backbone, n_last_blocks)
            self.feat_dim *= n_last_blocks + int(avgpool_patchtokens)
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @override
    def train(self, mode: bool = True) -> EvalModule:
        """``nn.Module.train``, except that a frozen backbone stays in eval mode and, in train mode, the backbone's
        BatchNorm layers follow ``encoder_bn`` (``train``: batch statistics; ``eval``: fixed statistics)."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        if mode:
            set_batchnorm_mode(self.backbone, self.encoder_bn == "train")
        return self

    def _features(self, x: Tensor) -> Tensor:
        if self.token_features is not None:
            return last_blocks_features(self.backbone, x, *self.token_features)
        return self.backbone(x).flatten(start_dim=1)

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, feat_dim)`` (AMDIM: ``r1`` flattened; a ViT with ``n_last_blocks``: DINO's
        concatenated class tokens); no gradient when frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._features(x)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    @torch.no_grad()
    def extract_features(self, loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
        """``(features (N, D) float32, labels (N,))`` of a loader of ``(images, labels)``, on this module's
        device, with the backbone in eval mode (its mode is restored)."""
        dtype = param_dtype(self.backbone, torch.float32)
        with eval_mode(self.backbone):
            return extract_features(lambda x: self._features(x.to(dtype)), loader, self.device)

    def _check_num_classes(self, num_classes: Optional[int]) -> None:
        """The data module's class count (from its dataset's metadata) must equal the model's."""
        trainer = attached_trainer(self)
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        found = getattr(datamodule, "num_classes", None)
        if num_classes is not None and found is not None and found != num_classes:
            name = getattr(datamodule, "dataset_name", type(datamodule).__name__)
            raise ValueError(
                f"the dataset {name!r} has {found} classes but {type(self).__name__} was built with "
                f"num_classes={num_classes}; set model.num_classes: {found}"
            )


class LinearEval(EvalModule):
    """Linear evaluation of a frozen pre-trained backbone (module docstring).

    Args:
        checkpoint, backbone, cifar_stem, zero_init_residual, backbone_kwargs: see :class:`EvalModule`.
        num_classes: classes of the labelled data (checked against the data module's dataset).
        head_batchnorm: ``BatchNorm1d(feat_dim, affine=False, eps=1e-6)`` before the linear layer (MEC).
        head_init, head_init_std: initialisation of the linear layer (:data:`HeadInit`).
        optimizer: ``sgd``, ``larc`` (apex LARC, MVEB / MEC), ``lars`` (lightly), ``adam`` (AMDIM) or
            ``adamw``; see :mod:`mvssl_lightning.core.optim`.
        lr: base learning rate of the head at ``reference_batch_size``.
        lr_scaling: ``linear``: ``lr * batch_size * world_size * accumulate_grad_batches / reference_batch_size``;
            ``none``: ``lr`` as given.
        reference_batch_size: the batch size ``lr`` refers to (256).
        batch_size: per-process batch size for the scaling; read from the data module when None.
        momentum, betas, weight_decay, trust_coefficient: optimiser settings.
        schedule: ``cosine`` (to 0), ``step`` (``gamma`` at each of ``milestones``) or ``constant``.
        schedule_interval: ``epoch`` (the lr changes once per epoch, as the official loops) or ``step``.
        milestones: epochs of the ``step`` schedule (0-indexed: from epoch ``m`` on the lr is multiplied
            by one more ``gamma``).
        gamma: decay factor of the ``step`` schedule.
        cache_features: the cached-features fast path: the data module serves features extracted once
            with the evaluation transform (needs ``train_transform: none``; one process).
        n_last_blocks, avgpool_patchtokens: a timm ViT's feature as DINO's ``eval_linear.py`` builds it: the
            class tokens of the last ``n_last_blocks`` blocks (each through the final norm), concatenated,
            plus the last block's mean patch token (``avgpool_patchtokens``); 1 / False: the backbone's own
            pooled feature (a ViT's final class token).
        encoder_bn: the backbone's BatchNorm while the head trains (:mod:`mvssl_lightning.evaluation.bn`): ``eval``
            (fixed pre-training statistics; MVEB, MEC, InfoMin, DINO) or ``train`` (each batch's statistics, running
            statistics updated, parameters still frozen; AMDIM's ``task_classifiers.py``).
        bn_reestimate_batches: before each validation (not the sanity check), run this many random full batches
            of the evaluation split through the model with its BatchNorm layers in train mode, continuing the
            running averages (AMDIM ``utils.py`` ``_warmup_batchnorm``: 50); 0: never. Needs images (not
            ``cache_features``).
        bn_reestimate_seed: the batches of the re-estimation at epoch ``e`` come from seed ``bn_reestimate_seed + e``.
        mlp_classifier: also train AMDIM's MLP classifier
            (:func:`~mvssl_lightning.evaluation.classifiers.amdim_mlp_classifier`) on the detached features, at
            the head's learning rate, its loss added to the head's; logged as
            ``val/mlp_top1`` / ``val/mlp_top5``. Its parameters are disjoint from the linear head's.
        loss: ``cross_entropy`` or AMDIM's ``amdim_xent`` (:func:`~mvssl_lightning.evaluation.classifiers.amdim_xent`).
    """

    def __init__(
        self,
        checkpoint: Optional[str],
        num_classes: int,
        backbone: Optional[Backbone] = None,
        cifar_stem: Optional[bool] = None,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        head_batchnorm: bool = False,
        head_init: HeadInit = "normal",
        head_init_std: float = 0.01,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        lr_scaling: LRScaling = "linear",
        reference_batch_size: int = 256,
        batch_size: Optional[int] = None,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        schedule: Schedule = "cosine",
        schedule_interval: ScheduleInterval = "epoch",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        cache_features: bool = False,
        n_last_blocks: int = 1,
        avgpool_patchtokens: bool = False,
        checkpoint_key: CheckpointKey = "student",
        encoder_bn: EncoderBN = "eval",
        bn_reestimate_batches: int = 0,
        bn_reestimate_seed: int = 0,
        mlp_classifier: bool = False,
        loss: ClassifierLoss = "cross_entropy",
    ) -> None:
        super().__init__(checkpoint, backbone, cifar_stem, zero_init_residual, backbone_kwargs, n_last_blocks,
                         avgpool_patchtokens, checkpoint_key)
        if encoder_bn not in ("train", "eval"):
            raise ValueError(f"encoder_bn must be 'train' or 'eval', got {encoder_bn!r}")
        if loss not in ("cross_entropy", "amdim_xent"):
            raise ValueError(f"loss must be 'cross_entropy' or 'amdim_xent', got {loss!r}")
        if bn_reestimate_batches < 0:
            raise ValueError(f"bn_reestimate_batches must be >= 0, got {bn_reestimate_batches}")
        if (encoder_bn == "train" or bn_reestimate_batches > 0) and not batchnorm_layers(self.backbone):
            rank_zero_warn(
                f"encoder_bn={encoder_bn!r} / bn_reestimate_batches={bn_reestimate_batches} change nothing: the "
                f"backbone ({self.source.backbone}) has no BatchNorm layer"
            )
        self.encoder_bn = encoder_bn
        self.bn_reestimate_batches, self.bn_reestimate_seed = int(bn_reestimate_batches), int(bn_reestimate_seed)
        self.loss_name: ClassifierLoss = loss
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
        if schedule not in ("cosine", "step", "constant") or schedule_interval not in ("epoch", "step"):
            raise ValueError(f"unknown schedule {schedule!r} / schedule_interval {schedule_interval!r}")
        if lr_scaling not in ("linear", "none"):
            raise ValueError(f"lr_scaling must be 'linear' or 'none', got {lr_scaling!r}")
        if cache_features and not self.frozen:
            raise ValueError(f"cache_features needs a frozen backbone; {type(self).__name__} trains it")
        if cache_features and (encoder_bn == "train" or bn_reestimate_batches > 0):
            raise ValueError(
                f"cache_features serves features computed once in eval mode; encoder_bn={encoder_bn!r} / "
                f"bn_reestimate_batches={bn_reestimate_batches} need the backbone on every batch: set "
                "cache_features: false"
            )
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.head = self._build_head(head_batchnorm, head_init, head_init_std)
        self.mlp_head: Optional[nn.Sequential] = (
            amdim_mlp_classifier(self.feat_dim, self.num_classes) if mlp_classifier else None
        )
        self.optimizer_name = optimizer
        self.lr, self.lr_scaling, self.batch_size = lr, lr_scaling, batch_size
        self.reference_batch_size = reference_batch_size
        self.momentum, self.betas, self.weight_decay = momentum, (float(betas[0]), float(betas[1])), weight_decay
        self.trust_coefficient = trust_coefficient
        self.schedule, self.schedule_interval = schedule, schedule_interval
        self.milestones, self.gamma = [int(m) for m in milestones], gamma
        self.cache_features = cache_features
        self.val_top1 = MulticlassAccuracy(num_classes=self.num_classes, top_k=1, average="micro")
        self.val_top5: Optional[MulticlassAccuracy] = None
        if self.num_classes >= 5:
            self.val_top5 = MulticlassAccuracy(num_classes=self.num_classes, top_k=5, average="micro")
        self.val_mlp_top1: Optional[MulticlassAccuracy] = None
        self.val_mlp_top5: Optional[MulticlassAccuracy] = None
        if self.mlp_head is not None:
            self.val_mlp_top1 = MulticlassAccuracy(num_classes=self.num_classes, top_k=1, average="micro")
            if self.num_classes >= 5:
                self.val_mlp_top5 = MulticlassAccuracy(num_classes=self.num_classes, top_k=5, average="micro")
        self.train(self.training)  # the modes of encoder_bn from the start: Lightning's fit does not call train()

    def _build_head(self, batchnorm: bool, init: str, std: float) -> nn.Sequential:
        linear = nn.Linear(self.feat_dim, self.num_classes)
        if init == "normal":
            nn.init.normal_(linear.weight, mean=0.0, std=std)
            nn.init.zeros_(linear.bias)
        elif init == "zeros":
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        elif init != "default":
            raise ValueError(f"head_init must be one of normal, zeros, default; got {init!r}")
        layers: list[nn.Module] = [nn.BatchNorm1d(self.feat_dim, affine=False, eps=1e-6)] if batchnorm else []
        return nn.Sequential(*layers, linear)

    @property
    def linear(self) -> nn.Linear:
        """The head's linear layer."""
        return self.head[-1]  # type: ignore[return-value]

    @override
    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` of images ``(B, 3, H, W)`` or of cached features ``(B, D)``."""
        return self.head(x if x.dim() == 2 else self.features(x))

    # ------------------------------------------------------------------ steps
    @override
    def setup(self, stage: str) -> None:
        self._check_num_classes(self.num_classes)
        if self.cache_features and self.trainer.world_size > 1:
            raise ValueError(
                f"cache_features runs on one process (got world size {self.trainer.world_size}); use "
                "trainer.devices: 1 (features of ImageNet, 1.28M x 2048 floats, take 10 GB) or cache_features: false"
            )

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        f = x if x.dim() == 2 else self.features(x)
        loss = classifier_loss(self.loss_name, self.head(f), y)
        if self.mlp_head is not None:  # AMDIM's Evaluator: both classifiers on the detached feature, losses summed
            mlp_loss = classifier_loss(self.loss_name, self.mlp_head(f.detach()), y)
            self.log("train/mlp_loss", mlp_loss, batch_size=y.shape[0])
            loss = loss + mlp_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=y.shape[0])
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch
        f = x if x.dim() == 2 else self.features(x)
        out = {"features": f.detach(), "targets": y}
        if dataloader_idx != len(self.trainer.num_val_batches) - 1:  # a kNN bank loader: features only
            return out
        logits = self.head(f)
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, add_dataloader_idx=False, batch_size=y.shape[0])
        self.val_top1.update(logits, y)
        self.log("val/top1", self.val_top1, prog_bar=True, **kw)
        if self.val_top5 is not None:
            self.val_top5.update(logits, y)
            self.log("val/top5", self.val_top5, **kw)
        self.log("val/loss", classifier_loss(self.loss_name, logits, y), sync_dist=True, **kw)
        if self.mlp_head is not None and self.val_mlp_top1 is not None:
            mlp_logits = self.mlp_head(f)
            self.val_mlp_top1.update(mlp_logits, y)
            self.log("val/mlp_top1", self.val_mlp_top1, **kw)
            if self.val_mlp_top5 is not None:
                self.val_mlp_top5.update(mlp_logits, y)
                self.log("val/mlp_top5", self.val_mlp_top5, **kw)
        return out

    # ------------------------------------------------------------------ BatchNorm re-estimation
    @override
    def on_validation_start(self) -> None:
        if self.bn_reestimate_batches > 0 and not self.trainer.sanity_checking:
            self.reestimate_batchnorm()

    def reestimate_batchnorm(self, loader: Optional[Any] = None) -> int:
        """Re-estimate the BatchNorm statistics on ``bn_reestimate_batches`` random full batches of ``loader``
        (default: the trainer's evaluation loader, the last validation loader) and return how many batches ran.

        As AMDIM's ``_warmup_batchnorm`` (:mod:`mvssl_lightning.evaluation.bn`): the backbone's BatchNorm layers
        and the heads (their BatchNorm and Dropout) in train mode, the backbone's other layers in eval mode (a
        frozen backbone), under ``no_grad``; the running averages continue (no reset). Every mode is restored
        afterwards; under DDP process 0's statistics are broadcast. ``fast_dev_run``: one batch.
        """
        trainer = self.trainer
        if loader is None:
            loaders = trainer.val_dataloaders
            loader = loaders[-1] if isinstance(loaders, (list, tuple)) else loaders
        wanted = 1 if getattr(trainer, "fast_dev_run", False) else self.bn_reestimate_batches
        batches = reestimation_loader(loader, wanted, self.bn_reestimate_seed + self.current_epoch)
        heads = [h for h in (self.head, self.mlp_head) if h is not None]

        def forward(x: Tensor) -> None:
            f = self._features(x)
            for head in heads:
                head(f)

        with restore_modes(self):
            self.eval()
            set_batchnorm_mode(self.backbone, True)
            for head in heads:
                head.train()
            dtype = param_dtype(self.backbone, torch.float32) or torch.float32
            count = reestimate_batchnorm(forward, batches, self.device, dtype)
        if count < wanted:
            rank_zero_warn(
                f"BatchNorm re-estimation ran {count} of bn_reestimate_batches={wanted} batches: the evaluation "
                f"split holds {len(batches.dataset)} images, {count} full batches of {batches.batch_size}"  # type: ignore[arg-type]
            )
        if trainer.world_size > 1:
            buffers = batchnorm_buffers(self)
            synced = trainer.strategy.broadcast([b.detach().clone() for b in buffers], src=0)
            with torch.no_grad():
                for buffer, value in zip(buffers, synced, strict=True):
                    buffer.copy_(value.to(buffer.device))
        return count

    # ------------------------------------------------------------------ optimisation
    def scale(self) -> float:
        """The lr multiplier of ``lr_scaling``: ``batch_size * world_size * accumulate_grad_batches / 256``
        (:func:`mvssl_lightning.core.steps.scaled_lr`, the rule of pre-training)."""
        if self.lr_scaling == "none":
            return 1.0
        return scaled_lr(1.0, self.lr_scaling, self.trainer, self.batch_size, self.reference_batch_size)

    def head_parameters(self) -> list[nn.Parameter]:
        """The classifiers' parameters: the linear head's, then the MLP classifier's (``mlp_classifier``)."""
        mlp = list(self.mlp_head.parameters()) if self.mlp_head is not None else []
        return list(self.head.parameters()) + mlp

    def param_groups(self) -> list[dict]:
        """The optimised parameter groups (the classifiers', at the scaled ``lr``)."""
        return [{"params": self.head_parameters(), "lr": self.lr * self.scale()}]

    @override
    def configure_optimizers(self) -> Any:
        groups = self.param_groups()
        optimizer = build_optimizer(
            self.optimizer_name, groups, groups[0]["lr"], momentum=self.momentum, betas=self.betas,
            weight_decay=self.weight_decay, trust_coefficient=self.trust_coefficient,
        )
        factor = partial(
            lr_factor, schedule=self.schedule, interval=self.schedule_interval,
            steps_per_epoch=steps_per_epoch(self.trainer), total_steps=total_steps(self.trainer),
            milestones=self.milestones, gamma=self.gamma,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FineTune(LinearEval):
    """Fine-tuning of the whole network with a linear head (semi-supervised protocol, module docstring).

    The backbone trains at ``backbone_lr`` (scaled like ``lr``), in train mode; the head at ``lr``. Defaults:
    Barlow Twins' ``evaluate.py --weights finetune`` (SGD, momentum 0.9, no weight decay, head ``lr`` 0.5,
    ``backbone_lr`` 0.005, cosine per epoch, ``N(0, 0.01)`` head). ``encoder_bn`` defaults to ``train`` (BatchNorm
    statistics update, as every official fine-tuning script: ``model.train()``); ``eval`` keeps the pre-training
    statistics while the weights train. Other arguments: :class:`LinearEval` (``cache_features`` is not
    available: the features change).

    ``layer_decay`` (ViTs; BEiT / MAE fine-tuning): layer-wise learning-rate decay from timm's
    ``param_groups_layer_decay``: block ``i`` (0-indexed) of ``L`` trains at ``backbone_lr * layer_decay^(L - 1 - i)``
    (the patch and position embeddings at ``layer_decay^L``, the final norm with the last block), no weight decay
    on biases, norms and what the backbone's ``no_weight_decay()`` names; needs a backbone with timm's
    ``group_matcher``.
    """

    frozen = False

    def __init__(
        self,
        checkpoint: Optional[str],
        num_classes: int,
        backbone_lr: float = 0.005,
        lr: float = 0.5,
        layer_decay: Optional[float] = None,
        encoder_bn: EncoderBN = "train",
        **kwargs: Any,
    ) -> None:
        if backbone_lr < 0:
            raise ValueError(f"backbone_lr must be >= 0, got {backbone_lr}")
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] or None, got {layer_decay}")
        super().__init__(checkpoint, num_classes, lr=lr, encoder_bn=encoder_bn, **kwargs)
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        if layer_decay is not None and not callable(getattr(self.backbone, "group_matcher", None)):
            raise ValueError(f"layer_decay needs a timm backbone with group_matcher (a ViT), got "
                             f"{type(self.backbone).__name__}")

    @override
    def param_groups(self) -> list[dict]:
        scale = self.scale()
        head = {"params": self.head_parameters(), "lr": self.lr * scale}
        if self.layer_decay is None:
            return [head, {"params": list(self.backbone.parameters()), "lr": self.backbone_lr * scale}]
        from timm.optim import param_groups_layer_decay

        no_decay: set[str] = getattr(self.backbone, "no_weight_decay", set)()
        groups = param_groups_layer_decay(self.backbone, self.weight_decay, no_decay, layer_decay=self.layer_decay)
        for group in groups:
            group["lr"] = self.backbone_lr * scale * group.pop("lr_scale", 1.0)
        return [head, *groups]


class KNNEval(EvalModule):
    """Weighted kNN accuracy of a frozen backbone: ``mvssl-eval validate`` only (module docstring).

    Args:
        checkpoint, backbone, cifar_stem, zero_init_residual, backbone_kwargs: see :class:`EvalModule`.
        num_classes: classes (checked against the data; inferred from the bank labels when None).
        k, temperature: :class:`~mvssl_lightning.callbacks.OnlineKNN`'s neighbours and vote temperature.
        max_bank_size, bank_dtype: :class:`~mvssl_lightning.callbacks.OnlineKNN`'s bank cap (None: the whole
            training split) and bank precision (``"float32"``, exact; ``"bfloat16"`` / ``"float16"``: half
            the memory, rounded features). The search is chunked either way: at ImageNet scale
            (1.28M x 2048) the bank is the only full-size tensor, 10 GB in float32, 5 GB in a half type.

    The data module must yield two validation loaders, bank then queries (``LabeledDataModule(knn_bank=True)``).
    """

    def __init__(
        self,
        checkpoint: Optional[str],
        num_classes: Optional[int] = None,
        k: int = 200,
        temperature: float = 0.1,
        backbone: Optional[Backbone] = None,
        cifar_stem: Optional[bool] = None,
        zero_init_residual: bool = True,
        backbone_kwargs: Optional[dict] = None,
        checkpoint_key: CheckpointKey = "student",
        max_bank_size: Optional[int] = None,
        bank_dtype: BankDtype = "float32",
    ) -> None:
        super().__init__(checkpoint, backbone, cifar_stem, zero_init_residual, backbone_kwargs,
                         checkpoint_key=checkpoint_key)
        self.save_hyperparameters()
        self.knn = OnlineKNN(k=k, temperature=temperature, num_classes=num_classes, log_prefix="knn",
                             max_bank_size=max_bank_size, bank_dtype=bank_dtype)
        self.num_classes = num_classes

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        return [self.knn]

    @override
    def setup(self, stage: str) -> None:
        self._check_num_classes(self.num_classes)

    @override
    def on_validation_start(self) -> None:
        if len(self.trainer.num_val_batches) < 2:
            raise ValueError(
                "KNNEval needs two validation loaders, the bank (training split) then the queries: "
                "set data.knn_bank: true"
            )

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        x, y = batch
        return {"features": self.features(x), "targets": y}

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        raise RuntimeError("KNNEval has nothing to train: run `mvssl-eval validate` (trainer.validate)")

    @override
    def configure_optimizers(self) -> Any:
        raise RuntimeError("KNNEval has nothing to train: run `mvssl-eval validate` (trainer.validate)")
