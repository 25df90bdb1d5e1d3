"""Wall-clock per training epoch and peak memory, for the learning-quality benchmark.

:class:`EpochTimer` times each training epoch from ``on_train_epoch_start`` to the end of its last
training batch's hooks (so it includes data loading, the optimiser step and the online probe's update,
and excludes validation), synchronising CUDA at both ends; validation epochs are timed separately.

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` since :func:`reset_peak_memory`; on a CPU
the peak resident set size of this process (``VmHWM``, reset through ``/proc/self/clear_refs`` where
Linux allows it after handing freed heap back with glibc's ``malloc_trim``, else ``resource.getrusage``'s
lifetime high-water mark); it includes what the process already holds (the dataset arrays, the
libraries, memory the allocator keeps), not data-loader worker processes.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


def _sync(pl_module: pl.LightningModule) -> None:
    if pl_module.device.type == "cuda":
        torch.cuda.synchronize(pl_module.device)


class EpochTimer(pl.Callback):
    """Seconds per training epoch (``train_epoch_s``) and per validation epoch (``val_epoch_s``)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_epoch_s: list[float] = []
        self.val_epoch_s: list[float] = []
        self._train_start = self._val_start = None
        self._last_batch_end = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        self._train_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        _sync(pl_module)
        self._last_batch_end = time.perf_counter()

    def _close_train_epoch(self) -> None:
        if self._train_start is not None:
            self.train_epoch_s.append(self._last_batch_end - self._train_start)
            self._train_start = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_train_epoch()  # validation runs inside the training epoch in Lightning 2
        _sync(pl_module)
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module)
        if self._val_start is not None and not trainer.sanity_checking:
            self.val_epoch_s.append(time.perf_counter() - self._val_start)
        self._val_start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_train_epoch()


_hwm_was_reset = False


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on ``device``."""
    global _hwm_was_reset
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    gc.collect()
    try:  # hand freed heap back to the OS first, so the window starts near the live size (glibc)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        _hwm_was_reset = True
    except OSError:
        _hwm_was_reset = False


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """``(GiB, what was measured)`` since the last :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                since = "since reset" if _hwm_was_reset else "lifetime"
                return int(line.split()[1]) / 2**20, f"peak RSS of the main process (VmHWM, {since})"
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 2**30 if sys.platform == "darwin" else 2**20
    return maxrss / scale, "lifetime peak RSS of the process (getrusage)"
