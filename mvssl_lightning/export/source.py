"""What an export starts from: the backbone of a checkpoint, with everything a format needs to describe it.

:func:`read_checkpoint` accepts

* a pre-training checkpoint of any method (the backbone rebuilt from its hyper-parameters,
  :func:`~mvssl_lightning.evaluation.load_backbone`);
* an evaluation checkpoint (``mvssl-eval`` fit of :class:`~mvssl_lightning.evaluation.LinearEval` or
  :class:`~mvssl_lightning.evaluation.FineTune`): the architecture comes from the pre-training checkpoint its
  ``checkpoint`` hyper-parameter names, the weights from the evaluation checkpoint itself (a fine-tuned
  backbone stays fine-tuned), and its trained linear head comes along (``head``).

Anything else (a missing, truncated or foreign file) is a one-line error naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mvssl_lightning.evaluation.checkpoint import load_backbone, sha256_file
from mvssl_lightning.models.backbones import BackboneKind, backbone_kind

__all__ = ["ExportError", "ExportSource", "read_checkpoint"]


class ExportError(ValueError):
    """The backbone cannot go to the requested format (the message says why and what does work)."""


@dataclass
class ExportSource:
    """A checkpoint's backbone (weights loaded, eval mode) and what describes it.

    ``name``: the backbone as recorded (``resnet50``, ``timm:<name>``, ``torchvision:<name>``, a class path);
    ``kind``: its family; ``data``: what the checkpoint recorded of its pre-training data (dataset, image
    size, normalisation), empty for checkpoints written before that was recorded; ``head``: an evaluation
    checkpoint's trained linear classifier (None for pre-training checkpoints, or a head with BatchNorm).
    """

    backbone: nn.Module
    feat_dim: int
    name: str
    kind: BackboneKind
    cifar_stem: bool
    backbone_kwargs: dict
    checkpoint: Path
    sha256: str
    method: Optional[str]
    hparams: dict = field(default_factory=dict)
    epoch: Optional[int] = None
    global_step: Optional[int] = None
    data: dict = field(default_factory=dict)
    head: Optional[nn.Linear] = None

    @property
    def is_library_resnet(self) -> bool:
        return self.kind == "resnet"


def _kind(name: str) -> BackboneKind:
    try:
        return backbone_kind(name)
    except ValueError:
        return "module"  # a class path or module:<Class> record


def _trained_head(state: dict[str, Tensor], hparams: dict) -> Optional[nn.Linear]:
    """An evaluation checkpoint's linear head (``head.0`` without BatchNorm), as an ``nn.Linear``."""
    if hparams.get("head_batchnorm"):
        return None
    weight, bias = state.get("head.0.weight"), state.get("head.0.bias")
    if weight is None or bias is None:
        return None
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    return head


def read_checkpoint(path: str | Path) -> ExportSource:
    """The backbone of a pre-training or evaluation checkpoint (module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle, safe-globals: one message
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise ValueError(f"{path} is not a checkpoint readable with torch.load(weights_only=True): "
                         f"{type(error).__name__}: {first}") from error
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"{path} is not a Lightning checkpoint of mvssl_lightning (no 'state_dict'): export "
                         f"needs a pre-training or evaluation checkpoint")
    hparams = dict(raw.get("hyper_parameters") or {})
    evaluation = "checkpoint" in hparams and "num_classes" in hparams
    head = None
    if evaluation:
        pretrained = hparams.get("checkpoint")
        module, dim, source = load_backbone(
            pretrained, hparams.get("backbone"), hparams.get("cifar_stem"),
            bool(hparams.get("zero_init_residual", True)), hparams.get("backbone_kwargs"),
        )
        state = {k[len("backbone."):]: v for k, v in raw["state_dict"].items() if k.startswith("backbone.")}
        module.load_state_dict(state, strict=True)
        head = _trained_head(raw["state_dict"], hparams)
        data = dict((raw.get("mvssl") or {}).get("data") or {})
        if not data and pretrained:
            data = dict((torch.load(pretrained, map_location="cpu", weights_only=True).get("mvssl") or {}).get("data")
                        or {})
    else:
        module, dim, source = load_backbone(path)
        data = dict((raw.get("mvssl") or {}).get("data") or {})
    module.eval()
    return ExportSource(
        backbone=module, feat_dim=dim, name=source.backbone, kind=_kind(source.backbone), cifar_stem=source.cifar_stem,
        backbone_kwargs=dict(source.backbone_kwargs), checkpoint=path, sha256=sha256_file(path),
        method=source.method or (raw.get("mvssl") or {}).get("class_path"), hparams=hparams,
        epoch=raw.get("epoch"), global_step=raw.get("global_step"), data=data, head=head,
    )
