"""Which process of a training world this is, from the environment its launcher set (no torch import).

* ``torchrun --nproc_per_node N``: ``WORLD_SIZE`` = N, ``RANK``, ``LOCAL_RANK`` -> launcher ``pytorch``.
* ``srun -n N`` (N tasks, no torchrun): ``SLURM_NTASKS`` = N, ``SLURM_PROCID`` -> launcher ``slurm``.
* anything else (a plain command, also one SLURM task or ``torchrun --nproc_per_node 1``) -> ``none``.

Only rank 0 writes a stage's outputs, metrics files and MLflow runs (:func:`is_rank_zero`).
"""

from __future__ import annotations

import os
from typing import Mapping


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    try:
        return int(env.get(key, default))
    except (TypeError, ValueError):
        return default


def launcher_from_env(env: Mapping[str, str] | None = None) -> str:
    """mmengine launcher name of this process: ``pytorch`` | ``slurm`` | ``none``."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env and _int(env, "WORLD_SIZE", 1) > 1:
        return "pytorch"
    if "WORLD_SIZE" not in env and "SLURM_PROCID" in env and _int(env, "SLURM_NTASKS", 1) > 1:
        return "slurm"
    return "none"


def world_size_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return {"pytorch": _int(env, "WORLD_SIZE", 1), "slurm": _int(env, "SLURM_NTASKS", 1)}.get(
        launcher_from_env(env), 1)


def rank_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return {"pytorch": _int(env, "RANK", 0), "slurm": _int(env, "SLURM_PROCID", 0)}.get(launcher_from_env(env), 0)


def is_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    return rank_from_env(env) == 0
