"""Backbone factory: what ``backbone`` names (or is) -> ``(module, feat_dim)``, ``module(x)`` returning pooled
features ``(B, feat_dim)``.

``backbone`` is one of:

* a library name: ``resnet18`` / ``resnet34`` / ``resnet50`` (torchvision ResNets,
  :mod:`mvssl_lightning.models.resnet`, with ``cifar_stem``, ``zero_init_residual`` and a ``width``
  option) or ``amdim`` (AMDIM's own encoder, :mod:`mvssl_lightning.models.amdim`, whose ``cifar_stem``
  selects its 32 px variant);
* ``"timm:<model name>"``: any timm model, created with ``num_classes=0``
  (:mod:`mvssl_lightning.models.timm_backbone`);
* ``"torchvision:<model name>"``: any torchvision classification model, its classifier removed
  (:mod:`mvssl_lightning.models.torchvision_backbone`);
* an ``nn.Module`` (from Python, or from a config as ``class_path`` / ``init_args``, which LightningCLI
  instantiates): used as it is.

``backbone_kwargs`` go to the builder (``timm.create_model``, ``torchvision.models.get_model``, the
ResNet or AMDIM builder). The feature dimension of a timm, torchvision or user backbone is found without
the user stating it (:func:`mvssl_lightning.models.inspection.feature_dim`). ``cifar_stem`` and
``zero_init_residual`` change the library's ResNets (and ``cifar_stem`` AMDIM's encoder); ``cifar_stem`` on
any other backbone is an error (a ViT on 32 px data takes ``backbone_kwargs: {img_size: 32, patch_size:
4}`` instead), ``zero_init_residual`` is passed to torchvision's ResNet family and does nothing elsewhere.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from torch import nn

from mvssl_lightning.models.inspection import feature_dim
from mvssl_lightning.models.resnet import RESNETS, build_resnet
from mvssl_lightning.models.timm_backbone import build_timm
from mvssl_lightning.models.torchvision_backbone import build_torchvision

__all__ = ["BACKBONES", "Backbone", "BackboneKind", "backbone_kind", "backbone_name", "build_backbone"]

BACKBONES = (*RESNETS, "amdim")
#: a library name, ``"timm:<name>"``, ``"torchvision:<name>"``, or a module (``class_path`` in a config)
Backbone = Union[nn.Module, str]
BackboneKind = Literal["resnet", "amdim", "timm", "torchvision", "module"]
#: torchvision builders that take ``zero_init_residual``
_TV_RESIDUAL = ("resnet", "resnext", "wide_resnet")


def backbone_kind(backbone: Backbone) -> BackboneKind:
    """Which family ``backbone`` belongs to; an unknown name is an error listing the valid forms."""
    if isinstance(backbone, nn.Module):
        return "module"
    if not isinstance(backbone, str):
        raise TypeError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    if backbone in RESNETS:
        return "resnet"
    if backbone == "amdim":
        return "amdim"
    prefix, sep, rest = backbone.partition(":")
    if sep and rest and prefix in ("timm", "torchvision"):
        return prefix  # type: ignore[return-value]
    raise ValueError(
        f"unknown backbone {backbone!r}; choose one of {list(BACKBONES)}, 'timm:<model name>', "
        f"'torchvision:<model name>', or an nn.Module (class_path / init_args in a config)"
    )


def backbone_name(backbone: Backbone) -> str:
    """A printable name: the string itself, or ``module:<package.Class>`` for a module (what checkpoints
    record when the module cannot be described by a config)."""
    if isinstance(backbone, nn.Module):
        return f"module:{type(backbone).__module__}.{type(backbone).__qualname__}"
    return str(backbone)


def build_backbone(
    backbone: Backbone, cifar_stem: bool = False, zero_init_residual: bool = True, **kwargs: Any
) -> tuple[nn.Module, int]:
    """``(module, feat_dim)`` for ``backbone`` (module docstring); ``kwargs`` are ``backbone_kwargs``."""
    kind = backbone_kind(backbone)
    if kind == "resnet":
        name = backbone if isinstance(backbone, str) else ""
        return build_resnet(name, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual, **kwargs)  # type: ignore[arg-type]
    if kind == "amdim":
        from mvssl_lightning.models.amdim import build_amdim_encoder

        return build_amdim_encoder(cifar_stem=cifar_stem, zero_init_residual=zero_init_residual, **kwargs)
    name = backbone_name(backbone)
    if cifar_stem:
        raise ValueError(
            f"cifar_stem applies to the library's ResNets and AMDIM's encoder, not to backbone {name}; for 32 px "
            f"data build it for that size instead (a timm ViT: backbone_kwargs img_size: 32, patch_size: 4)"
        )
    if kind == "module":
        if kwargs:
            raise ValueError(f"backbone_kwargs {kwargs} cannot be applied to a backbone given as a module ({name})")
        module = backbone
        assert isinstance(module, nn.Module)
        return module, feature_dim(module, name)
    rest = str(backbone).partition(":")[2]
    if kind == "timm":
        module = build_timm(rest, **kwargs)
        return module, feature_dim(module, name, kwargs)
    if rest.startswith(_TV_RESIDUAL):
        kwargs = {"zero_init_residual": zero_init_residual, **kwargs}
    return build_torchvision(rest, **kwargs)
