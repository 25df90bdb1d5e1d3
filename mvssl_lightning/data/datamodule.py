"""``MultiViewDataModule``: multi-view training batches plus the eval loaders probes and kNN read.

Batches:

- ``train_dataloader()`` yields ``(views, targets)``: ``views`` a list of ``V`` tensors
  ``(B, 3, H_v, W_v)`` (the recipe's order: globals first, then locals), ``targets`` ``(B,)`` int64,
  ``-1`` where unknown.
- ``val_dataloader()`` returns ``[train set with eval transform, test set with eval transform]``,
  each yielding ``(images, targets)``, nothing dropped, in a fixed seeded random order (datasets are
  often sorted by class: with ``limit_val_batches`` the kNN bank and the probe's evaluation then see a
  random sample instead of one or two classes). Loader 0 is the kNN bank, loader 1 the queries / probe
  evaluation.

Order and augmentation of the training samples depend on ``(seed, epoch, index)`` only
(:mod:`mvssl_lightning.data.order`), and a run resumed mid-epoch continues where it stopped.

Checks: the constructor validates its arguments (short ``ValueError`` naming the argument) without
touching the disk; ``setup`` warns once when the training images are much smaller than the recipe's
crops; the training loader never yields a batch of one sample (every method has BatchNorm).

Two parts live in their own modules: which recipe and whether the images fit it
(:mod:`mvssl_lightning.data.recipes`), and with ``gpu_views`` the device stage that decodes and augments
the training batches and owns their random stream (:class:`~mvssl_lightning.data.device.stage.DeviceViewStage`).
The data module creates the stage in ``setup`` and hands it the training batches
(``on_after_batch_transfer``) and its share of the checkpoint (``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from mvssl_lightning.core.compat import batches_done
from mvssl_lightning.data.datasets import (
    DATASET_NAMES,
    FOLDER_LABELS,
    DatasetName,
    FolderLabels,
    MissingSplit,
    Split,
    WithSources,
    build_dataset,
    peek_num_classes,
)
from mvssl_lightning.data.device.registry import UnsupportedOnDevice
from mvssl_lightning.data.device.stage import DECODE_CHOICES, DecodeMode, DeviceViewStage
from mvssl_lightning.data.order import ResumableSampler, SeededSamples, seeded_permutation
from mvssl_lightning.data.recipes import (
    CIFAR_SIZED,
    ChosenViews,
    cifar_sized_images,
    find_normalize,
    largest_crop,
    method_default_views,
    recipe_views,
    resolve_views,
    shorter_sides,
    small_image_message,
)

if TYPE_CHECKING:  # imported when a run reads shards (LitData takes a while to import)
    from mvssl_lightning.data.shards import ShardLoader

__all__ = ["MultiViewDataModule", "multiview_collate"]

#: Seed of the fixed permutation that picks ``train_subset`` / ``test_subset`` samples.
SUBSET_SEED = 0


def multiview_collate(batch: Sequence[tuple[Any, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Collate ``(views, label)`` samples into ``(list of V tensors (B, ...), int64 targets (B,))``.

    A transform returning a single tensor instead of a list is treated as one view.
    """
    views_per_sample = [v if isinstance(v, (list, tuple)) else [v] for v, _ in batch]
    n_views = {len(v) for v in views_per_sample}
    if len(n_views) != 1:
        raise ValueError(f"samples in a batch have different numbers of views: {sorted(n_views)}")
    views = [torch.stack(list(vs)) for vs in zip(*views_per_sample, strict=True)]
    targets = torch.as_tensor([int(t) for _, t in batch], dtype=torch.int64)
    return views, targets


def _subset(dataset: Dataset, n: Optional[int], shuffled: bool = False) -> Dataset:
    """A deterministic random subset of ``n`` samples (same indices for the same length), kept in order;
    ``shuffled``: all (or ``n``) samples in that fixed random order instead."""
    size = len(dataset)  # type: ignore[arg-type]
    if (n is None or n >= size) and not shuffled:
        return dataset
    if n is not None and n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    idx = seeded_permutation(size, SUBSET_SEED)[: min(n or size, size)]
    return Subset(dataset, (idx if shuffled else idx.sort().values).tolist())


