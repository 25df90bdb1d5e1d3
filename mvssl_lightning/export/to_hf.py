"""Safetensors and Hugging Face folders: the backbone's weights with everything needed to rebuild it.

* :func:`write_safetensors`: one ``.safetensors`` file of the backbone's ``state_dict``; its metadata holds the
  description (:func:`hf_config`, JSON under the key ``mvssl_config``), so the file alone is enough for
  :func:`~mvssl_lightning.export.pretrained.load_pretrained`;
* :func:`write_hf`: a Hugging Face model folder, ``model.safetensors`` (the same file), ``config.json`` (the same
  description) and a ``README.md`` model card (method, backbone, pre-training data, training length, evaluation
  results, the checkpoint's SHA-256, how to load it), optionally uploaded to the Hub (:func:`push_folder`).

The description (``config.json``) says how to rebuild the architecture (``backbone``, ``backbone_kwargs``,
``cifar_stem``, ``feat_dim``), how to feed it (``image_size``, ``mean``, ``std``; ImageNet's 224 px statistics and
``"data_recorded": false`` when the checkpoint predates the record of its pre-training data) and where it came from
(``method``, ``recipe``, ``dataset``, ``epoch``, ``global_step``, ``checkpoint_sha256``).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor

from mvssl_lightning.data.views.base import IMAGENET_NORMALIZE
from mvssl_lightning.export.source import ExportError, ExportSource

__all__ = [
    "CONFIG_METADATA_KEY",
    "FORMAT_VERSION",
    "hf_config",
    "input_description",
    "model_card",
    "push_folder",
    "read_eval_results",
    "safetensors_state_dict",
    "write_hf",
    "write_safetensors",
]

#: the safetensors metadata key whose value is the JSON of :func:`hf_config`
CONFIG_METADATA_KEY = "mvssl_config"
#: version of the ``config.json`` layout; :func:`~mvssl_lightning.export.pretrained.load_pretrained` checks it
FORMAT_VERSION = 1
#: what the loader assumes when a checkpoint did not record its pre-training data
DEFAULT_IMAGE_SIZE = 224
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"

_DROPPED = object()  # marks a value that JSON cannot hold


def _json_value(value: Any) -> Any:
    """``value`` if JSON holds it as it is (dicts keep their JSON members), else ``_DROPPED``.

    A list or tuple with any non-JSON member is dropped whole (a partial list would change its meaning);
    non-finite floats are dropped (not valid JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _DROPPED
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return _DROPPED if any(v is _DROPPED for v in items) else items
    if isinstance(value, dict):
        kept = {k: _json_value(v) for k, v in value.items() if isinstance(k, str)}
        return {k: v for k, v in kept.items() if v is not _DROPPED}
    return _DROPPED


def _architecture_json(value: Any, what: str, source: ExportSource) -> Any:
    """``value`` (part of the architecture) as JSON holds it; an error rather than a silently dropped argument,
    which would rebuild another architecture."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ExportError(f"{source.checkpoint}: its {what} cannot be written to JSON ({error}), so the exported "
                          f"description could not rebuild the backbone; export it with --to torchvision or timm, "
                          f"or load the checkpoint itself") from error


def _is_evaluation(hparams: dict) -> bool:
    """Whether ``hparams`` are an evaluation run's (``mvssl-eval``: LinearEval / FineTune)."""
    return "checkpoint" in hparams and "num_classes" in hparams


def _pretraining_hparams(source: ExportSource) -> dict:
    """The pre-training method's hyper-parameters: the checkpoint's own, or for an evaluation checkpoint those of
    the pre-training checkpoint it names (read_checkpoint has already read that file, so it exists)."""
    if not _is_evaluation(source.hparams):
        return dict(source.hparams)
    pretrained = source.hparams.get("checkpoint")
    if not pretrained or not Path(pretrained).is_file():
        return {}
    raw = torch.load(pretrained, map_location="cpu", weights_only=True)
    return dict(raw.get("hyper_parameters") or {}) if isinstance(raw, dict) else {}


def _recorded_backbone(source: ExportSource, pretraining: dict) -> Any:
    """The backbone as recorded: its name, or the ``class_path`` / ``init_args`` dict of a module given in a config
    (``source.name`` is then ``module:<Class>``, which alone could not rebuild it)."""
    recorded = pretraining.get("backbone")
    if isinstance(recorded, dict) and "class_path" in recorded:
        return _architecture_json(recorded, "backbone class_path / init_args", source)
    return source.name


def input_description(data: dict[str, Any]) -> dict[str, Any]:
    """``image_size``, ``mean``, ``std`` and ``data_recorded`` from a checkpoint's record of its pre-training data;
    224 px and ImageNet's statistics (``data_recorded`` false) unless all three were recorded."""
    recorded = all(data.get(k) is not None for k in ("image_size", "mean", "std"))
    return {
        "image_size": int(data["image_size"]) if recorded else DEFAULT_IMAGE_SIZE,
        "mean": [float(v) for v in data["mean"]] if recorded else [float(v) for v in IMAGENET_NORMALIZE["mean"]],
        "std": [float(v) for v in data["std"]] if recorded else [float(v) for v in IMAGENET_NORMALIZE["std"]],
        "data_recorded": recorded,
    }


def hf_config(source: ExportSource) -> dict[str, Any]:
    """The description of the exported backbone (``config.json`` and the safetensors metadata; module docstring)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        library_version = version("mvssl_lightning")
    except PackageNotFoundError:  # a source tree that is not installed
        library_version = "unknown"
    pretraining = _pretraining_hparams(source)
    data = dict(source.data or {})
    config: dict[str, Any] = {
        "library": "mvssl_lightning",
        "library_version": library_version,
        "format_version": FORMAT_VERSION,
        "backbone": _recorded_backbone(source, pretraining),
        "backbone_kwargs": _architecture_json(dict(source.backbone_kwargs or {}), "backbone_kwargs", source),
        "cifar_stem": bool(source.cifar_stem),
        "feat_dim": int(source.feat_dim),
        "method": source.method,
        # the method's constructor arguments, JSON-serialisable ones only: a module given as the backbone from
        # Python, a Path or a non-finite float cannot go into config.json and is left out
        "recipe": _json_value(pretraining),
        **input_description(data),
        "dataset": data.get("dataset"),
        "views": data.get("views"),
        "epoch": source.epoch,
        "global_step": source.global_step,
        "checkpoint_sha256": source.sha256,
    }
    if _is_evaluation(source.hparams):
        # the weights are an evaluation run's (a fine-tuned backbone stays fine-tuned); say which protocol
        config["evaluation"] = {"recipe": _json_value(dict(source.hparams))}
    return config


def safetensors_state_dict(source: ExportSource) -> dict[str, Tensor]:
    """The backbone's ``state_dict`` as safetensors stores it: detached, contiguous CPU tensors.

    Each tensor is cloned, so tied weights (two names sharing one storage) become separate tensors: ``save_file``
    refuses shared storage, and the loader needs every name for a strict ``load_state_dict``."""
    state: dict[str, Tensor] = {}
    for name, value in source.backbone.state_dict().items():
        if not isinstance(value, Tensor):
            raise ExportError(f"{source.checkpoint}: the backbone's state_dict entry {name!r} is a "
                              f"{type(value).__name__}, not a tensor; safetensors holds tensors only")
        state[name] = value.detach().to("cpu").contiguous().clone()
    return state


def write_safetensors(source: ExportSource, out: Path, config: Optional[dict[str, Any]] = None) -> Path:
    """Write the backbone's weights to the ``.safetensors`` file ``out``, its description (``config``, by default
    :func:`hf_config`) as JSON in the metadata key :data:`CONFIG_METADATA_KEY`; returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = hf_config(source) if config is None else config
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)}
    save_file(safetensors_state_dict(source), str(out), metadata=metadata)
    return out


