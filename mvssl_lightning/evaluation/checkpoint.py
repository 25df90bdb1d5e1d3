"""The backbone to evaluate: from a pre-training checkpoint of any method, a torchvision state_dict, or random.

Three sources, told apart by the file's contents (read with ``torch.load(..., weights_only=True)``):

* **a pre-training checkpoint** of this library (any :class:`~mvssl_lightning.methods.SiameseModule`,
  written by ``mvssl fit``, ``Trainer.fit`` or ``Trainer.save_checkpoint``): its ``hyper_parameters``
  hold the method's complete constructor arguments (plus ``_class_path`` when the CLI wrote it). The
  backbone is rebuilt from them with :func:`~mvssl_lightning.models.build_backbone` (``backbone``,
  ``cifar_stem``, ``zero_init_residual``, ``backbone_kwargs``) and the ``backbone.*`` entries of the
  ``state_dict`` are loaded (strictly); projectors, predictors, EMA teachers and queues are ignored and
  the method itself is never instantiated. For AMDIM the backbone is AMDIM's encoder, whose ``forward``
  gives ``r1`` flattened, the feature AMDIM's own classifiers read;
* **a backbone ``state_dict``**: a torchvision ResNet's (e.g. written by
  :func:`~mvssl_lightning.models.export_torchvision_state_dict`, or a torchvision model's full
  ``state_dict``, whose ``fc.*`` entries are dropped), or the ``state_dict`` of any backbone
  ``backbone`` names (a timm model's, a torchvision model's): the file does not say its architecture, so
  ``backbone`` (and ``cifar_stem``) must be given;

The backbone recorded in a checkpoint is a name (``resnet50``, ``timm:vit_small_patch16_224``,
``torchvision:convnext_tiny``), a ``class_path`` / ``init_args`` dict (a module given in a config: it is
instantiated again), or ``module:<package.Class>`` (a module given from Python, which the checkpoint
cannot rebuild: pass the module as ``backbone``).
* **no checkpoint** (``None``): a randomly initialised backbone of the given architecture, the
  baseline every evaluation should be compared with.

Every mismatch is an error that names the file and the problem (missing file, not a checkpoint, a
Lightning checkpoint of something else, missing / unexpected keys and shape mismatches).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from mvssl_lightning.models.backbones import BACKBONES, Backbone, backbone_name, build_backbone

__all__ = ["BackboneSource", "load_backbone", "sha256_file"]

PathLike = Union[str, os.PathLike]

#: where each set of backbone weights lives in a pre-training checkpoint's state_dict
_PREFIXES = {"student": "backbone.", "teacher": "teacher_backbone."}
CheckpointKey = Literal["student", "teacher"]
_SHOWN = 5


@dataclass(frozen=True)
class BackboneSource:
    """Where the evaluated backbone came from (written into the results JSON).

    ``kind``: ``"pretraining"`` (a checkpoint of one of our methods), ``"torchvision"`` (a ResNet
    ``state_dict``) or ``"random"``; ``method``: the pre-training method's class path (or class name)
    when known; the architecture arguments the backbone was built with; ``data``: what a pre-training
    checkpoint records of its data (``ckpt["mvssl"]["data"]``, ``MultiViewDataModule.data_summary()``:
    ``dataset``, ``views``, ``image_size``, ``mean``, ``std``), from which
    :class:`~mvssl_lightning.evaluation.LabeledDataModule` takes its default resolution and normalisation
    (``{}`` when unknown).
    """

    kind: Literal["pretraining", "torchvision", "random"]
    path: Optional[str]
    sha256: Optional[str]
    method: Optional[str]
    backbone: str
    cifar_stem: bool
    zero_init_residual: bool
    backbone_kwargs: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: str, arch: str) -> None:
    """``module.load_state_dict(state)`` with an error naming the file, the architecture and the
    missing / unexpected keys and shape mismatches (first few of each)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        module.load_state_dict(state, strict=True)
        return
    problems = []
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shown(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_shown(shapes)}")
    hint = ""
    conv1 = state.get("conv1.weight")
    if isinstance(conv1, Tensor) and conv1.dim() == 4 and "conv1.weight" in own:
        k_file, k_model = conv1.shape[-1], own["conv1.weight"].shape[-1]
        if k_file != k_model:
            stem = "a CIFAR stem (3x3 conv1)" if k_file == 3 else "the ImageNet stem (7x7 conv1)"
            hint = f"; the file's conv1 is {stem}: set cifar_stem={k_file == 3}"
    raise ValueError(f"{path} does not fit the backbone {arch}: {'; '.join(problems)}{hint}")


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / safe-globals errors: one message for all
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{path} is not a checkpoint readable with torch.load(weights_only=True): "
            f"{type(e).__name__}: {first_line[:300]}"
        ) from e


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _instantiate(spec: dict, path: Path) -> nn.Module:
    """A module from a ``{"class_path": ..., "init_args": {...}}`` record (a module given in a config)."""
    class_path = str(spec.get("class_path", ""))
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{path}: its backbone class {class_path!r} cannot be imported here: {error}") from error
    module = cls(**dict(spec.get("init_args") or {}))
    if not isinstance(module, nn.Module):
        raise ValueError(f"{path}: its backbone class {class_path!r} does not build an nn.Module")
    return module


