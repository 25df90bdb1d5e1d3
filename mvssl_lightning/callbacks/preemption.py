"""``PreemptionCheckpoint``: a preempted run saves a resumable checkpoint and stops with a failure status.

On SIGTERM Lightning sets a flag and, at the next batch boundary, raises ``SIGTERMException``: a
``SystemExit`` whose status is 0, and nothing is saved, so a preempted job looks like a finished one.
This callback, in ``on_exception``, writes ``<checkpoint dir>/last.ckpt`` (the directory of the
run's ``ModelCheckpoint``, else ``<default_root_dir>/checkpoints``) and sets the exit status to
``128 + signal`` (143 for SIGTERM), so that ``mvssl fit ... --ckpt_path last`` continues the run and
schedulers see a failure.

SIGUSR1, the signal SLURM sends before the time limit (``#SBATCH --signal=USR1@120``), is handled
the same way, except under Lightning's SLURM environment with auto-requeue, which saves its own
``hpc_ckpt_*.ckpt``, requeues the job and resumes from it by itself.

SIGINT (Ctrl-C) during ``fit`` is handled the same way too (exit status 130), where Lightning would stop
inside the step, save nothing and exit with 1; a second Ctrl-C stops at once, without a checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

__all__ = ["PreemptionCheckpoint", "RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, except that ``fast_dev_run`` writes nothing.

    Lightning 2.6 skips checkpoints under ``fast_dev_run`` everywhere but in ``on_train_end``, where
    ``save_last=True`` still writes a full ``last.ckpt`` after the one-batch smoke run.
    """

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(trainer, "fast_dev_run", False):
            return
        super().on_train_end(trainer, pl_module)


class PreemptionCheckpoint(pl.Callback):
    """Save ``last.ckpt`` and exit with ``128 + signal`` when the run is stopped by SIGTERM / SIGUSR1 / SIGINT.

    Args:
        filename: checkpoint file name without ``.ckpt`` (``last``, what ``--ckpt_path last`` finds).
        handle_sigusr1: treat SIGUSR1 like SIGTERM (ignored under SLURM auto-requeue, see above).
        handle_sigint: treat the first Ctrl-C like SIGTERM (a second one stops at once).
    """

    def __init__(self, filename: str = "last", handle_sigusr1: bool = True, handle_sigint: bool = True) -> None:
        super().__init__()
        self.filename = filename
        self.handle_sigusr1 = handle_sigusr1
        self.handle_sigint = handle_sigint
        self._signal = signal.SIGTERM
        self._previous: dict[int, Any] = {}
        self.saved_path: Optional[Path] = None

    def _install(self, signum: int, handler: Any) -> None:
        try:
            self._previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: signals cannot be handled here
            pass

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # installed here, after Lightning registered its own handlers (it puts the pre-run ones back at the end)
        self._signal = signal.SIGTERM
        if self.handle_sigint:
            self._install(signal.SIGINT, self._on_sigint)
        if not self.handle_sigusr1 or not hasattr(signal, "SIGUSR1"):
            return
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return  # Lightning's SLURM handler saves, requeues and resumes
        self._install(signal.SIGUSR1, self._on_sigusr1)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def _on_sigusr1(self, signum: int, frame: Optional[FrameType]) -> None:
        # hand it to Lightning's SIGTERM machinery: it stops every process at the same batch boundary
        self._signal = signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        # the first Ctrl-C: save at the next batch boundary (as SIGTERM); the next one raises KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._signal = signal.SIGINT
        print("\nCtrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to stop at once, "
              "without one)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """``<ModelCheckpoint dirpath or default_root_dir/checkpoints>/<filename>.ckpt``."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        directory = Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"
        return directory / f"{self.filename}.ckpt"

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_path(trainer)
        if path.is_symlink():  # ModelCheckpoint(save_last="link"): replace the link, keep its target intact
            path.unlink()
        trainer.save_checkpoint(path)
        self.saved_path = path
        exception.code = 128 + int(self._signal)
        name = signal.Signals(self._signal).name
        rank_zero_info(
            f"{name} received at global step {trainer.global_step} (epoch {trainer.current_epoch}): saved a "
            f"resumable checkpoint to {path}; continue with the same command and --ckpt_path last "
            f"(or --ckpt_path {path}). Exit status {exception.code}."
        )