# ----------------------------------------------------------------------------------------------- the model card
def _method_names(method: Optional[str]) -> tuple[str, str, str]:
    """``(class path, short name, one-line description)`` of the pre-training method (from its docstring)."""
    if not method:
        return "unknown", "unknown", "the checkpoint does not record its method"
    from mvssl_lightning.methods import METHODS

    module_name, _, class_name = method.rpartition(".")
    cls: Any = None
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        pass
    short = next((key for key, value in METHODS.items() if value is cls), class_name.lower())
    doc = (getattr(cls, "__doc__", None) or "").strip().splitlines()
    description = doc[0].strip() if doc else "a method outside mvssl_lightning"
    return method, short, description


def _percent(value: Any) -> str:
    return f"{100 * float(value):.2f}" if isinstance(value, (int, float)) else "-"


def read_eval_results(path: Path) -> dict[str, Any]:
    """An ``eval_results.json`` of ``mvssl-eval`` (a folder holding one is accepted), with a one-line error."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "eval_results.json"
    if not path.is_file():
        raise FileNotFoundError(f"eval results not found: {path}")
    try:
        results = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(results, dict) or "top1" not in results:
        raise ValueError(f"{path} is not an eval_results.json of mvssl-eval (no 'top1')")
    return results


def _results_row(results: dict[str, Any]) -> str:
    """One table row: protocol (the evaluation class, with its label fraction), run name (the config's logger
    name), dataset, top-1 / top-5 in percent, epochs, the evaluated checkpoint's SHA-256 (first 12 digits)."""
    config = results.get("config") or {}
    data = (config.get("data") or {}) if isinstance(config, dict) else {}
    logger = ((config.get("trainer") or {}).get("logger") or {}) if isinstance(config, dict) else {}
    run = (logger.get("init_args") or {}).get("name") if isinstance(logger, dict) else None
    protocol = str(results.get("model") or "?").rpartition(".")[2]
    fraction = data.get("label_fraction")
    if fraction:
        protocol += f" ({100 * float(fraction):g}% labels)"
    checkpoint = results.get("checkpoint") or {}
    digest = str(checkpoint.get("sha256") or "")[:12] or "-"
    cells = [protocol, str(run or "-"), str(data.get("dataset") or "-"), _percent(results.get("top1")),
             _percent(results.get("top5")), str(results.get("epoch", "-")), f"`{digest}`"]
    return "| " + " | ".join(cells) + " |"


