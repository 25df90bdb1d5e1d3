"""Resuming a pre-training run honestly: find the checkpoint, check that it belongs to the run the
configuration describes, and continue in the same run directory.

The ``mvssl`` command (:mod:`mvssl_lightning.cli`) calls :func:`plan_resume` for ``--ckpt_path``.  It

- resolves ``last`` to the newest ``last*.ckpt`` of the run directory the configuration writes to, and
  nowhere else (``<save_dir>/<name>/version_*/checkpoints`` of the TensorBoard logger, whose ``save_dir``
  follows ``default_root_dir`` (:mod:`mvssl_lightning.core.trainer_defaults`), or
  ``<default_root_dir>/checkpoints`` without a logger) and stops with an error naming that directory when
  there is none (Lightning would warn and train from scratch; a newer run elsewhere is never picked);
- loads the checkpoint (``weights_only=True``) with an error that names the file when it is missing,
  truncated or not a Lightning checkpoint of a :class:`~mvssl_lightning.methods.base.SiameseModule`;
- refuses a checkpoint written by another method class, and refuses hyperparameters that differ from
  the checkpoint's (listing each difference) except the run-time switches of :data:`RUNTIME_SETTINGS`:
  a resumed run continues the *same* run, so ``--model.lr 0.1`` with ``--ckpt_path`` would otherwise be
  silently replaced by the checkpoint's optimiser state;
- returns the logger version the checkpoint was written under, so that the resumed run logs into the
  same ``version_N`` directory (one TensorBoard run, no split curves).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = [
    "RUNTIME_SETTINGS",
    "ResumeError",
    "ResumePlan",
    "find_last_checkpoint",
    "hparam_differences",
    "load_checkpoint",
    "plan_resume",
]

#: constructor arguments that may change when a run is resumed (they change speed or checks, not the run)
RUNTIME_SETTINGS = frozenset({"compile", "channels_last", "check_finite", "skip_nonfinite_grads", "batch_size"})

_VERSION = re.compile(r"^version_(\d+)$")


class ResumeError(ValueError):
    """``--ckpt_path`` cannot be resumed as configured (the message says why and what to do)."""


@dataclass(frozen=True)
class ResumePlan:
    """Where to resume from: the checkpoint file and the logger version it belongs to (None: unknown)."""

    ckpt_path: Path
    version: Optional[int]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects that weights_only refuses
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not written by torch.save): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(
            f"{path} is not a pre-training checkpoint of mvssl_lightning (no 'state_dict' and "
            f"'hyper_parameters'; e.g. a plain state_dict: evaluate it with mvssl-eval instead)"
        )
    return ckpt


def find_last_checkpoint(run_dirs: list[Path]) -> Optional[Path]:
    """The most recently written ``last*.ckpt`` under ``<run_dir>/version_*/checkpoints`` or
    ``<run_dir>/checkpoints`` of any of ``run_dirs`` (None when there is none)."""
    candidates: list[Path] = []
    for run_dir in run_dirs:
        candidates += run_dir.glob("version_*/checkpoints/last*.ckpt")
        candidates += run_dir.glob("checkpoints/last*.ckpt")
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def checkpoint_version(path: Path, ckpt: Mapping[str, Any]) -> Optional[int]:
    """The logger version the checkpoint belongs to: recorded in it (``ckpt["mvssl"]["log_version"]``)
    or read from its path (``.../version_N/checkpoints/x.ckpt``)."""
    recorded = ckpt.get("mvssl", {}).get("log_version") if isinstance(ckpt.get("mvssl"), Mapping) else None
    if isinstance(recorded, int):
        return recorded
    for part in reversed(path.resolve().parts):
        match = _VERSION.match(part)
        if match:
            return int(match.group(1))
    return None


def resolve_class(path: str) -> Any:
    """The object named by a dotted import path (``mvssl_lightning.methods.MVEB``)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _normal(value: Any) -> Any:
    """A comparable form of a hyperparameter: tuples as lists, numbers as floats, mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _equal(a: Any, b: Any) -> bool:
    a, b = _normal(a), _normal(b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return bool(a == b)


def hparam_differences(checkpoint_hparams: Mapping[str, Any], config_args: Mapping[str, Any]) -> list[str]:
    """``"name: <checkpoint value> (checkpoint) != <config value> (config)"`` for every constructor
    argument that differs, except :data:`RUNTIME_SETTINGS` and Lightning's private keys."""
    out = []
    for name, value in config_args.items():
        if name in RUNTIME_SETTINGS or name.startswith("_") or name not in checkpoint_hparams:
            continue
        if not _equal(checkpoint_hparams[name], value):
            out.append(f"{name}: {checkpoint_hparams[name]!r} (checkpoint) != {value!r} (config)")
    return out


def plan_resume(
    ckpt_path: str,
    run_dirs: list[Path],
    class_path: Optional[str],
    init_args: Mapping[str, Any],
) -> ResumePlan:
    """Check ``ckpt_path`` against the configured model and return where to resume (module docstring).

    Raises:
        ResumeError: ``ckpt_path`` is missing, unreadable, or of another method class, ``last`` finds
            nothing under ``run_dirs``, or the hyperparameters changed.
    """
    if ckpt_path == "last":
        found = find_last_checkpoint(run_dirs)
        if found is None:
            where = ", ".join(str(d) for d in run_dirs)
            raise ResumeError(
                f"ckpt_path: last: nothing to resume, no last*.ckpt under {where} (version_*/checkpoints); "
                f"start the run without --ckpt_path"
            )
        path = found
    else:
        path = Path(ckpt_path)
    try:
        ckpt = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise ResumeError(str(e)) from e
    hparams = ckpt["hyper_parameters"]
    saved_class = hparams.get("_class_path") or ckpt.get("mvssl", {}).get("class_path")
    if class_path is not None and saved_class is not None:
        if resolve_class(saved_class) is not resolve_class(class_path):
            raise ResumeError(
                f"{path} was written by {saved_class.rpartition('.')[2]}, but the configuration builds "
                f"{class_path.rpartition('.')[2]}: resume with the checkpoint's method (model.class_path: "
                f"{saved_class}) or start a new run without --ckpt_path"
            )
    differences = hparam_differences(hparams, init_args)
    if differences:
        listed = "\n  ".join(differences)
        raise ResumeError(
            f"{path}: the configuration differs from the checkpoint's hyperparameters:\n  {listed}\n"
            f"A resumed run continues the same run (optimiser, schedule and EMA states come from the "
            f"checkpoint); remove these overrides, or start a new run without --ckpt_path."
        )
    return ResumePlan(path, checkpoint_version(path, ckpt))
