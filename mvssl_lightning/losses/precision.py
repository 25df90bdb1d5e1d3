"""The one precision rule of the objectives: compute in at least float32.

Under bf16/fp16 autocast the networks run in half precision, but entropy estimators,
log-determinants, matrix solves and softmax normalisers must not; float64 (``precision="64-true"``,
the gradient tests) must stay float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` as float32 if it is a half type (fp16 / bf16), else unchanged (float32 / float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