def model_card(source: ExportSource, config: dict[str, Any], load_name: str,
               eval_results: Optional[dict[str, Any]] = None) -> str:
    """The ``README.md`` of an ``hf`` folder: YAML front matter, then what the weights are and how to load them."""
    method, short, description = _method_names(source.method)
    backbone = config["backbone"]
    if isinstance(backbone, dict):
        arch = f"`{backbone.get('class_path')}` with `init_args` `{json.dumps(backbone.get('init_args') or {})}`"
    else:
        arch = f"`{backbone}`"
    stem = ", CIFAR stem (3x3 stride-1 first convolution, no max-pool)" if config["cifar_stem"] else ""
    kwargs = f", `backbone_kwargs` `{json.dumps(config['backbone_kwargs'])}`" if config["backbone_kwargs"] else ""
    if config["data_recorded"]:
        data_lines = [
            f"- dataset: `{config['dataset']}`" + (f", views `{config['views']}`" if config.get("views") else ""),
            f"- image size: {config['image_size']} px",
            f"- normalisation: mean {config['mean']}, std {config['std']}",
        ]
    else:
        data_lines = [
            "- not recorded in the checkpoint (written before pre-training data was recorded); `load_pretrained`'s "
            f"transform assumes {DEFAULT_IMAGE_SIZE} px images with ImageNet normalisation "
            f"(mean {config['mean']}, std {config['std']})",
        ]
    if eval_results is not None:
        evaluation = [
            "| Protocol | Run | Dataset | Top-1 (%) | Top-5 (%) | Epochs | Evaluated checkpoint |",
            "|---|---|---|---|---|---|---|",
            _results_row(eval_results),
        ]
    else:
        evaluation = ["No evaluation results were given at export."]
    fine_tuned = ("\nThese weights come from an evaluation checkpoint (`mvssl-eval`): a fine-tuned backbone is "
                  "exported as fine-tuned.\n" if "evaluation" in config else "")
    lines = [
        "---",
        "library_name: mvssl_lightning",
        "tags:",
        "- self-supervised-learning",
        f"- {short}",
        "license: mit",
        "pipeline_tag: image-feature-extraction",
        "---",
        "",
        f"# {method.rpartition('.')[2]} pre-trained backbone ({backbone if isinstance(backbone, str) else 'module'})",
        "",
        "## Method",
        "",
        f"`{method}`: {description}",
        fine_tuned,
        "## Backbone",
        "",
        f"{arch}{stem}{kwargs}; feature dimension {config['feat_dim']}.",
        "",
        "## Pre-training data",
        "",
        *data_lines,
        "",
        "## Training",
        "",
        f"- epoch: {config['epoch']} (Lightning's epoch counter when the checkpoint was saved)",
        f"- optimiser steps: {config['global_step']}",
        "",
        "## Evaluation",
        "",
        *evaluation,
        "",
        "## Checkpoint",
        "",
        f"Exported from `{source.checkpoint.name}`, SHA-256 `{config['checkpoint_sha256']}`.",
        "",
        "## How to load",
        "",
        "```python",
        "from mvssl_lightning import load_pretrained",
        "",
        f"backbone, transform = load_pretrained({json.dumps(load_name)}, with_transform=True)",
        "features = backbone(transform(image).unsqueeze(0))  # image: a PIL image; features: (1, feat_dim)",
        "```",
        "",
    ]
    return "\n".join(lines)


def push_folder(folder: Path, repo_id: str) -> None:
    """Upload ``folder`` to the Hugging Face model repo ``repo_id`` (created if missing; the token is
    huggingface_hub's usual one: ``hf auth login`` or ``HF_TOKEN``)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")


def write_hf(source: ExportSource, out: Path, eval_results: Optional[Path] = None,
             push_to_hub: Optional[str] = None, location: Optional[str] = None) -> Path:
    """Write the Hugging Face folder ``out`` (``model.safetensors``, ``config.json``, ``README.md``; module
    docstring), with ``eval_results`` (an ``eval_results.json`` of ``mvssl-eval``) in the model card; upload it to
    the repo ``push_to_hub`` when given. Returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; an hf export writes a folder")
    results = read_eval_results(eval_results) if eval_results is not None else None  # fail before writing
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config(source)
    write_safetensors(source, out / WEIGHTS_NAME, config)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    # the card's loading snippet names the repo, else ``location`` (where the folder ends up), else ``out``
    (out / CARD_NAME).write_text(model_card(source, config, push_to_hub or location or str(out), results))
    if push_to_hub:
        push_folder(out, push_to_hub)
    return out
