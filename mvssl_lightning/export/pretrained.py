"""``load_pretrained``: an exported or trained backbone back in Python, with the transform its inputs need.

It reads

* an ``hf`` folder written by ``mvssl-export --to hf`` (``config.json`` + ``model.safetensors``);
* a single ``.safetensors`` file written by ``mvssl-export --to safetensors`` (the description is in its
  metadata);
* a Lightning checkpoint, of pre-training or of an evaluation run
  (:func:`~mvssl_lightning.export.source.read_checkpoint`);
* a Hugging Face Hub repo id (any string that is not an existing path): the repo is downloaded
  (``huggingface_hub.snapshot_download``) and read as an ``hf`` folder.

The architecture is rebuilt from the description with :func:`~mvssl_lightning.models.build_backbone` (a module given
in a config as ``class_path`` / ``init_args`` is instantiated again) and the weights are loaded strictly. A backbone
recorded as ``module:<Class>`` (a module given from Python) cannot be rebuilt: build it yourself and load its
weights with ``module.load_state_dict(safetensors.torch.load_file(path))``.

The transform is the evaluation view at the recorded image size and normalisation, on PIL images: for CIFAR-sized
images (``image_size`` <= 64) Resize + CenterCrop to ``image_size`` (a no-op on images of that size), ToTensor and
Normalize; for larger ones the standard Resize(``image_size * 256 / 224``), CenterCrop(``image_size``), ToTensor and
Normalize (:func:`~mvssl_lightning.data.views.eval.eval_view`).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, overload

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from mvssl_lightning.data.views.eval import eval_view
from mvssl_lightning.evaluation.checkpoint import _instantiate, _load_strict
from mvssl_lightning.export.source import read_checkpoint
from mvssl_lightning.export.to_hf import (
    CONFIG_METADATA_KEY,
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    input_description,
)
from mvssl_lightning.models.backbones import Backbone, build_backbone

__all__ = ["build_from_config", "eval_transform", "load_pretrained"]

PathOrRepoId = Union[str, Path]
#: image sizes up to this are CIFAR-sized: no resize margin before the centre crop
SMALL_IMAGE_SIZE = 64
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_LOCAL_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".json")


def eval_transform(image_size: int, mean: list[float], std: list[float]) -> Callable:
    """The evaluation transform of PIL images for a backbone pre-trained at ``image_size`` with this normalisation
    (module docstring)."""
    normalize = {"mean": list(mean), "std": list(std)}
    resize = image_size if image_size <= SMALL_IMAGE_SIZE else int(image_size * 256 / 224)
    return eval_view(size=image_size, resize=resize, normalize=normalize)


def build_from_config(config: dict[str, Any], where: Union[str, Path]) -> nn.Module:
    """The backbone ``config`` (an export's ``config.json``) describes, randomly initialised; ``where`` names the
    file in errors."""
    if config.get("library") != "mvssl_lightning":
        raise ValueError(f"{where} does not describe an mvssl_lightning export (library: {config.get('library')!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{where} has format_version {version!r}; this mvssl_lightning reads up to {FORMAT_VERSION}: "
                         f"upgrade mvssl_lightning")
    recorded = config.get("backbone")
    arch: Backbone
    if isinstance(recorded, dict) and "class_path" in recorded:
        arch = _instantiate(recorded, Path(where))
    elif isinstance(recorded, str) and recorded.startswith("module:"):
        raise ValueError(
            f"{where}: the backbone was given as a Python module ({recorded[len('module:'):]}), which cannot be "
            f"rebuilt from its name: build that module yourself and load the weights with "
            f"module.load_state_dict(safetensors.torch.load_file(<the .safetensors file>))"
        )
    elif isinstance(recorded, str) and recorded:
        arch = recorded
    else:
        raise ValueError(f"{where} records no backbone (backbone: {recorded!r})")
    kwargs = dict(config.get("backbone_kwargs") or {})
    module, dim = build_backbone(arch, cifar_stem=bool(config.get("cifar_stem", False)), **kwargs)
    if config.get("feat_dim") is not None and int(config["feat_dim"]) != dim:
        raise ValueError(f"{where}: the rebuilt backbone has {dim} features, the export says {config['feat_dim']}")
    return module


def _load_weights(config: dict[str, Any], weights: Path, where: Path) -> nn.Module:
    """Rebuild the backbone of ``config`` and load ``weights`` (a ``.safetensors`` file) into it strictly."""
    module = build_from_config(config, where)
    name = config["backbone"] if isinstance(config["backbone"], str) else str(config["backbone"].get("class_path"))
    _load_strict(module, load_file(str(weights)), str(weights), repr(name))
    return module


def _read_folder(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights):
        if not needed.is_file():
            raise FileNotFoundError(f"{folder} is not an mvssl_lightning hf export: {needed.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ValueError(f"{config_path} is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} is not a JSON object")
    return _load_weights(config, weights, config_path), config


def _read_safetensors(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:  # a truncated or foreign file: one line
        raise ValueError(f"{path} is not a readable .safetensors file: {type(error).__name__}: {error}") from error
    if CONFIG_METADATA_KEY not in metadata:
        raise ValueError(
            f"{path} has no {CONFIG_METADATA_KEY!r} metadata (not written by mvssl-export), so its architecture is "
            f"unknown: build it yourself and load the weights with module.load_state_dict(load_file(path))"
        )
    try:
        config = json.loads(metadata[CONFIG_METADATA_KEY])
    except ValueError as error:
        raise ValueError(f"{path}: its {CONFIG_METADATA_KEY!r} metadata is not JSON: {error}") from error
    return _load_weights(config, path, path), config


def _looks_like_safetensors(path: Path) -> bool:
    """``.safetensors`` by name, or by content: an 8-byte little-endian header length, then the JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length < path.stat().st_size


def _resolve(path_or_repo_id: PathOrRepoId) -> Path:
    """The local path: as given when it exists, else a Hugging Face repo id downloaded to the local cache."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_repo_id)
    if isinstance(path_or_repo_id, Path) or not _REPO_ID.match(text) or text.endswith(_LOCAL_SUFFIXES):
        raise FileNotFoundError(f"not found: {path} (load_pretrained takes an hf folder, a .safetensors file, a "
                                f"checkpoint, or a Hugging Face repo id)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, repo_type="model"))
    except Exception as error:  # network, authentication, missing repo: one line
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise FileNotFoundError(f"{text} is not a local path and could not be downloaded from the Hugging Face Hub: "
                                f"{type(error).__name__}: {first}") from error


@overload
def load_pretrained(path_or_repo_id: PathOrRepoId, with_transform: Literal[False] = ...,
                    map_location: Union[str, torch.device] = ...) -> nn.Module: ...


@overload
def load_pretrained(path_or_repo_id: PathOrRepoId, with_transform: Literal[True],
                    map_location: Union[str, torch.device] = ...) -> tuple[nn.Module, Callable]: ...


def load_pretrained(
    path_or_repo_id: PathOrRepoId, with_transform: bool = False, map_location: Union[str, torch.device] = "cpu"
) -> Union[nn.Module, tuple[nn.Module, Callable]]:
    """The backbone (eval mode, on ``map_location``) of an export, a checkpoint or a Hub repo (module docstring),
    ``module(x)`` giving pooled features ``(B, feat_dim)``; with ``with_transform``, ``(backbone, transform)``
    where ``transform`` turns a PIL image into the normalised tensor the backbone expects.

    Raises:
        FileNotFoundError: no such path, and not a downloadable repo id; a folder without its files.
        ValueError: a file that is not an export or a checkpoint of this library, a backbone recorded as a Python
            module, weights that do not fit the recorded architecture.
    """
    path = _resolve(path_or_repo_id)
    if path.is_dir():
        backbone, config = _read_folder(path)
        data = config
    elif _looks_like_safetensors(path):
        backbone, config = _read_safetensors(path)
        data = config
    else:
        source = read_checkpoint(path)
        backbone, data = source.backbone, input_description(source.data)
    backbone = backbone.to(map_location).eval()
    if not with_transform:
        return backbone
    return backbone, eval_transform(int(data["image_size"]), data["mean"], data["std"])
