"""Batched, per-sample-random view augmentation on any device (the ``gpu_views`` path)."""
