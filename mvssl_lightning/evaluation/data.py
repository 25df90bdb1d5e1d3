"""``LabeledDataModule``: ``(image, label)`` batches for linear evaluation, fine-tuning and kNN.

The same datasets as :class:`~mvssl_lightning.data.MultiViewDataModule` (``default``, ``cifar10``,
``cifar100``, ``stl10``, ``imagefolder``, ``npz``; built by :func:`~mvssl_lightning.data.datasets.build_dataset`),
with the transforms of the evaluation protocols:

=========================  =======================================================================
``train_transform``        training images
=========================  =======================================================================
``random_resized_crop``    ``RandomResizedCrop(image_size, scale=crop_scale)``, horizontal flip (the
                           ImageNet protocols: MVEB ``lineval.py``, MEC ``main_lincls.py``, InfoMin
                           ``main_linear.py`` with ``crop_scale=(0.2, 1)``, Barlow Twins ``evaluate.py``)
``crop_flip``              ``RandomCrop(image_size, padding=4)``, horizontal flip (the 32 px protocol)
``none``                   the evaluation transform (no augmentation; what the cached-features path uses)
``auto``                   ``crop_flip`` on 32 px datasets (``default``, ``cifar10``, ``cifar100``),
                           ``random_resized_crop`` otherwise
a callable                 any ``PIL image -> tensor`` transform, e.g. :class:`FirstView` of a view recipe
=========================  =======================================================================

``randaugment=True`` inserts InfoMin's RandAugment after the flip (PyContrast ``--aug_linear RA``). The
evaluation transform is :func:`~mvssl_lightning.data.views.eval_view_cifar` on 32 px datasets (ToTensor,
Normalize) and :func:`~mvssl_lightning.data.views.eval_view` otherwise (Resize ``resize`` = 256,
CenterCrop ``image_size`` = 224), unless ``eval_transform`` is given. Normalisation defaults to the
statistics the library's pre-training recipes use for that dataset (CIFAR-10's on 32 px datasets,
ImageNet's otherwise).

Label subsets (semi-supervised protocols), on the training split, computed from the seed alone (no
process rank, no global RNG), so every DDP process and every re-run keeps the same images:

* ``label_fraction=f``: per class ``c`` with ``n_c`` labelled images, ``max(1, round(f n_c))`` images
  chosen by a permutation from ``torch.Generator().manual_seed(label_seed)`` (classes in label order);
* ``label_list=path``: a text file, one entry per line (blank lines and ``#`` comments skipped). For
  ``imagefolder`` an entry is an image's file name (ImageNet's official 1 % / 10 % lists, SimCLR's
  ``imagenet_subsets/1percent.txt``, hold names like ``n01440764_10026.JPEG``); for the other datasets
  an integer index into the training split. Unknown entries are an error naming the file and the first
  of them.

Images labelled ``-1`` (unknown) are left out of both splits. ``val_dataloader()`` is the evaluation
split (``test`` / ImageFolder ``val``); with ``knn_bank=True`` it is ``[train split with the evaluation
transform, evaluation split]``, the pair :class:`~mvssl_lightning.callbacks.OnlineKNN` reads (bank, queries).

When the model asks for cached features (``LinearEval(cache_features=True)``), the loaders yield
in-memory features instead of images: the model encodes each split once with the evaluation transform
(:meth:`~mvssl_lightning.evaluation.LinearEval.extract_features`) and :class:`FeatureLoader` serves
them in the same order as the image loader would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union, get_args

import lightning as L
import numpy as np
import torch
import torchvision.transforms as T
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from mvssl_lightning.data.datamodule import SUBSET_SEED
from mvssl_lightning.data.datasets import DATASET_NAMES, build_dataset, peek_num_classes
from mvssl_lightning.data.order import seeded_permutation
from mvssl_lightning.data.recipes import CIFAR_SIZED
from mvssl_lightning.data.views import (
    CIFAR10_NORMALIZE,
    IMAGENET_NORMALIZE,
    VIEW_RECIPES,
    InfoMinRandAugment,
    eval_view,
    eval_view_cifar,
    get_view_recipe,
    to_tensor_normalize,
)
from mvssl_lightning.data.views.infomin import mean_pixel
from mvssl_lightning.evaluation.features import EpochShuffle, FeatureLoader

__all__ = [
    "CIFAR_SIZED",
    "FirstView",
    "LabeledDataModule",
    "TrainTransform",
    "balanced_label_subset",
    "dataset_targets",
    "read_label_list",
]

#: The named training transforms (module docstring).
TrainTransform = Literal["auto", "random_resized_crop", "crop_flip", "none"]
_TRAIN_TRANSFORMS = get_args(TrainTransform)
_SHOWN = 5


class FirstView:
    """View 0 of a named view recipe, as one ``PIL image -> tensor`` transform.

    For protocols that train their classifier on the pre-training augmentation: AMDIM's classifiers see
    ``x1`` of its view pair (``amdim-public`` ``task_classifiers.py``). ``views`` is a name of
    :data:`~mvssl_lightning.data.views.VIEW_RECIPES`; ``view_kwargs`` go to the recipe.
    """

    def __init__(self, views: str, view_kwargs: Optional[dict] = None) -> None:
        if views not in VIEW_RECIPES:
            raise ValueError(f"unknown view recipe {views!r}; valid names: {', '.join(VIEW_RECIPES)}")
        self.recipe = get_view_recipe(views, **(view_kwargs or {}))

    def __call__(self, image: Any) -> Any:
        return self.recipe(image)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.recipe!r})"


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """The labels of every sample (int64), read without decoding any image.

    Knows ``Subset`` and the ``targets`` / ``labels`` attributes of our npz datasets and torchvision's
    CIFAR, STL-10 and ImageFolder.
    """
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64).reshape(-1)
    raise TypeError(f"cannot read the labels of {type(dataset).__name__} without decoding it (no targets/labels)")


def balanced_label_subset(targets: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the labelled samples (module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    keep = []
    for c in np.unique(targets[targets >= 0]):
        members = np.flatnonzero(targets == c)
        k = max(1, int(round(fraction * len(members))))
        order = torch.randperm(len(members), generator=generator).numpy()
        keep.append(members[order[:k]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"label_list not found: {path}")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    entries = [line for line in lines if line]
    if not entries:
        raise ValueError(f"label_list {path} lists no images")
    return entries


def read_label_list(path: Union[str, Path], dataset: Dataset) -> np.ndarray:
    """Sorted indices into ``dataset`` of the entries of the list file ``path`` (module docstring)."""
    path = Path(path).expanduser()
    entries = _read_lines(path)
    samples = getattr(dataset, "samples", None)
    if samples is not None:  # ImageFolder: match by file name
        index: dict[str, int] = {}
        for i, (file, _) in enumerate(samples):
            index.setdefault(Path(file).name, i)
        unknown = [e for e in entries if Path(e).name not in index]
        if unknown:
            raise ValueError(
                f"label_list {path}: {len(unknown)} of {len(entries)} entries name no image of the training split, "
                f"e.g. {', '.join(unknown[:_SHOWN])}"
            )
        return np.unique(np.asarray([index[Path(e).name] for e in entries], dtype=np.int64))
    n = len(dataset)  # type: ignore[arg-type]
    bad = [e for e in entries if not e.lstrip("-").isdigit() or not 0 <= int(e) < n]
    if bad:
        raise ValueError(
            f"label_list {path}: {len(bad)} of {len(entries)} entries are not indices in [0, {n}) of the "
            f"training split (one integer per line for this dataset), e.g. {', '.join(bad[:_SHOWN])}"
        )
    return np.unique(np.asarray([int(e) for e in entries], dtype=np.int64))


def _seeded_subset(n: int, size: Optional[int]) -> Optional[np.ndarray]:
    """The pre-training data module's fixed subset of ``size`` of ``n`` samples (sorted), or None for all."""
    if size is None or size >= n:
        return None
    if size <= 0:
        raise ValueError(f"subset size must be positive, got {size}")
    return np.sort(seeded_permutation(n, SUBSET_SEED)[:size].numpy())


