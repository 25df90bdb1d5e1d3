"""``TrainingHealth``: notice a run that diverges or collapses while its loss still looks finite.

A non-finite loss is caught by the method itself (``check_finite``).  Two failures keep the loss
finite and are silent otherwise:

- **divergence**: with a huge learning rate under LARS the weights grow without bound (the loss of a
  normalised objective stays finite); watched as the L2 norm of all trainable parameters,
  ``||theta_t|| / ||theta_0||`` above ``max_param_norm_ratio``, or non-finite;
- **collapse**: every image maps to (nearly) the same point; watched as ``std x sqrt(d)`` of the
  L2-normalised backbone features of the training batch (``outputs["features"]``): the mean over
  dimensions of the per-dimension standard deviation, times ``sqrt(d)``, which is about 1 for
  features spread over the sphere and 0 for collapsed ones (the collapse metric of lightly's
  ``std_of_l2_normalized``, Barlow Twins-style), below ``min_feature_std`` (default
  :data:`mvssl_lightning.core.statistics.COLLAPSE_STD`).  It is the ``std_sqrt_d`` of
  :mod:`mvssl_lightning.core.statistics` (``dimension_std``), computed in float32 on the batch.

Checked every ``every_n_steps`` optimiser steps (one norm over the parameters and one std over a
batch: negligible).  ``action``: ``"warn"`` (default: once per kind of failure, naming the step and
the value), ``"stop"`` (warn and end the fit gracefully: ``trainer.should_stop``), ``"raise"``
(``FloatingPointError``).  Values are logged as ``health/param_norm_ratio`` and ``health/feature_std``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from mvssl_lightning.core.statistics import COLLAPSE_STD, dimension_std

__all__ = ["TrainingHealth", "feature_std"]


def feature_std(features: Tensor) -> float:
    """``mean_j std_b(z_bj) * sqrt(d)`` of the L2-normalised rows ``z`` of ``features (B, d)``, in float32
    (``std_sqrt_d`` of :mod:`mvssl_lightning.core.statistics`); NaN for a single row."""
    if features.shape[0] < 2:
        return math.nan  # what the unbiased std of one row gives
    return float(_feature_std(features))


def _feature_std(features: Tensor) -> Tensor:
    """:func:`feature_std` as a tensor where the features are (no host sync); at least 2 rows."""
    sigma = dimension_std(features, dtype=torch.float32)
    return sigma.mean() * math.sqrt(sigma.shape[0])


class TrainingHealth(pl.Callback):
    """Warn (or stop, or raise) when the parameters blow up or the features collapse (module docstring).

    Args:
        every_n_steps: check every this many optimiser steps.
        max_param_norm_ratio: limit of ``||theta_t|| / ||theta_0||`` (None: not checked).
        min_feature_std: limit of ``std x sqrt(d)`` of the normalised training features (None: not
            checked); checked from ``min_step`` on (early training may be narrow).
        min_step: first optimiser step at which the feature spread is checked.
        action: ``"warn"``, ``"stop"`` or ``"raise"``.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        max_param_norm_ratio: Optional[float] = 100.0,
        min_feature_std: Optional[float] = COLLAPSE_STD,
        min_step: int = 100,
        action: Literal["warn", "stop", "raise"] = "warn",
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if action not in ("warn", "stop", "raise"):
            raise ValueError(f"action must be 'warn', 'stop' or 'raise', got {action!r}")
        self.every_n_steps = every_n_steps
        self.max_param_norm_ratio = max_param_norm_ratio
        self.min_feature_std = min_feature_std
        self.min_step = min_step
        self.action = action
        self._initial_norm: Optional[float] = None
        self._reported: set[str] = set()

    @staticmethod
    def parameter_norm(pl_module: pl.LightningModule) -> float:
        """L2 norm of all trainable parameters (float64 accumulation)."""
        norm = TrainingHealth._parameter_norm(pl_module)
        return float(norm) if norm is not None else 0.0

    @staticmethod
    def _parameter_norm(pl_module: pl.LightningModule) -> Optional[Tensor]:
        squares = [p.detach().double().pow(2).sum() for p in pl_module.parameters() if p.requires_grad]
        return torch.stack(squares).sum().sqrt() if squares else None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._initial_norm is None:
            self._initial_norm = self.parameter_norm(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps:
            return
        # both values logged as tensors and read on the host together: one host sync per check
        values: dict[str, Tensor] = {}
        if self.max_param_norm_ratio is not None and self._initial_norm:
            norm = self._parameter_norm(pl_module)
            if norm is not None:
                values["health/param_norm_ratio"] = norm / self._initial_norm
        features = outputs.get("features") if isinstance(outputs, dict) else None
        if self.min_feature_std is not None and isinstance(features, Tensor) and features.shape[0] > 1:
            values["health/feature_std"] = _feature_std(features)
        if not values:
            return
        for name, value in values.items():
            pl_module.log(name, value.float(), on_step=True, on_epoch=False)
        numbers = dict(zip(values, torch.stack([v.double() for v in values.values()]).tolist(), strict=True))
        ratio = numbers.get("health/param_norm_ratio")
        if ratio is not None and self.max_param_norm_ratio is not None:
            if not math.isfinite(ratio) or ratio > self.max_param_norm_ratio:
                self._report(
                    trainer, "divergence",
                    f"the parameter norm is {ratio:.3g}x its initial value at global step {step} (limit "
                    f"{self.max_param_norm_ratio:g}): the run is diverging; lower the learning rate",
                )
        spread = numbers.get("health/feature_std")
        if spread is not None and self.min_feature_std is not None:
            if step >= self.min_step and (not math.isfinite(spread) or spread < self.min_feature_std):
                self._report(
                    trainer, "collapse",
                    f"the normalised features have collapsed at global step {step}: std x sqrt(d) = "
                    f"{spread:.3g} (limit {self.min_feature_std:g}, about 1 when spread out)",
                )

    def _report(self, trainer: pl.Trainer, kind: str, message: str) -> None:
        if self.action == "raise":
            raise FloatingPointError(f"TrainingHealth: {message}")
        if kind not in self._reported:
            rank_zero_warn(f"TrainingHealth: {message}" + ("; stopping." if self.action == "stop" else "."))
            self._reported.add(kind)
        if self.action == "stop":
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"initial_norm": self._initial_norm}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial_norm = state_dict.get("initial_norm")
