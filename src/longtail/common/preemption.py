"""Training loops under SLURM and torchrun: the pre-timeout signal, the DDP world, DataLoader workers.

* :class:`StopSignals`: SIGUSR1 / SIGTERM (SLURM's ``--signal`` warning, a preemption) set a flag that the
  training checks after each step; it then saves its checkpoint and raises :class:`Preempted` (the CLI exits
  with status 2; rerunning the same command resumes from the checkpoint).
* :func:`init_distributed`: the process group of a torchrun world (gloo on the CPU, nccl with one GPU per local
  rank); :func:`world`: (rank, world size) of the current process group.
* :func:`worker_init`: DataLoader workers use one torch thread and leave the signals to the main process.

Used by ``train-embedding`` and ``train-pixel-embedding`` (mmengine trainings have their own hook:
:mod:`longtail.proposals.runner`).
"""

from __future__ import annotations

import os
import signal
import threading

from longtail.common.errors import LongtailError

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class Preempted(LongtailError):
    """SIGUSR1 / SIGTERM arrived during training; the checkpoint of the current step was saved."""


class StopSignals:
    """SIGUSR1 / SIGTERM set ``received`` (checked after each step) instead of killing the process."""

    SIGNALS = SIGNALS

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def preempt(self, what: str, step: int, total: int, checkpoint, world_size: int = 1):
        """Stop after the checkpoint of ``step`` was saved (by rank 0): every rank waits until it is on disk, then
        raises :class:`Preempted` (``received`` None = the signal arrived at another rank)."""
        if world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        raise Preempted(f"{what}: stopped by {name} after step {step}/{total}; the checkpoint {checkpoint} was "
                        f"saved - rerun the same command to resume from it.")


def init_distributed(device):
    """(rank, world size, device) for a process that would run on ``device`` (a ``torch.device``). Under
    torchrun (WORLD_SIZE > 1) the process group is started: nccl with the GPU of the local rank when ``device``
    is a GPU, else gloo on the CPU. Without torchrun: rank 0 of 1 on ``device``."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def worker_init(_=None) -> None:
    """DataLoader workers: one torch thread; SIGUSR1 / SIGTERM are the main process's (it checkpoints, then
    ends the workers)."""
    import torch

    torch.set_num_threads(1)
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
