"""Choosing the training precision for the machine at hand.

``bf16-mixed`` is the recipes' precision on a GPU, but on a CPU autocast to bfloat16 runs the convolutions
through slow paths: a short quickstart run took 217 s in ``bf16-mixed`` against 12.6 s in ``32-true`` on
a 2-core CPU.  :func:`auto_precision` picks the fast one for the device, and the ``mvssl`` command
falls back from a mixed precision to ``32-true`` (one warning) when the run ends up on the CPU, so the
same config runs at full speed on both.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["MIXED_PRECISIONS", "apply_cpu_precision", "auto_precision", "precision_for"]

#: precisions that autocast the networks to 16 bits
MIXED_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16", "16", "bf16-true", "16-true", 16)


def auto_precision() -> str:
    """``"bf16-mixed"`` on a GPU that supports bfloat16, ``"16-mixed"`` on an older GPU, else ``"32-true"``."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def precision_for(precision: object, accelerator: object) -> tuple[object, Optional[str]]:
    """``(precision to use, warning or None)``: a 16-bit precision on a run that will use the CPU
    (``accelerator`` ``"cpu"``, or ``"auto"`` without CUDA) becomes ``"32-true"``."""
    on_cpu = accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())
    if on_cpu and precision in MIXED_PRECISIONS:
        return "32-true", (
            f"precision {precision!r} on the CPU runs many times slower than 32-true (no fast 16-bit "
            f"kernels): using 32-true; set --trainer.accelerator gpu to train on a GPU"
        )
    return precision, None


def apply_cpu_precision(trainer_config: Any) -> None:
    """The CLIs' fallback: set a parsed ``trainer`` config's precision by :func:`precision_for`, with its warning."""
    precision, warning = precision_for(trainer_config.get("precision"), trainer_config.get("accelerator"))
    if warning is not None:
        rank_zero_warn(warning)
        trainer_config.precision = precision
