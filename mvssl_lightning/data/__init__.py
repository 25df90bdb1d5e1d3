"""Data: ``MultiViewDataModule``, the npz/torchvision datasets, the view recipes and their device versions."""

from mvssl_lightning.data.datamodule import MultiViewDataModule, multiview_collate
from mvssl_lightning.data.datasets import (
    DATASET_NAMES,
    NpzImageDataset,
    build_dataset,
    embedded_default_path,
)
from mvssl_lightning.data.device.decode import RawImages
from mvssl_lightning.data.device.recipe import (
    DeviceViews,
    UnsupportedOnDevice,
    compile_views,
    register_device_recipe,
    register_device_transform,
)
from mvssl_lightning.data.device.stage import DeviceViewStage
from mvssl_lightning.data.views import (
    CIFAR10_NORMALIZE,
    IMAGENET_NORMALIZE,
    VIEW_RECIPES,
    MultiViewRecipe,
    asymmetric_two_views,
    asymmetric_two_views_cifar,
    default_eval_view,
    eval_view,
    eval_view_cifar,
    get_view_recipe,
    mveb_multicrop,
    mveb_multicrop_cifar,
    two_views,
    two_views_cifar,
)

__all__ = [
    "CIFAR10_NORMALIZE",
    "DATASET_NAMES",
    "DeviceViewStage",
    "DeviceViews",
    "IMAGENET_NORMALIZE",
    "VIEW_RECIPES",
    "MultiViewDataModule",
    "MultiViewRecipe",
    "NpzImageDataset",
    "RawImages",
    "UnsupportedOnDevice",
    "asymmetric_two_views",
    "asymmetric_two_views_cifar",
    "build_dataset",
    "compile_views",
    "default_eval_view",
    "embedded_default_path",
    "eval_view",
    "eval_view_cifar",
    "get_view_recipe",
    "multiview_collate",
    "mveb_multicrop",
    "mveb_multicrop_cifar",
    "register_device_recipe",
    "register_device_transform",
    "two_views",
    "two_views_cifar",
]
