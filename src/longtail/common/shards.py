"""Deterministic shards of an image list (``--shard i/N``), shared by ``propose``, ``edges`` and ``ucm``.

Shards are 1-based, as Snakemake's ``scattergather`` items (``{scatteritem}`` = ``i-of-N``): ``--shard 2/4`` and
``--shard 2-of-4`` are the same shard. The images are sorted by their key (image id, or file name for image
folders) and shard ``i`` takes every N-th image starting at the (i-1)-th (``sorted[i-1::N]``): interleaved, so
shards get images of every part of the list (balanced when cost drifts along the ids) and the union of the N
shards is the whole list, each image exactly once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from longtail.common.errors import LongtailError

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*(?:/|-of-)\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` or ``"i-of-N"`` (1 <= i <= N) -> (i, N); None -> (1, 1)."""
    if text is None:
        return 1, 1
    m = _SHARD.match(str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise LongtailError(f"--shard {text!r}: expected i/N (or i-of-N) with 1 <= i <= N, e.g. --shard 1/4")
    return int(m.group(1)), int(m.group(2))


def shard_name(shard: tuple[int, int]) -> str:
    """(i, N) -> ``i-of-N`` (Snakemake's scatteritem)."""
    return f"{shard[0]}-of-{shard[1]}"


def select_shard(items: Sequence[T], shard: tuple[int, int], key: Callable[[T], object]) -> list[T]:
    """The items of shard ``(i, N)``: ``sorted(items, key)[i-1::N]``."""
    i, n = shard
    return sorted(items, key=key)[i - 1::n]


def shards_present(folder: str | Path, suffix: str, num_shards: int | None, hint: str) -> int:
    """``num_shards``, else the one N of the ``<i>-of-<N><suffix>`` files in ``folder`` (error if none or several)."""
    if num_shards is not None:
        return num_shards
    folder = Path(folder)
    ns = {int(p.name[:-len(suffix)].split("-of-")[1]) for p in folder.glob(f"*-of-*{suffix}")} \
        if folder.is_dir() else set()
    if len(ns) != 1:
        raise LongtailError(f"{folder}: " + ("no finished shard" if not ns else f"shards of several N {sorted(ns)}")
                            + f"; {hint}, or pass --shards N.")
    return ns.pop()
