"""AMDIM's evaluation classifiers: the MLP classifier trained beside the linear one, and their loss.

The official classifier retraining (``Philip-Bachman/amdim-public``, ``model.py`` ``Evaluator`` l.137-166) trains
two classifiers on the same detached feature ``r1`` (flattened): a linear one (``MLPClassifier(n_hidden=None,
p=0)``: Dropout(0), Linear) and an MLP (``MLPClassifier(n_hidden=1024, p=0.2)``, l.350-377)::

    MLP(f) = W2 Dropout_0.2(ReLU(BN(W1 Dropout_0.2(f)))) + b2        W1: no bias; BN: BatchNorm1d(1024), affine

both initialised by ``utils.py`` ``weight_init`` (PyTorch 0.4.1 defaults, ``init_pytorch_defaults`` l.82-107):
Linear weight and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, BatchNorm weight ``U(0, 1)``, bias 0. Each is
trained with ``costs.py`` ``loss_xent`` (l.18-25), a cross-entropy on soft-clipped logits plus a logit penalty::

    L(l, y) = CE(10 tanh(l / 10), y) + 0.001 mean(l^2)                  (mean over batch and classes)

and the optimised loss is the sum of the two classifiers' (``task_classifiers.py`` l.43-44). The parameters are
disjoint and Adam's update is per parameter, so the linear classifier trains exactly as it would alone.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassifierLoss", "amdim_mlp_classifier", "amdim_xent", "classifier_loss"]

#: ``cross_entropy``: ``F.cross_entropy`` (every protocol but AMDIM's); ``amdim_xent``: :func:`amdim_xent`.
ClassifierLoss = Literal["cross_entropy", "amdim_xent"]


def amdim_xent(logits: Tensor, labels: Tensor, clip: float = 10.0, penalty: float = 1e-3) -> Tensor:
    """``CE(clip * tanh(logits / clip), labels) + penalty * mean(logits^2)`` (amdim-public ``costs.py`` ``loss_xent``;
    labels ``-1`` are ignored by the cross-entropy)."""
    clipped = clip * torch.tanh(logits / clip)
    return F.cross_entropy(clipped, labels, ignore_index=-1) + penalty * logits.pow(2).mean()


def classifier_loss(kind: ClassifierLoss, logits: Tensor, labels: Tensor) -> Tensor:
    """The training loss ``kind`` of one classifier's logits."""
    if kind == "amdim_xent":
        return amdim_xent(logits, labels)
    return F.cross_entropy(logits, labels)


def _init_pt041(module: nn.Module) -> None:
    """PyTorch 0.4.1's default init, as amdim-public ``weight_init`` applies it to the classifiers."""
    if isinstance(module, nn.Linear):
        bound = 1.0 / math.sqrt(module.weight.shape[1])
        nn.init.uniform_(module.weight, -bound, bound)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -bound, bound)
    elif isinstance(module, nn.BatchNorm1d) and module.affine:
        nn.init.uniform_(module.weight, 0.0, 1.0)
        nn.init.zeros_(module.bias)


def amdim_mlp_classifier(n_input: int, n_classes: int, n_hidden: int = 1024, dropout: float = 0.2) -> nn.Sequential:
    """AMDIM's MLP classifier (module docstring), initialised as the official ``weight_init``."""
    if min(n_input, n_classes, n_hidden) < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"need positive sizes and 0 <= dropout < 1, got {n_input}, {n_classes}, {n_hidden}, {dropout}")
    mlp = nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(n_input, n_hidden, bias=False),
        nn.BatchNorm1d(n_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(n_hidden, n_classes, bias=True),
    )
    mlp.apply(_init_pt041)
    return mlp
