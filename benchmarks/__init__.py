"""Benchmarks of mvssl_lightning, run from the repository root as modules:

    python -m benchmarks.throughput   # training-step throughput vs the bare backbone and lightly-built peers
    python -m benchmarks.pipeline     # images/s of the view pipeline, CPU path vs gpu_views
    python -m benchmarks.quality      # learning quality vs lightly-built baselines, same budget

Shared by them: :mod:`benchmarks.lightly_models` (SimCLR, BYOL, Barlow Twins from lightly's heads and
losses, and the bare-backbone bound) and :mod:`benchmarks.timing` (wall-clock and peak memory of a
training run). Results land in ``benchmarks/results/``; see ``benchmarks/README.md``.
"""
