"""``LabeledDataModule``: ``(image, label)`` batches for linear evaluation, fine-tuning and kNN.

The same datasets as :class:`~mvssl_lightning.data.MultiViewDataModule` (``default``, ``cifar10``,
``cifar100``, ``stl10``, ``imagefolder``, ``npz``, ``filelist``, ``litdata``; built by
:func:`~mvssl_lightning.data.datasets.build_dataset`), with the transforms of the evaluation protocols:

=========================  =======================================================================
``train_transform``        training images
=========================  =======================================================================
``random_resized_crop``    ``RandomResizedCrop(image_size, scale=crop_scale)``, horizontal flip (the
                           ImageNet protocols: MVEB ``lineval.py``, MEC ``main_lincls.py``, InfoMin
                           ``main_linear.py`` with ``crop_scale=(0.2, 1)``, Barlow Twins ``evaluate.py``)
``crop_flip``              ``RandomCrop(image_size, padding=4)``, horizontal flip (the 32 px protocol)
``none``                   the evaluation transform (no augmentation; what the cached-features path uses)
``auto``                   ``crop_flip`` on 32 px-class images (below), ``random_resized_crop`` otherwise
a callable                 any ``PIL image -> tensor`` transform, e.g. :class:`FirstView` of a view recipe
=========================  =======================================================================

``randaugment=True`` inserts InfoMin's RandAugment after the flip (PyContrast ``--aug_linear RA``).

**Resolution and normalisation** are chosen in ``setup``, each the first of: the argument
(``image_size``, ``normalize``); what the evaluated pre-training checkpoint records (``mvssl.data``,
``MultiViewDataModule.data_summary()``: its largest training crop and its evaluation normalisation, read
from the model's ``source.data``); the images, by pre-training's own rule for ``views: auto``
(:func:`~mvssl_lightning.data.recipes.small_images`: ``default``, ``cifar10``, ``cifar100``, or a median
shorter side of at most 64 px over a few sampled headers, are 32 px-class images: 32 px and CIFAR-10's
statistics; otherwise 224 px and ImageNet's). ``setup`` says what it chose in one line, and warns when
the evaluation differs from the checkpoint's pre-training (another size or normalisation, or 32 px-class
images for a checkpoint trained on large ones and vice versa). The evaluation transform is
:func:`~mvssl_lightning.data.views.eval_view_cifar` (ToTensor, Normalize) when the images already are
``image_size`` squares, else :func:`~mvssl_lightning.data.views.eval_view` (Resize ``resize``, CenterCrop
``image_size``; ``resize`` = ``image_size`` for 32 px-class images, 256 for 224 otherwise), unless
``eval_transform`` is given; ``crop_flip`` resizes 32 px-class images of another size to ``image_size``
before its crop. Before ``setup`` the transforms are those of the dataset's name alone.

Label subsets (semi-supervised protocols), on the training split, computed from the seed alone (no
process rank, no global RNG), so every DDP process and every re-run keeps the same images:

* ``label_fraction=f``: per class ``c`` with ``n_c`` labelled images, ``max(1, round(f n_c))`` images
  chosen by a permutation from ``torch.Generator().manual_seed(label_seed)`` (classes in label order);
* ``label_list=path``: a text file, one entry per line (blank lines and ``#`` comments skipped). For
  ``imagefolder`` an entry is an image's path under the split's folder (``class/file``, or any longer
  tail of its path) or its bare file name (ImageNet's official 1 % / 10 % lists, SimCLR's
  ``imagenet_subsets/1percent.txt``, hold names like ``n01440764_10026.JPEG``); a bare name that several
  class folders hold (``0001.png``) is an error listing them. For the other datasets an entry is an integer
  index into the training split. Unknown entries are an error naming the file and the first of them.

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
import statistics
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union, get_args

import lightning as L
import numpy as np
import torch
import torchvision.transforms as T
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from typing_extensions import override

from mvssl_lightning.data.datamodule import SUBSET_SEED
from mvssl_lightning.data.datasets import DATASET_NAMES, build_dataset, peek_num_classes, sample_image_sizes
from mvssl_lightning.data.order import seeded_permutation
from mvssl_lightning.data.recipes import CIFAR_SIZED, CIFAR_SIZED_MAX_SIDE, SIZE_SAMPLE, small_images
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
    if samples is not None:  # ImageFolder: match by relative path (class/file), or by an unambiguous file name
        return _match_paths(path, entries, [Path(file).parts for file, _ in samples])
    n = len(dataset)  # type: ignore[arg-type]
    bad = [e for e in entries if not e.lstrip("-").isdigit() or not 0 <= int(e) < n]
    if bad:
        raise ValueError(
            f"label_list {path}: {len(bad)} of {len(entries)} entries are not indices in [0, {n}) of the "
            f"training split (one integer per line for this dataset), e.g. {', '.join(bad[:_SHOWN])}"
        )
    return np.unique(np.asarray([int(e) for e in entries], dtype=np.int64))


def _match_paths(path: Path, entries: list[str], files: list[tuple[str, ...]]) -> np.ndarray:
    """Indices of the ``files`` (path parts) that the list's ``entries`` name: an entry names the files whose
    path ends with it (``dog/0001.png``, or a bare ``0001.png``); an entry naming several is ambiguous."""
    by_name: dict[str, list[int]] = {}
    for i, parts in enumerate(files):
        by_name.setdefault(parts[-1], []).append(i)
    chosen: list[int] = []
    unknown: list[str] = []
    ambiguous: list[str] = []
    for entry in entries:
        want = Path(entry.replace("\\", "/")).parts
        hits = [i for i in by_name.get(want[-1], []) if files[i][-len(want):] == want]
        if not hits:
            unknown.append(entry)
        elif len(hits) > 1:
            shown = ", ".join("/".join(files[i][-2:]) for i in hits[:_SHOWN])
            ambiguous.append(f"{entry} ({len(hits)} images: {shown})")
        else:
            chosen.append(hits[0])
    if ambiguous:
        raise ValueError(
            f"label_list {path}: {len(ambiguous)} of {len(entries)} entries name more than one image of the training "
            f"split: {'; '.join(ambiguous[:_SHOWN])}; write them as class/file (the path under the split's folder)"
        )
    if unknown:
        raise ValueError(
            f"label_list {path}: {len(unknown)} of {len(entries)} entries name no image of the training split, "
            f"e.g. {', '.join(unknown[:_SHOWN])}"
        )
    return np.unique(np.asarray(chosen, dtype=np.int64))


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 4) for v in values]


def _same_normalize(a: Optional[dict], b: Optional[dict]) -> bool:
    if not a or not b:
        return not a and not b
    return all(np.allclose(np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float), atol=1e-4)
               for k in ("mean", "std"))


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
            ``imagefolder`` (class folders ``data_dir/train/<class>``, ``data_dir/val/<class>``), ``npz``
            (``data_dir`` is the file), ``filelist`` (a CSV or text list of images with labels) or
            ``litdata`` (the shards of ``mvssl-data optimize``, read in order).
        data_dir: directory, file or URI of the dataset; ignored for ``default``.
        class_list: keep only these classes of an image folder or a list file with class names (a file of
            class names or WordNet ids, or ``imagenet100``), labelled by their sorted order in every split;
            the same option as pre-training's :class:`~mvssl_lightning.data.MultiViewDataModule`.
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size per process (default ``batch_size``).
        train_transform: a name (module docstring) or a callable ``PIL image -> tensor``.
        crop_scale: ``scale`` of ``RandomResizedCrop`` (0.08-1 as torchvision; InfoMin 0.2-1).
        image_size: crop size (default: the checkpoint's pre-training image size, else 32 on 32 px-class
            images, else 224; module docstring).
        resize: evaluation ``Resize`` before the centre crop (default ``round(image_size * 256 / 224)``).
        randaugment: InfoMin's RandAugment after the flip (PyContrast ``--aug_linear RA``).
        normalize: ``{"mean": [...], "std": [...]}``; default: the checkpoint's pre-training normalisation,
            else per dataset (module docstring).
        eval_transform: evaluation transform (overrides the default one).
        label_fraction: keep this class-balanced fraction of the training labels (a seeded draw, not the
            official ImageNet 1 % / 10 % split: give ``label_list`` for that).
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
        class_list: Optional[str] = None,
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
        self.class_list = class_list
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.crop_scale = (scale[0], scale[1])
        self.randaugment = randaugment
        # the resolution: provisional here (by the dataset's name), chosen from the checkpoint and the images in
        # setup (_choose_resolution); the arguments as given are kept for that
        self._given: dict[str, Any] = {
            "image_size": image_size, "resize": resize, "normalize": normalize, "eval_transform": eval_transform,
            "train_transform": train_transform,
        }
        small = self.dataset_name in CIFAR_SIZED
        size = int(image_size or (32 if small else 224))
        self._configure(small, size == 32, size,
                        normalize if normalize is not None else (CIFAR10_NORMALIZE if small else IMAGENET_NORMALIZE))
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
    def _configure(self, small: bool, native: bool, image_size: int, normalize: Optional[dict]) -> None:
        """Set the resolution and normalisation and build both transforms: ``small`` 32 px-class images
        (:func:`~mvssl_lightning.data.recipes.small_images`), ``native`` already ``image_size`` squares."""
        self.small, self.native = small, native and small
        self.image_size = int(image_size)
        resize = self._given["resize"]
        self.resize = int(resize or (self.image_size if small else round(self.image_size * 256 / 224)))
        self.normalize = normalize
        train_transform = self._given["train_transform"]
        eval_transform = self._given["eval_transform"]
        self.train_transform_name: str = train_transform if isinstance(train_transform, str) else "callable"
        self.eval_transform: Callable = eval_transform if eval_transform is not None else self._default_eval()
        self.train_transform: Callable = self._train(train_transform)

    def _default_eval(self) -> Callable:
        if self.native:  # 32 px images evaluated at 32 px: ToTensor, Normalize
            return eval_view_cifar(normalize=self.normalize, size=self.image_size)
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
        steps: list[Callable] = (
            [T.RandomResizedCrop(self.image_size, scale=self.crop_scale)]
            if name == "random_resized_crop"
            # small images of another size (40 px, or 32 px for a 224 px checkpoint) are resized first
            else ([] if self.native or not self.small else [T.Resize(self.image_size)])
            + [T.RandomCrop(self.image_size, padding=4)]
        )
        steps.append(T.RandomHorizontalFlip())
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
        return peek_num_classes(self.dataset_name, self.data_dir, class_list=self.class_list)

    # ------------------------------------------------------------------ data
    def _build(self, split: Literal["train", "test"], transform: Callable) -> Dataset:
        return build_dataset(self.dataset_name, self.data_dir, split, transform, download=False,
                             labels="folders" if self.dataset_name == "imagefolder" else "auto",
                             class_list=self.class_list)

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
        self._choose_resolution()
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

    def _pretraining_data(self) -> dict[str, Any]:
        """What the evaluated checkpoint records of its pre-training data (``source.data`` of the model, read
        through Lightning's public ``trainer.lightning_module``; ``{}`` without a trainer or a record)."""
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        data = getattr(getattr(model, "source", None), "data", None)
        return dict(data) if isinstance(data, dict) else {}

    def _choose_resolution(self) -> None:
        """The evaluation's image size and normalisation: the arguments when given, else the checkpoint's
        pre-training ones (``mvssl.data``), else by the images (:func:`~mvssl_lightning.data.recipes.small_images`,
        the rule of pre-training's ``views: auto``: 32 px and CIFAR-10 statistics for 32 px-class images, 224 px
        and ImageNet's otherwise). Says what it chose (one line) and warns when it differs from pre-training."""
        record = self._pretraining_data()
        sizes: list[tuple[int, int]] = []
        if self.dataset_name not in CIFAR_SIZED:
            sizes = sample_image_sizes(self._build("train", None), SIZE_SAMPLE)  # type: ignore[arg-type]
        small = small_images(self.dataset_name, [min(h, w) for h, w in sizes])
        data_size = 32 if small else 224
        recorded_size = record.get("image_size")
        recorded_norm = {"mean": record["mean"], "std": record["std"]} if "mean" in record and "std" in record else None
        size, size_from = self._given["image_size"], "data.image_size"
        if size is None and isinstance(recorded_size, int):
            size, size_from = recorded_size, "the checkpoint's pre-training"
        if size is None:
            size, size_from = data_size, "the images" if sizes else f"dataset '{self.dataset_name}'"
        normalize, norm_from = self._given["normalize"], "data.normalize"
        if normalize is None and recorded_norm is not None:
            normalize, norm_from = recorded_norm, "the checkpoint's pre-training"
        if normalize is None:
            normalize = CIFAR10_NORMALIZE if small else IMAGENET_NORMALIZE
            norm_from = "CIFAR-10 statistics for 32 px-class images" if small else "ImageNet statistics"
        native = (all(hw == (size, size) for hw in sizes) if sizes else self.dataset_name in CIFAR_SIZED and size == 32)
        self._configure(small, native, int(size), normalize)
        seen = (f"median shorter side {statistics.median(min(h, w) for h, w in sizes):g} px over {len(sizes)} "
                f"sampled images" if sizes else ("32 px" if self.dataset_name in CIFAR_SIZED else "size unknown"))
        shown = "none" if not normalize else f"mean {_rounded(normalize['mean'])}, std {_rounded(normalize['std'])}"
        rank_zero_info(
            f"evaluation data '{self.dataset_name}' ({seen}): images at {self.image_size} px (from {size_from}), "
            f"normalisation {shown} (from {norm_from}); train transform {self.train_transform_name}"
            + ("" if self._given["eval_transform"] is None else "; eval_transform given")
        )
        differences = []
        if isinstance(recorded_size, int) and recorded_size != self.image_size:
            differences.append(f"image size {self.image_size} px (pre-training: {recorded_size} px)")
        elif isinstance(recorded_size, int) and sizes and small != (recorded_size <= CIFAR_SIZED_MAX_SIDE):
            differences.append(f"images of {seen} evaluated at the pre-training size {recorded_size} px")
        if recorded_norm is not None and not _same_normalize(normalize, recorded_norm):
            differences.append(f"normalisation {shown} (pre-training: mean {_rounded(recorded_norm['mean'])}, "
                               f"std {_rounded(recorded_norm['std'])})")
        if differences:
            rank_zero_warn(
                f"the evaluation differs from the checkpoint's pre-training data ('{record.get('dataset')}'): "
                f"{'; '.join(differences)}; set data.image_size / data.normalize to match, unless this is "
                f"meant (a transfer evaluation)"
            )

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
