"""How each model of the learning-quality benchmark is built: methods from their configs, baselines from lightly.

Each method is built from the ``model`` and ``data`` sections of its CIFAR-10 config, parsed and
instantiated by jsonargparse with the same types ``mvssl fit`` uses (``SiameseModule`` subclasses,
``MultiViewDataModule``), so the benchmark measures what users run. Only the budget and the data
change (:func:`adapt_config`):

* ``data``: ``dataset`` / ``data_dir`` / ``batch_size`` / ``num_workers`` / ``train_subset`` /
  ``test_subset`` from the command line;
* resolution: at 32 px the recipe is unchanged; at another image side ``S`` the crops follow the data
  (``size = S``; MVEB-style multi-crop: globals ``S``, locals ``S // 2``), ResNets use the CIFAR stem
  up to 64 px and the standard stem above; AMDIM, whose encoder takes 32 px or 128 px inputs, gets its
  ImageNet view pair resized to 32 px (``S <= 64``) or 128 px with the matching centre-crop eval view;
* evaluation: a recipe given as an import path (InfoMin) is evaluated with ToTensor + its training
  normalisation at the native size (what the data module does for CIFAR-sized datasets), for every
  dataset;
* warm-up: capped at 10 % of the run so that a short run is not all warm-up (at 200 epochs no shipped
  config is affected).

Each baseline (:data:`BASELINES`: SimCLR, BYOL, Barlow Twins) is the lightly-built model of
``benchmarks.lightly_models`` with its defaults, lightly's CIFAR-10 recipe (ResNet-18, CIFAR stem up to
64 px, SGD 0.06 x batch / 128, cosine), trained on lightly's CIFAR-10 benchmark views
``SimCLRTransform(input_size=<image side>, cj_strength=0.5, gaussian_blur=0.0)`` and evaluated with
ToTensor + ImageNet normalisation at the native size (:func:`baseline_datamodule`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import yaml
from jsonargparse import ArgumentParser
from lightly.transforms import SimCLRTransform

from benchmarks.lightly_models import LightlyBarlowTwins, LightlyBYOL, LightlyModel, LightlySimCLR
from mvssl_lightning.data import IMAGENET_NORMALIZE, VIEW_RECIPES, MultiViewDataModule, eval_view_cifar
from mvssl_lightning.methods import METHODS
from mvssl_lightning.methods.base import SiameseModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

#: every method of the registry -> its CIFAR-10 config, ``configs/<name>_cifar10.yaml`` (tests/test_registry.py
#: checks that each exists and builds that method)
METHOD_CONFIGS: dict[str, str] = {name: f"{name}_cifar10.yaml" for name in METHODS}
#: report labels: the class names, the ER family's hyphenated as in the paper (ER-SimCLR)
METHOD_LABELS: dict[str, str] = {name: re.sub(r"^ER(?=[A-Z])", "ER-", cls.__name__) for name, cls in METHODS.items()}

#: benchmark name -> lightly-built baseline (its defaults are lightly's CIFAR-10 recipe)
BASELINES: dict[str, type[LightlyModel]] = {
    "simclr": LightlySimCLR,
    "byol": LightlyBYOL,
    "barlowtwins": LightlyBarlowTwins,
}

#: largest image side trained with the ResNet CIFAR stem (3x3 stride-1 conv, no max-pool)
CIFAR_STEM_MAX_SIDE = 64
#: largest fraction of the run spent in the learning-rate warm-up
MAX_WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class Budget:
    """What every model of one benchmark run shares."""

    dataset: str  # "default" (embedded) or "npz"
    data_dir: Optional[str]
    image_size: int
    epochs: int
    batch_size: int
    steps_per_epoch: int
    num_workers: int = 0
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None


def load_config(name: str) -> dict[str, Any]:
    """The ``model`` and ``data`` sections of ``configs/<METHOD_CONFIGS[name]>``."""
    if name not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(METHOD_CONFIGS)}")
    cfg = yaml.safe_load((CONFIGS / METHOD_CONFIGS[name]).read_text())
    return {"model": cfg["model"], "data": cfg["data"]}


def _resize_views(data: dict[str, Any], model_args: dict[str, Any], side: int) -> None:
    """Make the view recipe's crops follow an image side other than 32 px (in place)."""
    views = data["views"]
    kwargs = data.setdefault("view_kwargs", {}) or {}
    data["view_kwargs"] = kwargs
    if views == "amdim_cifar":  # the encoder takes 32 px or 128 px inputs only
        size = 32 if side <= CIFAR_STEM_MAX_SIDE else 128
        data["views"], data["view_kwargs"] = "amdim", {"size": size}
        data["eval_transform"] = {
            "class_path": "mvssl_lightning.data.views.AMDIMEvalView",
            "init_args": {"size": size, "resize": round(size * 146 / 128)},
        }
        model_args["cifar_stem"] = size == 32
        return
    if views.startswith("mveb_multicrop"):
        kwargs.update(global_size=side, local_size=side // 2)
    else:
        kwargs["size"] = side
    model_args["cifar_stem"] = side <= CIFAR_STEM_MAX_SIDE


def recipe_args(model: dict[str, Any]) -> dict[str, Any]:
    """A config's ``model`` section as the method receives it: its class's recipe defaults (the signature:
    configs write only what differs) updated with ``init_args``."""
    path = model["class_path"]
    cls = next((c for c in METHODS.values() if path in (c.__name__, f"{c.__module__}.{c.__name__}")), None)
    if cls is None:
        module, _, name = path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **(model.get("init_args") or {})}


