"""Where a stage computes: torch CPU threads and the device. One place for every verb.

``select_device(requested, stage)`` turns a params value (``cpu``, ``cuda``, ``cuda:1``, ``auto``) into a
``torch.device``; a CUDA request on a machine without a visible GPU falls back to the CPU with a logged warning
(a params file written for a GPU cluster still runs on a laptop). ``set_threads(n)`` sets torch's intra-op
threads from a params value, or from ``$OMP_NUM_THREADS`` when the value is 0 / unset.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def select_device(requested: str | None, stage: str):
    """``torch.device`` for ``requested`` (``auto`` = CUDA when visible, else CPU; None = CPU)."""
    import torch

    req = str(requested or "cpu")
    if req == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if req.startswith("cuda") and not torch.cuda.is_available():
        log.warning("%s: device %s requested but no CUDA device is visible; using the CPU", stage, req)
        return torch.device("cpu")
    return torch.device(req)


def gpu_device(gpus: int | None, stage: str):
    """Device for a ``gpu: <count>`` params key (0 = CPU; >= 1 = the first visible GPU, CPU when none)."""
    return select_device("cuda" if gpus else "cpu", stage)


def set_threads(n: int | None = None) -> None:
    """torch CPU threads: ``n`` when > 0, else ``$OMP_NUM_THREADS`` when set, else torch's default."""
    import torch

    n = int(n or 0) or int(os.environ.get("OMP_NUM_THREADS") or 0)
    if n > 0:
        torch.set_num_threads(n)
