"""Wall-clock and peak memory of a training run, shared by the throughput and learning-quality benchmarks.

:class:`TrainingTimer` is a Lightning callback that records, with **no synchronisation per step**:

* ``train_epoch_s``: each training epoch, from ``on_train_epoch_start`` to the end of its last training
  batch's hooks (so data loading, the optimiser step and the online probe's update count; validation does
  not); ``val_epoch_s``: each validation epoch (not the sanity check);
* with ``warmup_steps``: the steady state after that many training batches (``timed_steps``,
  ``timed_images``, ``images_per_s``), with a fresh peak-memory window (:func:`reset_peak_memory`) from its
  first batch on.

On CUDA every mark is a ``torch.cuda.Event(enable_timing=True)`` recorded on the current stream: the time
between two marks is the device timeline between the points where the stream reached them (idle gaps
waiting for data included), read once at the end (``elapsed_time`` after the last event's
``synchronize``). A ``torch.cuda.synchronize`` per step would drain the queue the CPU keeps ahead of the
GPU and time a slower loop than training runs. On other devices marks are ``time.perf_counter()``.

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` since :func:`reset_peak_memory`; on a CPU the
peak resident set size of this process (``VmHWM``, reset through ``/proc/self/clear_refs`` where Linux
allows it after handing freed heap back with glibc's ``malloc_trim``, else ``resource.getrusage``'s
lifetime high-water mark); it includes what the process already holds (the dataset arrays, the libraries,
memory the allocator keeps), not data-loader worker processes.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import lightning.pytorch as pl
import torch

__all__ = ["Clock", "TrainingTimer", "peak_memory_gib", "reset_peak_memory", "synchronize"]

Mark = Union[float, "torch.cuda.Event"]


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA only; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Marks on ``device``'s timeline: CUDA events on its current stream (no host wait), else ``perf_counter``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"

    def mark(self) -> Mark:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def seconds(start: Mark, end: Mark) -> float:
        """Seconds from ``start`` to ``end`` (waits for ``end`` on CUDA)."""
        if isinstance(start, float) and isinstance(end, float):
            return end - start
        assert not isinstance(start, float) and not isinstance(end, float)
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


def _num_images(batch: Any) -> int:
    """Samples in a ``(views, targets)`` batch."""
    targets = batch[-1] if isinstance(batch, (list, tuple)) else None
    return len(targets) if targets is not None else 0


class TrainingTimer(pl.Callback):
    """Seconds per training / validation epoch and, after ``warmup_steps`` batches, steady-state images/s."""

    def __init__(self, warmup_steps: Optional[int] = None) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.timed_steps = 0
        self.timed_images = 0
        self._batches = 0
        self._clock: Optional[Clock] = None
        self._train_epochs: list[tuple[Mark, Mark]] = []
        self._val_epochs: list[tuple[Mark, Mark]] = []
        self._train_start: Optional[Mark] = None
        self._val_start: Optional[Mark] = None
        self._last_batch_end: Optional[Mark] = None
        self._steady_start: Optional[Mark] = None
        self._steady_end: Optional[Mark] = None

    @property
    def train_epoch_s(self) -> list[float]:
        """Seconds of each finished training epoch."""
        return [Clock.seconds(a, b) for a, b in self._train_epochs]

    @property
    def val_epoch_s(self) -> list[float]:
        """Seconds of each validation epoch (not the sanity check)."""
        return [Clock.seconds(a, b) for a, b in self._val_epochs]

    @property
    def timed_s(self) -> float:
        """Seconds of the steady state (the batches after ``warmup_steps``)."""
        if self._steady_start is None or self._steady_end is None:
            return float("nan")
        return Clock.seconds(self._steady_start, self._steady_end)

    @property
    def images_per_s(self) -> float:
        """Samples per second of the steady state."""
        return self.timed_images / self.timed_s if self.timed_steps else float("nan")

    def _mark(self, pl_module: pl.LightningModule) -> Mark:
        if self._clock is None:
            self._clock = Clock(pl_module.device)
        return self._clock.mark()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = self._last_batch_end = self._mark(pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.warmup_steps is not None and self._batches == self.warmup_steps:
            reset_peak_memory(pl_module.device)
            self._steady_start = self._mark(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._last_batch_end = self._mark(pl_module)
        if self.warmup_steps is not None and self._batches >= self.warmup_steps:
            self._steady_end = self._last_batch_end
            self.timed_steps += 1
            self.timed_images += _num_images(batch)
        self._batches += 1

    def _close_train_epoch(self) -> None:
        if self._train_start is not None and self._last_batch_end is not None:
            self._train_epochs.append((self._train_start, self._last_batch_end))
            self._train_start = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_train_epoch()  # validation runs inside the training epoch in Lightning 2
        self._val_start = self._mark(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_start is not None and not trainer.sanity_checking:
            self._val_epochs.append((self._val_start, self._mark(pl_module)))
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