def _recorded_backbone(recorded: Any, given: Optional[Backbone], path: Path) -> Backbone:
    """The backbone to rebuild from a checkpoint's record (module docstring)."""
    if isinstance(given, nn.Module):
        return given  # the user's own instance: its weights come from the checkpoint
    if isinstance(recorded, dict) and "class_path" in recorded:
        return _instantiate(recorded, path)
    name = str(recorded)
    if name.startswith("module:"):
        raise ValueError(
            f"{path} was pre-trained with a backbone given as a Python module ({name[len('module:'):]}), which the "
            f"checkpoint cannot rebuild: pass that module as backbone (an instance, or class_path / init_args in "
            f"the config)"
        )
    return name


def _arch(name: str, cifar_stem: bool, kwargs: dict) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return f"{name!r} (cifar_stem={cifar_stem}{extra})"


def load_backbone(
    checkpoint: Optional[PathLike],
    backbone: Optional[Backbone] = None,
    cifar_stem: Optional[bool] = None,
    zero_init_residual: bool = True,
    backbone_kwargs: Optional[dict] = None,
    checkpoint_key: CheckpointKey = "student",
) -> tuple[nn.Module, int, BackboneSource]:
    """``(backbone module, feature dim, source)`` for ``checkpoint`` (see the module docstring).

    Args:
        checkpoint: a pre-training checkpoint, a torchvision ResNet ``state_dict`` file, or ``None``
            for a randomly initialised backbone.
        backbone, cifar_stem, backbone_kwargs: the architecture. Required for a ``state_dict`` file
            or ``None``; for a pre-training checkpoint they are read from it, and a value given here
            that disagrees with the checkpoint is an error.
        zero_init_residual: initialisation of a random backbone (no effect once weights are loaded).
        checkpoint_key: which backbone of a pre-training checkpoint: the trained ``student`` (``backbone.*``)
            or the EMA ``teacher`` (``teacher_backbone.*``, methods with an EMA teacher; DINO evaluates it:
            ``eval_linear.py --checkpoint_key teacher``).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: the file is not a checkpoint, not one of ours, or does not fit the architecture.
    """
    if checkpoint is None:
        if backbone is None:
            raise ValueError("a random backbone (checkpoint=None) needs its architecture: set backbone")
        kwargs = dict(backbone_kwargs or {})
        stem = bool(cifar_stem)
        module, dim = build_backbone(backbone, cifar_stem=stem, zero_init_residual=zero_init_residual, **kwargs)
        return module, dim, BackboneSource("random", None, None, None, backbone_name(backbone), stem,
                                           zero_init_residual, kwargs)

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _read(path)
    digest = sha256_file(path)

    lightning_keys = ("hyper_parameters", "pytorch-lightning_version")
    if isinstance(obj, dict) and "state_dict" in obj and any(k in obj for k in lightning_keys):
        hp = obj.get("hyper_parameters") or {}
        if isinstance(hp, dict) and "checkpoint" in hp and "num_classes" in hp:
            raise ValueError(
                f"{path} is a checkpoint of an evaluation run (mvssl-eval), not of pre-training: resume or "
                f"re-validate it with --ckpt_path (trainer.fit/validate(ckpt_path=...)) and keep model.checkpoint "
                f"at the pre-training checkpoint ({hp['checkpoint']})"
            )
        if not isinstance(hp, dict) or "backbone" not in hp:
            shown = sorted(hp)[:10] if isinstance(hp, dict) else type(hp).__name__
            raise ValueError(
                f"{path} is a Lightning checkpoint but not of an mvssl_lightning pre-training method: its "
                f"hyper_parameters have no 'backbone' (found {shown}); pass a torchvision state_dict instead"
            )
        arch = _recorded_backbone(hp["backbone"], backbone, path)
        name, stem = backbone_name(arch), bool(hp.get("cifar_stem", False))
        kwargs = dict(hp.get("backbone_kwargs") or {})
        wanted: dict[str, tuple[Any, Any]] = {"cifar_stem": (cifar_stem, stem)}
        if isinstance(backbone, str):
            wanted["backbone"] = (backbone, name)
        if backbone_kwargs is not None:
            wanted["backbone_kwargs"] = (dict(backbone_kwargs), kwargs)
        clash = [f"{k}={given!r} (checkpoint: {found!r})" for k, (given, found) in wanted.items()
                 if given is not None and given != found]
        if clash:
            raise ValueError(
                f"{path} was pre-trained with backbone {_arch(name, stem, kwargs)}, but the evaluation asks for "
                f"{', '.join(clash)}; leave backbone / cifar_stem / backbone_kwargs unset to use the checkpoint's"
            )
        zero_init = bool(hp.get("zero_init_residual", zero_init_residual))
        module, dim = build_backbone(arch, cifar_stem=stem, zero_init_residual=zero_init, **kwargs)
        prefix = _PREFIXES[checkpoint_key]
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path} has no '{prefix}*' weights in its state_dict"
                             + (" (a method without an EMA teacher?)" if checkpoint_key == "teacher" else ""))
        _load_strict(module, state, str(path), _arch(name, stem, kwargs))
        method = hp.get("_class_path")
        recorded = obj.get("mvssl")
        data = recorded.get("data") if isinstance(recorded, dict) else None
        data = dict(data) if isinstance(data, dict) else {}
        source = BackboneSource("pretraining", str(path), digest, str(method) if method else None, name, stem,
                                zero_init, kwargs, data)
        return module, dim, source

    if _is_tensor_dict(obj):
        if backbone is None:
            raise ValueError(
                f"{path} is a plain state_dict, which does not say its architecture: set backbone "
                f"(one of {list(BACKBONES)}, 'timm:<name>', 'torchvision:<name>' or a module) and cifar_stem"
            )
        kwargs = dict(backbone_kwargs or {})
        stem = bool(cifar_stem)
        module, dim = build_backbone(backbone, cifar_stem=stem, zero_init_residual=zero_init_residual, **kwargs)
        state = {k: v for k, v in obj.items() if k not in ("fc.weight", "fc.bias")}
        _load_strict(module, state, str(path), _arch(backbone_name(backbone), stem, kwargs))
        source = BackboneSource("torchvision", str(path), digest, None, backbone_name(backbone), stem,
                                zero_init_residual, kwargs)
        return module, dim, source

    shown = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{path} is neither an mvssl_lightning pre-training checkpoint (a dict with 'state_dict' and "
        f"'hyper_parameters') nor a torchvision state_dict (a dict of tensors); found {shown}"
    )
