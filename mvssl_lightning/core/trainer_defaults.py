"""The trainer settings that the ``mvssl`` and ``mvssl-eval`` commands share, set as parser defaults.

Parser defaults are ordinary values of the ``trainer`` section: ``--print_config`` shows them, and a config
or the command line overrides them like any other value (``logger: {init_args: {name: mveb_r50}}`` changes
only the name; ``callbacks:`` replaces the list, ``callbacks+:`` appends to it).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["trainer_defaults"]

#: TensorBoard under ``runs/<name>/version_<n>`` (each config sets ``name``); no placeholder ``hp_metric = -1``
LOGGER: dict[str, Any] = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "default_hp_metric": False},
}


def trainer_defaults(check_val_every_n_epoch: int, callbacks: list[dict[str, Any]]) -> dict[str, Any]:
    """The shared defaults (logging every 50 steps, :data:`LOGGER`) with a command's validation interval and
    default callbacks; a fresh copy each call."""
    return {
        "log_every_n_steps": 50,
        "check_val_every_n_epoch": check_val_every_n_epoch,
        "logger": copy.deepcopy(LOGGER),
        "callbacks": copy.deepcopy(callbacks),
    }