class LabeledDataModule(L.LightningDataModule):
    """``(images, labels)`` batches for linear evaluation, fine-tuning and kNN (module docstring).

    Args:
        dataset: ``default``, ``cifar10``, ``cifar100``, ``stl10`` (its labelled ``train`` split),
            ``imagefolder`` (``data_dir/train``, ``data_dir/val``) or ``npz`` (``data_dir`` is the file).
        data_dir: directory (or npz file) of the dataset; ignored for ``default``.
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size per process (default ``batch_size``).
        train_transform: a name (module docstring) or a callable ``PIL image -> tensor``.
        crop_scale: ``scale`` of ``RandomResizedCrop`` (0.08-1 as torchvision; InfoMin 0.2-1).
        image_size: crop size (default 32 on 32 px datasets, else 224).
        resize: evaluation ``Resize`` before the centre crop (default ``round(image_size * 256 / 224)``).
        randaugment: InfoMin's RandAugment after the flip (PyContrast ``--aug_linear RA``).
        normalize: ``{"mean": [...], "std": [...]}``; default per dataset (module docstring).
        eval_transform: evaluation transform (overrides the default one).
        label_fraction: keep this class-balanced fraction of the training labels.
        label_list: keep the training images listed in this file.
        label_seed: seed of ``label_fraction``.
        train_subset, val_subset: keep this many samples of the split (a fixed seeded choice, for
            quick runs), applied after the label subset.
        knn_bank: ``val_dataloader()`` returns ``[train split with the evaluation transform, evaluation split]``.
        shuffle_seed: seed of the training order (:class:`EpochShuffle`: ``shuffle_seed + epoch``); default
            the seed of ``seed_everything`` (``PL_GLOBAL_SEED``, the same on every process), else 0. Under
            DDP, Lightning shards this order across the processes.
        num_workers, pin_memory, persistent_workers: data-loader settings.
        download: let torchvision download ``cifar10`` / ``cifar100`` / ``stl10`` in ``prepare_data``.
        drop_last: drop the last incomplete training batch (the official linear protocols keep it).
    """

    def __init__(
        self,
        dataset: str = "default",
        data_dir: Optional[str] = None,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        train_transform: Union[TrainTransform, Callable] = "auto",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        image_size: Optional[int] = None,
        resize: Optional[int] = None,
        randaugment: bool = False,
        normalize: Optional[dict] = None,
        eval_transform: Optional[Callable] = None,
        label_fraction: Optional[float] = None,
        label_list: Optional[str] = None,
        label_seed: int = 0,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        knn_bank: bool = False,
        shuffle_seed: Optional[int] = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        download: bool = False,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.dataset_name = dataset.lower()
        if self.dataset_name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
        if isinstance(train_transform, str) and train_transform not in _TRAIN_TRANSFORMS:
            raise ValueError(
                f"train_transform must be one of {_TRAIN_TRANSFORMS} or a callable, got {train_transform!r}"
            )
        if label_fraction is not None and label_list is not None:
            raise ValueError("set label_fraction or label_list, not both")
        if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        if batch_size <= 0 or (eval_batch_size is not None and eval_batch_size <= 0):
            raise ValueError(f"batch sizes must be positive, got {batch_size} / {eval_batch_size}")
        scale = tuple(float(v) for v in crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {crop_scale}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.small = self.dataset_name in CIFAR_SIZED
        self.image_size = int(image_size or (32 if self.small else 224))
        self.resize = int(resize or round(self.image_size * 256 / 224))
        default_normalize = CIFAR10_NORMALIZE if self.small else IMAGENET_NORMALIZE
        self.normalize = normalize if normalize is not None else default_normalize
        self.crop_scale = (scale[0], scale[1])
        self.randaugment = randaugment
        self.train_transform_name: str = train_transform if isinstance(train_transform, str) else "callable"
        self.eval_transform: Callable = eval_transform if eval_transform is not None else self._default_eval()
        self.train_transform: Callable = self._train(train_transform)
        self.label_fraction = label_fraction
        self.label_list = label_list
        self.label_seed = label_seed
        self.train_subset = train_subset
        self.val_subset = val_subset
        self.knn_bank = knn_bank
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.download = download
        self.drop_last = drop_last
        self.train_indices: Optional[np.ndarray] = None
        self.train_dataset: Optional[Dataset] = None
        self.eval_train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self._num_classes: Optional[int] = None
        self._features: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ transforms
    def _default_eval(self) -> Callable:
        if self.small and self.image_size == 32:
            return eval_view_cifar(normalize=self.normalize)
        return eval_view(size=self.image_size, resize=self.resize, normalize=self.normalize)

    def _train(self, name: Union[str, Callable]) -> Callable:
        if callable(name):
            return name
        if name == "auto":
            name = "crop_flip" if self.small else "random_resized_crop"
            self.train_transform_name = name
        if name == "none":
            if self.randaugment:
                raise ValueError("randaugment needs an augmenting train_transform, not 'none'")
            return self.eval_transform
        crop: Callable = (
            T.RandomResizedCrop(self.image_size, scale=self.crop_scale)
            if name == "random_resized_crop"
            else T.RandomCrop(self.image_size, padding=4)
        )
        steps: list[Callable] = [crop, T.RandomHorizontalFlip()]
        if self.randaugment:
            steps.append(InfoMinRandAugment(fill=mean_pixel(self.normalize)))
        return T.Compose(steps + to_tensor_normalize(self.normalize))

    # ------------------------------------------------------------------ metadata
    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes from the dataset's metadata (``classes`` / ``class_names``; read from the
        label file or class folders before ``setup``)."""
        if self._num_classes is not None:
            return self._num_classes
        return peek_num_classes(self.dataset_name, self.data_dir)

    # ------------------------------------------------------------------ data
    def _build(self, split: Literal["train", "test"], transform: Callable) -> Dataset:
        return build_dataset(self.dataset_name, self.data_dir, split, transform, download=False)

    @override
    def prepare_data(self) -> None:
        """Download torchvision datasets when ``download=True`` (called on one process)."""
        if self.download and self.dataset_name in ("cifar10", "cifar100", "stl10"):
            splits: tuple[Literal["train", "test"], ...] = ("train", "test")
            for split in splits:
                build_dataset(self.dataset_name, self.data_dir, split, None, download=True)

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        """Build the splits and the label subset (once); identical on every process."""
        if self.val_dataset is not None:
            return
        train = self._build("train", self.train_transform)
        targets = dataset_targets(train)
        labelled = np.flatnonzero(targets >= 0)
        if self.label_list is not None:
            chosen = read_label_list(self.label_list, train)
            unlabelled = chosen[targets[chosen] < 0]
            if len(unlabelled):
                raise ValueError(f"label_list {self.label_list} lists images without a label, e.g. indices "
                                 f"{unlabelled[:_SHOWN].tolist()}")
        elif self.label_fraction is not None:
            chosen = balanced_label_subset(targets, self.label_fraction, self.label_seed)
        else:
            chosen = labelled
        sub = _seeded_subset(len(chosen), self.train_subset)
        if sub is not None:
            chosen = chosen[sub]
        self.train_indices = chosen
        full = len(chosen) == len(targets)
        self.train_dataset = train if full else Subset(train, chosen.tolist())
        eval_train = train if self.train_transform is self.eval_transform else self._build("train", self.eval_transform)
        self.eval_train_dataset = eval_train if full else Subset(eval_train, chosen.tolist())
        val = self._build("test", self.eval_transform)
        val_targets = dataset_targets(val)
        keep = np.flatnonzero(val_targets >= 0)
        sub = _seeded_subset(len(keep), self.val_subset)
        if sub is not None:
            keep = keep[sub]
        self.val_dataset = val if len(keep) == len(val_targets) else Subset(val, keep.tolist())
        classes = getattr(train, "classes", None)
        self._num_classes = len(classes) if classes else int(targets.max()) + 1

    def _shuffle_seed(self) -> int:
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        seed = self._shuffle_seed()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), seed) if shuffle else None,  # type: ignore[arg-type]
            drop_last=shuffle and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _require_setup(self) -> None:
        if self.val_dataset is None:
            self.setup()

    def _feature_model(self) -> Any:
        """The model, when it asks for cached features (``cache_features``), else None."""
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        return model if getattr(model, "cache_features", False) else None

    def _cached(self, split: str, model: Any) -> tuple[Tensor, Tensor]:
        key = (split, id(model))
        if key not in self._features:
            dataset = self.eval_train_dataset if split == "train" else self.val_dataset
            loader = self._loader(dataset, self.eval_batch_size, shuffle=False)  # type: ignore[arg-type]
            self._features[key] = model.extract_features(loader)
        return self._features[key]

    @override
    def train_dataloader(self) -> Any:
        """Shuffled ``(images, labels)`` batches (or cached features) of the training split."""
        self._require_setup()
        model = self._feature_model()
        if model is not None:
            if self.train_transform_name != "none":
                raise ValueError(
                    f"cache_features trains on features of the evaluation transform, but train_transform is "
                    f"{self.train_transform_name!r}; set data.train_transform: none, or model.cache_features: false"
                )
            features, targets = self._cached("train", model)
            return FeatureLoader(
                features, targets, self.batch_size, shuffle=True, seed=self._shuffle_seed(), drop_last=self.drop_last
            )
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)  # type: ignore[arg-type]

    @override
    def val_dataloader(self) -> Any:
        """The evaluation split (``[train split, evaluation split]`` with ``knn_bank``), unshuffled."""
        self._require_setup()
        model = self._feature_model()
        loaders: list[Any] = []
        for split, dataset in (("train", self.eval_train_dataset), ("val", self.val_dataset)):
            if split == "train" and not self.knn_bank:
                continue
            if model is not None:
                loaders.append(FeatureLoader(*self._cached(split, model), batch_size=self.eval_batch_size))
            else:
                loaders.append(self._loader(dataset, self.eval_batch_size, shuffle=False))  # type: ignore[arg-type]
        return loaders if self.knn_bank else loaders[0]

    @override
    def teardown(self, stage: Optional[str] = None) -> None:
        self._features.clear()
