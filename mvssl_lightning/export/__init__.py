"""Take the weights anywhere: ``mvssl-export CHECKPOINT --to FORMAT --out PATH`` and :func:`export_checkpoint`.

Formats (``docs/export.md``):

* ``torchvision``: a ``.pth`` state dict for the torchvision model (:mod:`.to_torchvision`);
* ``timm``: a ``.pth`` state dict for ``timm.create_model`` (:mod:`.to_timm`);
* ``safetensors``: one ``.safetensors`` file with the backbone's description in its metadata (:mod:`.to_hf`);
* ``hf``: a Hugging Face model folder (``model.safetensors``, ``config.json``, a ``README.md`` model card),
  optionally pushed to the Hub (:mod:`.to_hf`);
* ``detectron2``: a ``.pkl`` in the layout detectron2's ``DetectionCheckpointer`` reads for a ResNet
  (:mod:`.to_detectron2`).

:func:`~mvssl_lightning.export.pretrained.load_pretrained` reads an ``hf`` folder, a ``.safetensors`` file or a
Lightning checkpoint back into a backbone.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, Optional, Union, get_args

from mvssl_lightning.export.pretrained import load_pretrained
from mvssl_lightning.export.source import ExportError, ExportSource, read_checkpoint
from mvssl_lightning.export.to_detectron2 import write_detectron2
from mvssl_lightning.export.to_hf import push_folder, write_hf, write_safetensors
from mvssl_lightning.export.to_timm import write_timm
from mvssl_lightning.export.to_torchvision import write_torchvision

__all__ = ["FORMATS", "ExportError", "ExportFormat", "ExportSource", "export_checkpoint", "load_pretrained",
           "read_checkpoint"]

ExportFormat = Literal["torchvision", "timm", "safetensors", "hf", "detectron2"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)


def export_checkpoint(
    checkpoint: Union[str, Path],
    to: ExportFormat,
    out: Union[str, Path],
    num_classes: Optional[int] = None,
    eval_results: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
    push_to_hub: Optional[str] = None,
) -> Path:
    """Export the backbone of a pre-training or evaluation ``checkpoint`` to ``to`` at ``out``; returns the path
    written.

    Args:
        checkpoint: a pre-training checkpoint of any method, or an ``mvssl-eval`` checkpoint.
        to: one of :data:`FORMATS`.
        out: the file (or, for ``hf``, the folder) to write; refused when it exists, unless ``overwrite``.
        num_classes: ``torchvision`` / ``timm``: add a classifier for this many classes.
        eval_results: ``hf``: an ``eval_results.json`` of ``mvssl-eval`` whose numbers go into the model card.
        push_to_hub: ``hf``: a Hugging Face repo id to upload the folder to.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if num_classes is not None and to not in ("torchvision", "timm"):
        raise ValueError(f"--num-classes applies to --to torchvision and --to timm, not to {to}")
    if (eval_results is not None or push_to_hub is not None) and to != "hf":
        raise ValueError(f"--eval-results and --push-to-hub apply to --to hf, not to {to}")
    source = read_checkpoint(checkpoint)
    # written next to ``out`` first, then moved into place: a failed export leaves an earlier one untouched
    staging = out.with_name(f".partial-{out.name}")  # same suffix: writers may check it
    _remove(staging)
    try:
        _write(source, to, staging, num_classes, eval_results, location=push_to_hub or str(out))
        _remove(out)
        staging.rename(out)
    finally:
        _remove(staging)
    if push_to_hub is not None:
        push_folder(out, push_to_hub)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write(source: ExportSource, to: str, out: Path, num_classes: Optional[int],
           eval_results: Optional[Union[str, Path]], location: str) -> Path:
    if to == "torchvision":
        return write_torchvision(source, out, num_classes)
    if to == "timm":
        return write_timm(source, out, num_classes)
    if to == "safetensors":
        return write_safetensors(source, out)
    if to == "hf":
        return write_hf(source, out, Path(eval_results) if eval_results is not None else None, location=location)
    return write_detectron2(source, out)
