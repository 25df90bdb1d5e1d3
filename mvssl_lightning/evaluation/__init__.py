"""Evaluate a pre-trained backbone the way the papers do: linear evaluation, fine-tuning and kNN.

- :class:`LinearEval`: a linear classifier on the frozen backbone of any pre-training checkpoint (or a
  torchvision ResNet ``state_dict``, or a random backbone), with the optimisers and schedules of the
  papers' protocols and an in-memory cached-features fast path;
- :class:`FineTune`: the same with the backbone trained too (semi-supervised 1 % / 10 % protocol);
- :class:`KNNEval`: weighted kNN accuracy (:class:`~mvssl_lightning.callbacks.OnlineKNN`'s computation);
- :class:`LabeledDataModule`: ``(image, label)`` batches with the protocols' transforms and label subsets;
- :func:`load_backbone`, and the
  ``mvssl-eval`` command (:mod:`mvssl_lightning.evaluation.cli`) with one config per paper protocol in
  ``configs/eval/``.
"""

from mvssl_lightning.evaluation.checkpoint import BackboneSource, load_backbone, sha256_file
from mvssl_lightning.evaluation.data import (
    FirstView,
    LabeledDataModule,
    balanced_label_subset,
    dataset_targets,
    read_label_list,
)
from mvssl_lightning.evaluation.features import EpochShuffle, FeatureLoader
from mvssl_lightning.evaluation.modules import EvalModule, FineTune, KNNEval, LinearEval
from mvssl_lightning.evaluation.results import EvalResultsWriter

__all__ = [
    "BackboneSource",
    "EpochShuffle",
    "EvalModule",
    "EvalResultsWriter",
    "FeatureLoader",
    "FineTune",
    "FirstView",
    "KNNEval",
    "LabeledDataModule",
    "LinearEval",
    "balanced_label_subset",
    "dataset_targets",
    "load_backbone",
    "read_label_list",
    "sha256_file",
]
