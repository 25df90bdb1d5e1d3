"""Run a function in several CPU processes joined by a gloo process group (DDP-equivalence tests)."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, worker: Callable, args: tuple, out: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = worker(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_in_processes(worker: Callable, *args: Any, world: int = 2) -> dict[int, Any]:
    """``{rank: worker(rank, world, *args)}`` from ``world`` spawned processes (``worker`` top-level)."""
    out = mp.Manager().dict()
    mp.spawn(_entry, args=(world, free_port(), worker, args, out), nprocs=world, join=True)
    return dict(out)
