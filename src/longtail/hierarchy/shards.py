"""Shards of ``longtail edges`` / ``longtail ucm`` (``--shard i/N``, :mod:`longtail.common.shards`: items sorted by
key, every N-th from the (i-1)-th).

Those stages write one ``<key>.npz`` per image (each file atomic), which readers find by name, so a shard writes
its images straight into the stage's folder and then ``<out>/shards/<i>-of-<N>.json`` (its index: metadata +
the images' entries), which marks it finished: a finished shard is not recomputed, an unfinished one reruns
whole. :func:`gather` (``longtail gather-hierarchy``) writes ``<out>/index.json`` from the N shard indexes.
Without ``--shard`` the stages write the whole folder atomically, as before.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_dir, read_json, write_json
from longtail.common.shards import shard_name, shards_present

INDEX_FILE = "index.json"


def shard_index(out: str | Path, shard: tuple[int, int]) -> Path:
    return Path(out) / "shards" / f"{shard_name(shard)}.json"


def finished(out: str | Path, shard: tuple[int, int] | None) -> bool:
    return shard is not None and shard_index(out, shard).exists()


@contextlib.contextmanager
def output_folder(out: str | Path, shard: tuple[int, int] | None) -> Iterator[tuple[Path, Path]]:
    """(folder to write the images' files into, path of the index to write last): the temporary folder that
    replaces ``out`` and its ``index.json`` (whole set), or ``out`` itself and the shard's index."""
    if shard is None:
        with atomic_dir(out) as tmp:
            yield tmp, tmp / INDEX_FILE
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / INDEX_FILE).unlink(missing_ok=True)       # complete again once gathered
        yield Path(out), shard_index(out, shard)


def gather(out: str | Path, num_shards: int | None = None) -> dict:
    """``<out>/index.json`` from the N shard indexes (N: ``num_shards``, else the one N present)."""
    out = Path(out)
    sdir = out / "shards"
    num_shards = shards_present(sdir, ".json", num_shards, "run every --shard i/N of the stage")
    parts = []
    for i in range(1, num_shards + 1):
        p = shard_index(out, (i, num_shards))
        if not p.exists():
            raise LongtailError(f"{p}: shard {i} of {num_shards} missing (not run or not finished); rerun the stage "
                                f"with --out-dir {out} --shard {i}/{num_shards}.")
        parts.append(read_json(p, "shard index"))
    images = sorted((r for part in parts for r in part["images"]), key=lambda r: r["key"])
    for r in images:
        if not (out / (r.get("tree") or r["edges"])).exists():
            raise LongtailError(f"{out / (r.get('tree') or r['edges'])}: listed by a shard index but missing; "
                                f"delete {out / 'shards'} and rerun the shards.")
    index = {**{k: v for k, v in parts[0].items() if k != "images"}, "num_shards": num_shards, "images": images}
    write_json(out / INDEX_FILE, index)
    return index
