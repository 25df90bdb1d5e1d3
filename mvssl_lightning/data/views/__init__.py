"""View recipes: callables ``PIL image -> list[Tensor]``, one module per recipe family, and their registry.

Every recipe returns a :class:`MultiViewRecipe` (a lightly ``MultiViewTransform`` that also reports
``num_views``); lightly's own transforms (``DINOTransform``, ``BYOLTransform``...) can be used in
their place anywhere a recipe is accepted.

Modules:

- :mod:`~mvssl_lightning.data.views.base` -- ``MultiViewRecipe``, the normalisation constants, the
  ToTensor + Normalize helper.
- :mod:`~mvssl_lightning.data.views.mveb` -- :func:`mveb_multicrop`: MVEB's DINO-style multi-crop
  (official code ``wlj6816/MVEB``, ``project/dataloader.py``), 2 global crops then ``n_local`` locals.
- :mod:`~mvssl_lightning.data.views.pairs` -- :func:`two_views` (symmetric SimCLR/BYOL-style pair) and
  :func:`asymmetric_two_views` (BYOL / MoCo v3 asymmetric pair, as used by MEC: official code
  ``xinliu20/MEC``, ``main_pretrain.py``).
- :mod:`~mvssl_lightning.data.views.amdim` -- AMDIM's pairs with a shared flip, and its eval views
  (official code ``Philip-Bachman/amdim-public``, ``datasets.py``).
- :mod:`~mvssl_lightning.data.views.infomin` -- InfoMin's augmentation with its RandAugment and the
  jigsaw patches (official code ``HobbitLong/PyContrast``).
- :mod:`~mvssl_lightning.data.views.eval` -- :func:`eval_view` / :func:`eval_view_cifar`:
  deterministic single view for probes and kNN.
- :mod:`~mvssl_lightning.data.views.registry` -- :data:`VIEW_RECIPES` (name -> factory),
  :func:`get_view_recipe`, :func:`default_eval_view`.

``*_cifar`` variants: 32 px, no blur, CIFAR-10 normalisation.  The recipe families that need device
counterparts beyond torchvision's and lightly's transforms (AMDIM, InfoMin) register them with the
device compiler when imported (see :mod:`mvssl_lightning.data.device.registry`).
"""

from mvssl_lightning.data.views.amdim import (
    AMDIM_CIFAR10_NORMALIZE,
    AMDIM_IMAGENET_NORMALIZE,
    AMDIMEvalView,
    AMDIMEvalViewCifar,
    AMDIMViews,
    RandomTranslateWithReflect,
    amdim_views,
    amdim_views_cifar,
)
from mvssl_lightning.data.views.base import (
    CIFAR10_NORMALIZE,
    COLOR_JITTER,
    IMAGENET_NORMALIZE,
    MultiViewRecipe,
    Normalize,
    to_tensor_normalize,
)
from mvssl_lightning.data.views.eval import eval_view, eval_view_cifar
from mvssl_lightning.data.views.infomin import (
    MAX_LEVEL,
    RAND_AUGMENT_OPS,
    InfoMinRandAugment,
    InfoMinViews,
    JigsawPatches,
    infomin_view,
    infomin_views,
    infomin_views_cifar,
    rand_augment_op,
)
from mvssl_lightning.data.views.mveb import mveb_multicrop, mveb_multicrop_cifar
from mvssl_lightning.data.views.pairs import (
    asymmetric_two_views,
    asymmetric_two_views_cifar,
    two_views,
    two_views_cifar,
)
from mvssl_lightning.data.views.registry import VIEW_RECIPES, default_eval_view, get_view_recipe

__all__ = [
    "AMDIM_CIFAR10_NORMALIZE",
    "AMDIM_IMAGENET_NORMALIZE",
    "AMDIMEvalView",
    "AMDIMEvalViewCifar",
    "AMDIMViews",
    "CIFAR10_NORMALIZE",
    "COLOR_JITTER",
    "IMAGENET_NORMALIZE",
    "InfoMinRandAugment",
    "InfoMinViews",
    "JigsawPatches",
    "MAX_LEVEL",
    "MultiViewRecipe",
    "Normalize",
    "RAND_AUGMENT_OPS",
    "RandomTranslateWithReflect",
    "VIEW_RECIPES",
    "amdim_views",
    "amdim_views_cifar",
    "asymmetric_two_views",
    "asymmetric_two_views_cifar",
    "default_eval_view",
    "eval_view",
    "eval_view_cifar",
    "get_view_recipe",
    "infomin_view",
    "infomin_views",
    "infomin_views_cifar",
    "mveb_multicrop",
    "mveb_multicrop_cifar",
    "rand_augment_op",
    "to_tensor_normalize",
    "two_views",
    "two_views_cifar",
]