def _check_int(name: str, value: Optional[int], minimum: int, why: str = "") -> None:
    """``ValueError`` naming ``name`` unless ``value`` is ``None`` or an integer ``>= minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{f' ({why})' if why else ''}, got {value!r}")


class MultiViewDataModule(L.LightningDataModule):
    """Data for multi-view self-supervised training with online evaluation.

    Args:
        dataset: ``"default"`` (embedded CIFAR-10 subset, 5000 train / 1000 test, offline),
            ``"cifar10"``, ``"cifar100"``, ``"stl10"`` (train+unlabeled for training), ``"imagefolder"``
            (class folders ``data_dir/train/<class>``, ``data_dir/val/<class>``, or unlabelled images at any
            depth, see ``labels``), ``"npz"`` (``data_dir`` is the file) or ``"filelist"`` (``data_dir`` is a
            CSV or text file of image paths with optional labels and splits,
            :class:`~mvssl_lightning.data.files.FileList`) or ``"litdata"`` (LitData shards written by
            ``mvssl-data optimize``; ``data_dir`` is their directory or object-store URI, streamed with
            LitData's ``StreamingDataLoader``; :mod:`mvssl_lightning.data.shards`).
        data_dir: directory, file or URI of the dataset; ignored for ``"default"``.
        labels: how an image folder is labelled: ``"folders"`` (the class folders of ``train/``),
            ``"none"`` (unlabelled, any depth: ``data_dir/train`` and ``data_dir/val`` when ``train/``
            exists, else every image under ``data_dir`` and no evaluation split) or ``"auto"``
            (``folders`` when ``data_dir/train`` exists, else ``none``). Without labels the online probe and
            kNN say once that they are off; without an evaluation split there is no validation.
        class_list: keep only these classes of an image folder or a list file with class names: a file of
            class names (folder names, WordNet ids), or ``"imagenet100"`` (CMC's ImageNet-100 list, shipped
            with the package); labels follow the sorted list in every split.
        views: ``"auto"`` (the recipe of the method being trained: its ``default_views``, with the
            ``_cifar`` variant on CIFAR / CIFAR-100 and on npz or folder images whose median shorter side is
            at most 64 px; chosen in ``setup``, so switching
            ``--model.class_path`` switches the views too), a recipe name of
            ``mvssl_lightning.data.views.VIEW_RECIPES``, any callable
            ``PIL image -> list of tensors`` (e.g. a lightly transform; in YAML as ``class_path`` /
            ``init_args``), or an import path of such a class or factory (called with
            ``view_kwargs``), e.g. ``lightly.transforms.SimCLRTransform``.
        view_kwargs: keyword arguments for the recipe when ``views`` is a name or import path.
        eval_transform: single-view transform for the eval loaders. Default: the recipe's
            (``default_eval_view``); for a foreign transform, ToTensor + ImageNet normalisation on
            32 px datasets and ``eval_view()`` (Resize 256, CenterCrop 224) otherwise -- pass your
            own to match a foreign transform's size and normalisation.
        batch_size: training batch size per process, at least 2 (every method has BatchNorm, which
            cannot train on one sample).
        eval_batch_size: eval batch size per process (default ``batch_size``).
        num_workers: data-loading workers per loader.
        pin_memory: pin host memory (only used when CUDA is available).
        persistent_workers: keep workers alive between epochs (only when ``num_workers > 0``).
        download: let torchvision download ``cifar10``/``cifar100``/``stl10`` in ``prepare_data``.
        drop_last: drop the last incomplete training batch.  With ``False``, a last batch of one
            sample (per process) is still dropped, with a warning.
        train_subset: use only this many training samples (a fixed seeded choice); also caps the
            eval-train (kNN bank) set.
        test_subset: use only this many test samples (a fixed seeded choice).
        gpu_views: build the training views on the accelerator (``data/device``): workers only read
            file bytes (or hand over uint8 arrays), JPEGs are decoded in batches on the device and the
            recipe runs batched with per-sample random parameters, with the same parameter
            distributions as the CPU recipe.  Works on any device (CPU too).  A recipe step with no
            device counterpart falls back to the CPU path with a warning naming it.  The eval
            loaders keep the CPU path.
        decode: where JPEGs are decoded with ``gpu_views``: ``"device"`` (batched nvJPEG on CUDA,
            libjpeg-turbo on the CPU device), ``"workers"`` (in the data-loader workers; the batch
            is stacked uint8 when all images share a size), or ``"auto"``: on CUDA, files of at
            least 16 KB on the device and smaller ones (e.g. CIFAR's ~1 KB) in the workers; off
            CUDA, in the workers.

    Nothing touches the filesystem before ``prepare_data``/``setup``: the constructor only checks its
    arguments (``ValueError`` naming the argument), so ``--print_config`` works without the data.
    ``setup`` warns (once) when the training images are much smaller than the recipe's largest crop.
    """

    def __init__(
        self,
        dataset: DatasetName = "default",
        data_dir: Optional[str] = None,
        labels: FolderLabels = "auto",
        class_list: Optional[str] = None,
        views: Union[str, Callable] = "mveb_multicrop_cifar",
        view_kwargs: Optional[dict] = None,
        eval_transform: Optional[Callable] = None,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        download: bool = False,
        drop_last: bool = True,
        train_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        gpu_views: bool = False,
        decode: DecodeMode = "auto",
    ) -> None:
        super().__init__()
        self.dataset_name = str(dataset).lower()
        if self.dataset_name not in DATASET_NAMES:  # LightningCLI validates the Literal; this is for Python callers
            raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
        if data_dir is None and self.dataset_name != "default":
            raise ValueError(f"dataset '{self.dataset_name}' needs data_dir (its directory, or the .npz file)")
        _check_int("batch_size", batch_size, 2, "every method has BatchNorm, which cannot train on one sample")
        _check_int("eval_batch_size", eval_batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        _check_int("train_subset", train_subset, 1)
        _check_int("test_subset", test_subset, 1)
        if decode not in DECODE_CHOICES:  # LightningCLI validates the Literal; this is for Python callers
            raise ValueError(f"decode must be one of {DECODE_CHOICES}, got {decode!r}")
        if labels not in FOLDER_LABELS:
            raise ValueError(f"labels must be one of {FOLDER_LABELS}, got {labels!r}")
        if train_subset is not None and self.dataset_name == "litdata":  # checked before any data is read
            raise ValueError(
                f"train_subset={train_subset} is not supported with dataset: litdata (LitData streams the whole "
                "shards); write shards of the subset with mvssl-data optimize, or drop train_subset"
            )
        if class_list is not None and self.dataset_name not in ("imagefolder", "filelist"):
            raise ValueError(f"class_list applies to dataset imagefolder or filelist, not {self.dataset_name!r}")
        self.data_dir = data_dir
        self.labels = labels
        self.class_list = class_list
        self.view_kwargs = dict(view_kwargs or {})
        self._eval_transform_given = eval_transform
        self.views_name = "auto"
        self.view_transform: Optional[Callable] = None
        self.eval_transform: Optional[Callable] = None
        if views != "auto":  # auto: chosen in setup, from the method (_choose_recipe)
            self._use(resolve_views(views, self.view_kwargs, eval_transform, self.dataset_name))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.download = download
        self.drop_last = drop_last
        self.train_subset = train_subset
        self.test_subset = test_subset
        self.gpu_views = bool(gpu_views)
        self.decode = decode
        self.device_stage: Optional[DeviceViewStage] = None  # with gpu_views, created in setup
        self._device_state: dict[str, Any] = {}  # its share of a checkpoint loaded before setup
        self._resume_position: Optional[dict[str, int]] = None
        self._loader_state: Optional[dict[str, Any]] = None  # dataset: litdata, LitData's loader state to resume
        self._shard_train_loader: Optional[ShardLoader] = None
        self._sampled_sides: Optional[list[int]] = None
        self.train_dataset: Optional[Dataset] = None
        self.eval_train_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None

    # ------------------------------------------------------------------ view recipe
    def _use(self, chosen: ChosenViews) -> None:
        self.views_name, self.view_transform, self.eval_transform = chosen

    def _choose_recipe(self) -> None:
        """``views: auto``: the trained method's ``default_views`` (``_cifar`` variant on 32 px data)."""
        name, method = method_default_views(self.trainer)
        small = self.dataset_name in CIFAR_SIZED or cifar_sized_images(self._shorter_sides())
        self._use(recipe_views(name + ("_cifar" if small else ""), self.view_kwargs, self._eval_transform_given))
        rank_zero_info(f"views: auto -> '{self.views_name}' (the default of {method})")

    def _shorter_sides(self, train: Optional[Dataset] = None) -> list[int]:
        """Shorter sides of a few training images (headers only; ``[]`` when unknown), read once: from
        ``train`` when given, else from the training split built for this."""
        if self._sampled_sides is None:
            dataset = train if train is not None else self._build("train", None)  # type: ignore[arg-type]
            self._sampled_sides = shorter_sides(dataset)
        return self._sampled_sides

    def _check_image_size(self) -> None:
        """Warn when the training images are much smaller than the recipe's largest crop (a few headers read)."""
        crop = largest_crop(self.view_transform)
        if crop is None or self.eval_train_dataset is None:
            return
        message = small_image_message(crop, self._shorter_sides(self.eval_train_dataset), self.dataset_name,
                                      self.views_name)
        if message is not None:
            rank_zero_warn(message)

    # ------------------------------------------------------------------ properties
    @property
    def num_views(self) -> Optional[int]:
        """Views per image, when the transform says (``num_views`` or lightly's ``.transforms``)."""
        t = self.view_transform
        if t is not None and hasattr(t, "num_views"):
            return int(t.num_views)
        transforms = getattr(t, "transforms", None)
        if isinstance(transforms, (list, tuple)):
            return len(transforms)
        return None

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes (known for named datasets; read from labels/folders otherwise; 0 without labels)."""
        ds = self.test_dataset if self.test_dataset is not None else self.eval_train_dataset
        while isinstance(ds, Subset):
            ds = ds.dataset
        if ds is not None and hasattr(ds, "classes"):
            return len(ds.classes)
        return peek_num_classes(self.dataset_name, self.data_dir, self.labels, self.class_list)

    @property
    def has_labels(self) -> Optional[bool]:
        """Whether the evaluation data have labels (``None`` before ``setup`` when it cannot be told
        without reading the data); the online probe and kNN turn themselves off when it is ``False``."""
        classes = self.num_classes
        return None if classes is None else classes > 0

    @property
    def has_eval_split(self) -> bool:
        """Whether the dataset has an evaluation split (after ``setup``; an unlabelled folder may not)."""
        self._require_setup()
        return self.test_dataset is not None

    # ------------------------------------------------------------------ data
    def _build(self, split: Split, transform: Callable, include_unlabeled: bool = False, raw: bool = False) -> Dataset:
        return build_dataset(
            self.dataset_name, self.data_dir, split, transform, download=False,
            include_unlabeled=include_unlabeled, raw=raw, labels=self.labels, class_list=self.class_list,
        )

    @override
    def prepare_data(self) -> None:
        """Download torchvision datasets when ``download=True`` (called on one process)."""
        if not self.download or self.dataset_name not in ("cifar10", "cifar100", "stl10"):
            return
        splits: tuple[tuple[Split, bool], ...] = (("train", True), ("test", False))
        for split, unlabeled in splits:
            build_dataset(self.dataset_name, self.data_dir, split, None, download=True,
                          include_unlabeled=unlabeled)

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        """Build the training, eval-train and test datasets (once)."""
        if self.train_dataset is not None:
            return
        if self.view_transform is None:
            self._choose_recipe()
        assert self.view_transform is not None and self.eval_transform is not None
        if self.gpu_views and self.device_stage is None:
            try:
                self.device_stage = DeviceViewStage(self.view_transform, self.decode)
            except UnsupportedOnDevice as e:
                rank_zero_warn(f"gpu_views: {e}; using the CPU view pipeline instead")
            else:
                self.device_stage.load_state_dict(self._device_state)
        raw = self.device_stage is not None
        train = self._build("train", self.view_transform, True, raw=raw)
        # raw samples carry what each image is, so the device decoder's errors name the file
        self.train_dataset = _subset(WithSources(train) if raw else train, self.train_subset)
        self.eval_train_dataset = _subset(self._build("train", self.eval_transform), self.train_subset, True)
        try:
            self.test_dataset = _subset(self._build("test", self.eval_transform), self.test_subset, True)
        except MissingSplit as e:
            rank_zero_info(f"{e}: no validation (online probe accuracy, kNN and diagnostics are off)")
            self.test_dataset = None
        self._check_image_size()

    def _train_collate(self) -> Callable:
        if self.device_stage is None:
            return multiview_collate
        trainer = self.trainer
        return self.device_stage.collate_fn(on_cuda=trainer is not None and trainer.strategy.root_device.type == "cuda")

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
        )

    def _require_setup(self) -> None:
        if self.train_dataset is None:
            self.setup()

    @override
    def train_dataloader(self) -> DataLoader:
        """Shuffled ``(views, targets)`` batches of the training set."""
        self._require_setup()
        n = len(self.train_dataset)  # type: ignore[arg-type]
        if self.drop_last and n < self.batch_size:
            raise ValueError(
                f"the training set has {n} samples, fewer than batch_size={self.batch_size}, and "
                "drop_last is true: no batch would be produced; lower batch_size or set drop_last: false"
            )
        drop_last = self._train_drop_last(n)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        seed = torch.initial_seed() % 2**63  # seed_everything's seed: the run's order and augmentation
        if self.dataset_name == "litdata":
            return self._shard_loader(seed, drop_last)
        sampler = ResumableSampler(self.train_dataset, num_replicas=world, rank=rank,  # type: ignore[arg-type]
                                   shuffle=True, seed=seed)
        per_process = len(sampler)
        batches = per_process // self.batch_size if drop_last else math.ceil(per_process / self.batch_size)
        if self._resume_position is not None:
            # Lightning creates the loader's iterator before it sets the sampler's epoch on a restart:
            # position the sampler here (the epoch and the batches already trained on in it)
            epoch, done = self._resume_position["epoch"], self._resume_position["batches_done"]
            epoch, done = (epoch + 1, 0) if done >= batches else (epoch, done)
            sampler.set_epoch(epoch)
            sampler.skip_next(done * self.batch_size)
            self._resume_position = None
        workers = self.num_workers
        return DataLoader(
            SeededSamples(self.train_dataset, seed, reseed=self.device_stage is None),  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=self._train_collate(),
            generator=torch.Generator().manual_seed(seed),  # worker seeds without touching the global stream
        )

    def _shard_loader(self, seed: int, drop_last: bool) -> ShardLoader:
        """``dataset: litdata``: LitData's loader over the shards, shuffled from ``(seed, epoch)``; LitData splits
        the epoch over processes, nodes and workers and holds the position in it (resumed from the checkpoint)."""
        from mvssl_lightning.data.shards import ShardLoader, ShardStream

        stream = ShardStream(str(self.data_dir), "train", self.view_transform, raw=self.device_stage is not None,
                             seed=seed)
        workers = self.num_workers
        loader = ShardLoader(
            stream,
            batch_size=self.batch_size,
            num_workers=workers,
            drop_last=drop_last,  # LitData's: every process and worker gets whole batches (forced under DDP)
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers > 0,
            collate_fn=self._train_collate(),
            generator=torch.Generator().manual_seed(seed),  # worker seeds without touching the global stream
            position=self._batches_trained,
        )
        if self._loader_state is not None:  # a resumed run: LitData's saved position (epoch, samples, workers)
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self._resume_position = None
        self._shard_train_loader = loader
        return loader

    def _batches_trained(self) -> int:
        """Training batches of the current epoch whose step was taken (0 outside ``fit``)."""
        trainer = self.trainer
        return batches_done(trainer) if trainer is not None and trainer.state.fn == "fit" else 0

    def _train_drop_last(self, n: int) -> bool:
        """``drop_last`` of the training loader: also true when the last batch would hold one sample."""
        if self.drop_last:
            return True
        world = self.trainer.world_size if self.trainer is not None else 1
        per_process = math.ceil(n / world)  # the distributed sampler pads every process to this
        if per_process % self.batch_size != 1:
            return False
        if per_process == 1:
            raise ValueError(
                f"the training set has {n} sample(s), 1 per process: BatchNorm cannot train on a batch of "
                "one sample; use more training samples"
            )
        rank_zero_warn(
            f"the last training batch of each epoch would hold 1 sample ({per_process} samples per process, "
            f"batch_size={self.batch_size}), which BatchNorm cannot train on: it is dropped (set "
            "drop_last: true, or change batch_size / train_subset, to avoid this message)"
        )
        return True

    @override
    def val_dataloader(self) -> list[DataLoader]:
        """``[eval-train loader (kNN bank / probe train), test loader]``, yielding ``(images, targets)``;
        ``[]`` (no validation) when the dataset has no evaluation split."""
        self._require_setup()
        if self.test_dataset is None:
            return []
        return [
            self._eval_loader(self.eval_train_dataset),  # type: ignore[arg-type]
            self._eval_loader(self.test_dataset),
        ]

    # ------------------------------------------------------------------ device stage and checkpoint state
    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``gpu_views``, turn a raw training batch into its views on the batch's device."""
        if self.device_stage is None:
            return batch
        return self.device_stage(batch, rank=self.trainer.global_rank if self.trainer is not None else 0)

    def data_summary(self) -> dict[str, Any]:
        """What a checkpoint records of the pre-training data: the dataset, the view recipe, the largest crop
        (the image size the backbone was trained at) and the evaluation transform's normalisation."""
        summary: dict[str, Any] = {"dataset": self.dataset_name, "views": self.views_name}
        crop = largest_crop(self.view_transform) if self.view_transform is not None else None
        if crop is not None:
            summary["image_size"] = int(crop)
        normalize = find_normalize(self.eval_transform) if self.eval_transform is not None else None
        if normalize is not None:
            summary["mean"], summary["std"] = normalize
        return summary

    @override
    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch (for an exact mid-epoch resume) and, with ``gpu_views``,
        the device stage's generator state (key ``view_generator``)."""
        state: dict[str, Any] = {}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == "fit":
            state["train_position"] = {"epoch": trainer.current_epoch, "batches_done": batches_done(trainer)}
        if self.device_stage is not None:
            state.update(self.device_stage.state_dict())
        if self._shard_train_loader is not None and "train_position" in state:
            state["litdata_loader"] = self._shard_train_loader.state_dict()  # the batches trained on, not fetched
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")
        self._loader_state = state_dict.get("litdata_loader")
        if self.device_stage is not None:
            self.device_stage.load_state_dict(state_dict)
        else:  # handed to the stage when setup creates it
            self._device_state.update(state_dict)

    @override
    def test_dataloader(self) -> DataLoader:
        """The test set with the eval transform, yielding ``(images, targets)``."""
        self._require_setup()
        if self.test_dataset is None:
            raise MissingSplit(f"dataset {self.dataset_name} at {self.data_dir} has no evaluation split to test on")
        return self._eval_loader(self.test_dataset)
