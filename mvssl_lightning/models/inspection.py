"""What a backbone returns: its feature dimension, found without the user stating it, and a check that it
returns pooled features ``(B, D)``.

The dimension is read from the module's ``num_features`` (timm's convention, also honoured on a user's
module) or ``feat_dim`` attribute; otherwise one forward of a ``(2, 3, S, S)`` zero batch in eval mode and
without gradients finds it (``S`` the backbone's own input size when it declares one, else 224, then 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["BackboneOutputError", "describe_output", "feature_dim", "pooled_features_error"]

#: image sides tried by the dry forward of a module that declares none
PROBE_SIDES = (224, 32)


class BackboneOutputError(ValueError):
    """The backbone does not return pooled features ``(B, D)``."""


def describe_output(out: Any) -> str:
    """A short description of what a forward returned (``Tensor (2, 512, 7, 7)``, ``tuple of 2``...)."""
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(describe_output(o) for o in out[:3])})"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(out)[:5]}"
    return f"a {type(out).__name__}"


def pooled_features_error(name: str, out: Any) -> Optional[BackboneOutputError]:
    """None when ``out`` is ``(B, D)`` features, else the error to raise, saying how to pool."""
    if isinstance(out, Tensor) and out.dim() == 2:
        return None
    if isinstance(out, Tensor) and out.dim() == 4:
        how = ("pool it, e.g. nn.Sequential(your_module, nn.AdaptiveAvgPool2d(1), nn.Flatten()), or for a timm "
               "model use backbone 'timm:<name>' (created with num_classes=0: pooled features)")
    elif isinstance(out, Tensor) and out.dim() == 3:
        how = "take the class token (x[:, 0]) or the mean over tokens (x.mean(dim=1)) in its forward"
    else:
        how = "make its forward return one (B, D) tensor"
    return BackboneOutputError(f"backbone {name} returned {describe_output(out)}, not pooled features (B, D): {how}")


def _declared_side(module: nn.Module, kwargs: dict) -> Optional[int]:
    side = kwargs.get("img_size")
    if side is None:
        cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        side = size[-1] if isinstance(size, Sequence) and len(size) == 3 else None
        side = getattr(getattr(module, "patch_embed", None), "img_size", None) or side
    if isinstance(side, Sequence):
        side = side[-1]
    return int(side) if side is not None else None


def feature_dim(module: nn.Module, name: str, kwargs: Optional[dict] = None) -> int:
    """The dimension ``D`` of the module's pooled features (module docstring); raises
    :class:`BackboneOutputError` when the module returns anything but ``(B, D)``."""
    for attr in ("num_features", "feat_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    declared = _declared_side(module, kwargs or {})
    sides = (declared,) if declared else PROBE_SIDES
    failures = []
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        for side in sides:
            try:
                with torch.no_grad():
                    out = module(torch.zeros(2, 3, side, side, device=device, dtype=dtype))
            except Exception as error:  # a size the module does not take: try the next one
                failures.append(f"{side} px: {type(error).__name__}: {error}")
                continue
            problem = pooled_features_error(name, out)
            if problem is not None:
                raise problem
            return int(out.shape[1])
    finally:
        for m, training in modes:
            m.training = training
    raise BackboneOutputError(
        f"could not find the feature dimension of backbone {name}: it has no num_features attribute and a dry "
        f"forward failed ({'; '.join(failures)}); give the module a num_features attribute"
    )