def adapt_config(config: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """A copy of ``config`` (``model`` + ``data``) with the budget's data, resolution and warm-up cap."""
    cfg = copy.deepcopy(config)
    data, model_args = cfg["data"], cfg["model"].setdefault("init_args", {})
    data.update(
        dataset=budget.dataset, data_dir=budget.data_dir, batch_size=budget.batch_size,
        num_workers=budget.num_workers, train_subset=budget.train_subset, test_subset=budget.test_subset,
        download=False,
    )
    if budget.image_size != 32:
        _resize_views(data, model_args, budget.image_size)
    max_warmup = MAX_WARMUP_FRACTION * budget.epochs
    args = recipe_args(cfg["model"])  # the warm-up may be the class's default, not written in the config
    if args.get("warmup_steps") is not None:
        model_args["warmup_steps"] = min(int(args["warmup_steps"]), int(max_warmup * budget.steps_per_epoch))
    elif float(args["warmup_epochs"]) > max_warmup:
        model_args["warmup_epochs"] = max_warmup
    return cfg


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SiameseModule, "model")
    parser.add_class_arguments(MultiViewDataModule, "data")
    return parser


def build_method(name: str, budget: Budget, seed: int = 0) -> tuple[SiameseModule, MultiViewDataModule, dict]:
    """``(model, datamodule, recipe description)`` of method ``name`` under ``budget``."""
    cfg = adapt_config(load_config(name), budget)
    parser = _parser()
    L.seed_everything(seed, verbose=False)
    init = parser.instantiate(parser.parse_object(cfg))
    model, datamodule = init.model, init.data
    views = cfg["data"]["views"]
    if isinstance(views, str) and views not in VIEW_RECIPES and cfg["data"].get("eval_transform") is None:
        normalize = (cfg["data"].get("view_kwargs") or {}).get("normalize", IMAGENET_NORMALIZE)
        datamodule.eval_transform = eval_view_cifar(normalize=normalize, size=budget.image_size)
    args = recipe_args(cfg["model"])
    info = {
        "config": f"configs/{METHOD_CONFIGS[name]}",
        "model_class": type(model).__name__,
        "views": views.rsplit(".", 1)[-1] if isinstance(views, str) else type(views).__name__,
        "num_views": datamodule.num_views,
        "backbone": args.get("backbone"),
        "cifar_stem": bool(args.get("cifar_stem", False)),
        "optimizer": args.get("optimizer"),
        "base_lr": args.get("lr"),
        "lr_scaling": args.get("lr_scaling", "linear"),
    }
    return model, datamodule, info


def baseline_datamodule(
    dataset: str,
    data_dir: Optional[str],
    image_size: int,
    batch_size: int,
    num_workers: int,
    train_subset: Optional[int] = None,
    test_subset: Optional[int] = None,
) -> MultiViewDataModule:
    """lightly's CIFAR-10 benchmark views at ``image_size`` px, eval = ToTensor + ImageNet normalisation."""
    views = SimCLRTransform(input_size=image_size, cj_strength=0.5, gaussian_blur=0.0)
    return MultiViewDataModule(
        dataset=dataset, data_dir=data_dir, views=views,
        eval_transform=eval_view_cifar(normalize=IMAGENET_NORMALIZE, size=image_size),
        batch_size=batch_size, num_workers=num_workers, train_subset=train_subset, test_subset=test_subset,
    )


def build_baseline(name: str, budget: Budget, seed: int = 0) -> tuple[LightlyModel, MultiViewDataModule, dict]:
    """``(model, datamodule, recipe description)`` of baseline ``name`` under ``budget``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid names: {', '.join(BASELINES)}")
    L.seed_everything(seed, verbose=False)
    cifar_stem = budget.image_size <= CIFAR_STEM_MAX_SIDE
    model = BASELINES[name](cifar_stem=cifar_stem, batch_size=budget.batch_size, channels_last=True)
    datamodule = baseline_datamodule(budget.dataset, budget.data_dir, budget.image_size, budget.batch_size,
                                     budget.num_workers, budget.train_subset, budget.test_subset)
    info = {"config": f"benchmarks/lightly_models.py:{type(model).__name__}", "model_class": type(model).__name__,
            "views": "SimCLRTransform", "num_views": 2, "backbone": "resnet18", "cifar_stem": cifar_stem,
            "optimizer": "sgd", "base_lr": 0.06, "lr_scaling": "linear (batch / 128)"}
    return model, datamodule, info
