"""The trainer settings that the ``mvssl`` and ``mvssl-eval`` commands share, set as parser defaults.

Parser defaults are ordinary values of the ``trainer`` section: ``--print_config`` shows them, and a config
or the command line overrides them like any other value (``logger: {init_args: {name: mveb_r50}}`` changes
only the name; ``callbacks:`` replaces the list, ``callbacks+:`` appends to it).

Where a run writes (the one rule, applied by both commands with :func:`resolve_run_settings`): its run
directory is ``<root>/<name>/version_<n>`` (TensorBoard logs, ``checkpoints/``, ``eval_results.json``...),
where ``<root>`` is ``trainer.default_root_dir`` when it is set, else ``runs``; a logger ``save_dir`` other
than the shared ``runs`` replaces ``<root>``. Without a logger (``logger: false``) checkpoints go to
``<default_root_dir>/checkpoints``, and the default callbacks that need a logger (``LearningRateMonitor``)
are left out.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["LOGGER", "LOGGER_CALLBACKS", "resolve_run_settings", "trainer_defaults"]

#: TensorBoard under ``runs/<name>/version_<n>`` (each config sets ``name``); no placeholder ``hp_metric = -1``
LOGGER: dict[str, Any] = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "default_hp_metric": False},
}

#: default callbacks that fail without a logger (Lightning: "Cannot use LearningRateMonitor callback with
#: Trainer that has no logger")
LOGGER_CALLBACKS = ("lightning.pytorch.callbacks.LearningRateMonitor",)


def _loggers(trainer: Any) -> list[Any]:
    logger = trainer.get("logger")
    if logger is None or logger is False or logger is True:
        return []
    return list(logger) if isinstance(logger, (list, tuple)) else [logger]


def resolve_run_settings(trainer: Any) -> None:
    """Apply the module's rule to a parsed ``trainer`` section (a jsonargparse ``Namespace``), in place: a
    logger ``save_dir`` left at the shared ``runs`` becomes ``default_root_dir`` when that is set, and without
    a logger the :data:`LOGGER_CALLBACKS` are dropped from ``callbacks``."""
    root = trainer.get("default_root_dir")
    for logger in _loggers(trainer):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if root and init_args is not None and init_args.get("save_dir") == LOGGER["init_args"]["save_dir"]:
            init_args["save_dir"] = str(root)
    logger = trainer.get("logger")
    if logger is False or (isinstance(logger, (list, tuple)) and not logger):  # None: Lightning's default logger
        callbacks = trainer.get("callbacks")
        if isinstance(callbacks, list):
            trainer["callbacks"] = [c for c in callbacks if _class_path(c) not in LOGGER_CALLBACKS]


def _class_path(callback: Any) -> str:
    return str(callback.get("class_path") or "") if hasattr(callback, "get") else ""


def trainer_defaults(check_val_every_n_epoch: int, callbacks: list[dict[str, Any]]) -> dict[str, Any]:
    """The shared defaults (logging every 50 steps, :data:`LOGGER`) with a command's validation interval and
    default callbacks; a fresh copy each call."""
    return {
        "log_every_n_steps": 50,
        "check_val_every_n_epoch": check_val_every_n_epoch,
        "logger": copy.deepcopy(LOGGER),
        "callbacks": copy.deepcopy(callbacks),
    }
