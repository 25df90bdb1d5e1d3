"""timm backbones: ``backbone: "timm:<model name>"``, any model of timm, created with ``num_classes=0`` so
that it returns its pooled features (a ViT's class token after the final norm, a ConvNeXt's pooled and
normed feature map), with ``backbone_kwargs`` passed to ``timm.create_model`` (``img_size``,
``patch_size``, ``drop_path_rate``, ``dynamic_img_size``, ...). Weights are random (``pretrained=False``):
self-supervised pre-training starts from scratch, and nothing is downloaded.

The backbone *is* the timm model, so its ``state_dict`` loads back into ``timm.create_model(<name>,
num_classes=0, **backbone_kwargs)`` with ``strict=True`` (or into one with a classifier with
``strict=False``, the classifier staying random).

Vision transformers take images of the size they were built for, unless built with
``dynamic_img_size=True`` (position embeddings interpolated to each input's grid, as DINO does for its
local crops); :func:`check_view_size` says so before a step fails deep inside timm.
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "ViewSizeError", "build_timm", "check_last_blocks", "check_view_size", "last_blocks_features", "vit_patch_embed",
]


class ViewSizeError(ValueError):
    """A view the vision transformer cannot take (found at the first batch of that size)."""


def _timm() -> Any:
    try:
        import timm
    except ImportError as error:  # pragma: no cover - timm is a dependency
        raise ImportError("backbone 'timm:...' needs timm: pip install timm") from error
    return timm


def build_timm(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``; an unknown name is an error
    listing close matches."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; timm.list_models('<pattern>') lists them"
        raise ValueError(f"unknown timm model {name!r}{hint}")
    for key in ("pretrained", "num_classes"):
        if key in kwargs:
            raise ValueError(f"backbone_kwargs may not set {key!r} for a timm backbone (random weights, "
                             f"num_classes=0 so that it returns pooled features)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as error:
        raise ValueError(f"timm.create_model({name!r}) rejected backbone_kwargs {kwargs}: {error}") from error


def vit_patch_embed(module: nn.Module) -> Optional[Any]:
    """The patch embedding of a timm vision transformer (it has ``img_size``/``patch_size``), else None."""
    patch_embed = getattr(module, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "patch_size") or not hasattr(patch_embed, "img_size"):
        return None
    return patch_embed


def check_view_size(module: nn.Module, name: str, height: int, width: int) -> None:
    """Raise a one-line error when a timm ViT cannot take a ``height x width`` view: a patch size that does
    not divide it, or a size other than the built one without ``dynamic_img_size``."""
    patch_embed = vit_patch_embed(module)
    if patch_embed is None:
        return
    ph, pw = (int(v) for v in patch_embed.patch_size)
    img_size = patch_embed.img_size
    built = tuple(int(v) for v in img_size) if img_size is not None else None
    dynamic = bool(getattr(module, "dynamic_img_size", False)) or not getattr(patch_embed, "strict_img_size", True)
    pad = bool(getattr(patch_embed, "dynamic_img_pad", False))
    if (height % ph or width % pw) and not pad:
        raise ViewSizeError(
            f"backbone {name}: patch size {ph}x{pw} does not divide a {height}x{width} view; pick view sizes "
            f"that are multiples of {ph}, or set backbone_kwargs dynamic_img_size: true and dynamic_img_pad: true"
        )
    if built is not None and (height, width) != built and not dynamic:
        raise ViewSizeError(
            f"backbone {name} was built for {built[0]}x{built[1]} images but gets a {height}x{width} view; set "
            f"backbone_kwargs dynamic_img_size: true (position embeddings interpolated per view size, as DINO's "
            f"local crops) or img_size: {height}"
        )


def check_last_blocks(module: nn.Module, n_last_blocks: int) -> None:
    """A one-line error unless ``module`` is a timm vision transformer with at least ``n_last_blocks`` blocks."""
    blocks = getattr(module, "blocks", None)
    has_intermediates = callable(getattr(module, "forward_intermediates", None))
    if not has_intermediates or vit_patch_embed(module) is None or blocks is None:
        raise ValueError(
            f"n_last_blocks / avgpool_patchtokens need a timm vision transformer (forward_intermediates), got "
            f"{type(module).__name__}"
        )
    if n_last_blocks > len(blocks):
        raise ValueError(f"n_last_blocks={n_last_blocks} but the backbone has {len(blocks)} blocks")


def last_blocks_features(module: nn.Module, x: Tensor, n_last_blocks: int, avgpool_patchtokens: bool) -> Tensor:
    """DINO's linear-evaluation feature (``eval_linear.py``): the class tokens of the last ``n_last_blocks``
    blocks, each through the final norm, concatenated, and with ``avgpool_patchtokens`` the mean of the
    last block's patch tokens appended: ``(B, (n_last_blocks + avgpool_patchtokens) * D)``."""
    forward_intermediates: Any = getattr(module, "forward_intermediates")  # noqa: B009 (a timm method)
    outputs = forward_intermediates(x, indices=n_last_blocks, norm=True, return_prefix_tokens=True,
                                    output_fmt="NLC", intermediates_only=True)
    features = [prefix[:, 0] for _, prefix in outputs]
    if avgpool_patchtokens:
        features.append(outputs[-1][0].mean(dim=1))
    return torch.cat(features, dim=-1)
