"""Output folders of ``longtail edges`` / ``longtail ucm``, whole or one shard at a time (``--shard i/N``,
:mod:`longtail.common.shards`: items sorted by key, every N-th from the (i-1)-th).

Layout of a stage folder ``<out>/`` (readers go through ``index.json``, whose entries name each image's file
relative to ``<out>``)::

    <out>/index.json                    {"images": [{"key", "image", "image_id", "height", "width",
                                          "edges" | "tree", "digest", ...}], "num_shards", "shards", ...}
    <out>/<key>.npz                     unsharded run (the whole folder written atomically)
    <out>/shards/<i>-of-<N>/<key>.npz   sharded run: one folder per shard, with its own index.json (the shard's
                                        images, metadata and metrics)

A shard is complete or absent: it is written into ``shards/.<i>-of-<N>.part/`` (each image's file atomic, its
index entry appended to ``entries.jsonl`` once the file is there) and renamed to ``shards/<i>-of-<N>/`` at the
end. A finished shard is not recomputed; a killed one resumes from its finished images when its fingerprint
(the stage's parameters and input) is unchanged, else starts over. :func:`gather` (``longtail gather-hierarchy``)
writes ``<out>/index.json`` from the N shard indexes and the stage's metrics (summed / image-weighted over the
shards). Each entry's ``digest`` hashes the arrays of its file, so ``index.json`` changes whenever a tree or edge
map does (DVC stages depend on the index alone).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_dir, read_json, write_json
from longtail.common.shards import shard_name

INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
_ENTRIES = "entries.jsonl"
_FINGERPRINT = "fingerprint.json"
_SHARD_RE = re.compile(r"^(\d+)-of-(\d+)$")


def hierarchy_dir(path: str | Path) -> Path:
    """The stage folder of ``path`` (the folder itself or its ``index.json``, as Snakemake rules pass it)."""
    path = Path(path)
    return path.parent if path.name == INDEX_FILE else path


def shard_dir(out: str | Path, shard: tuple[int, int]) -> Path:
    return Path(out) / SHARDS_DIR / shard_name(shard)


def finished(out: str | Path, shard: tuple[int, int] | None) -> bool:
    """A finished shard (its folder with its index.json): never recomputed."""
    return shard is not None and (shard_dir(out, shard) / INDEX_FILE).exists()


def array_digest(path: str | Path) -> str:
    """sha1 of the arrays (names, dtypes, shapes, bytes) of an ``.npz``: the same for the same content (the zip
    bytes carry timestamps)."""
    h = hashlib.sha1()
    with np.load(path) as z:
        for k in sorted(z.files):
            a = np.ascontiguousarray(z[k])
            h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class StageOutput:
    """Where ``edges`` / ``ucm`` write their per-image files: the whole folder (``shard`` None, atomic) or one
    shard's folder (resumable). Use as a context manager; :meth:`file` is the path to write an image's ``.npz``
    (atomically), :meth:`add` records its index entry once written, :meth:`finish` writes the index."""

    def __init__(self, out: str | Path, shard: tuple[int, int] | None, fingerprint: str, column: str):
        self.out, self.shard, self.fingerprint, self.column = Path(out), shard, fingerprint, column
        self.entries: dict[str, dict] = {}          # key -> entry, including those of a resumed run
        self.resumed = 0
        self._ctx = self._fh = None

    # -- context ---------------------------------------------------------------------------------------------
    def __enter__(self) -> "StageOutput":
        if self.shard is None:
            self._ctx = atomic_dir(self.out)
            self.dir = self._ctx.__enter__()
            self.prefix = ""
        else:
            sdir = self.out / SHARDS_DIR
            sdir.mkdir(parents=True, exist_ok=True)
            (self.out / INDEX_FILE).unlink(missing_ok=True)            # complete again once gathered
            for p in sdir.iterdir():                                     # resharded: shards of another N go
                m = _SHARD_RE.match(p.name.lstrip(".").removesuffix(".part"))
                if m and int(m.group(2)) != self.shard[1]:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            name = shard_name(self.shard)
            self.dir = sdir / f".{name}.part"
            self.prefix = f"{SHARDS_DIR}/{name}/"
            self._resume()
            self._fh = open(self.dir / _ENTRIES, "a")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._ctx is not None:
            self._ctx.__exit__(exc_type, exc, tb)

    def _resume(self) -> None:
        fp = self.dir / _FINGERPRINT
        if self.dir.exists():
            same = fp.exists() and read_json(fp, "shard fingerprint").get("fingerprint") == self.fingerprint
            if not same:
                shutil.rmtree(self.dir)
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            write_json(fp, {"fingerprint": self.fingerprint})
            return
        ent = self.dir / _ENTRIES
        for line in (ent.read_bytes().splitlines(keepends=True) if ent.exists() else []):
            if not line.endswith(b"\n"):
                break                                                    # cut by the kill: that image reruns
            e = json.loads(line)
            if (self.dir / Path(e[self.column]).name).exists():
                self.entries[e["key"]] = e
        self.resumed = len(self.entries)
        with open(ent, "w") as f:                                        # only complete entries stay
            f.writelines(json.dumps(e) + "\n" for e in self.entries.values())

    # -- writing ---------------------------------------------------------------------------------------------
    def file(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def add(self, entry: dict) -> None:
        """Record an image whose file (:meth:`file` of its key) is written."""
        key = entry["key"]
        entry = {**entry, self.column: f"{self.prefix}{key}.npz", "digest": array_digest(self.file(key))}
        self.entries[key] = entry
        if self._fh is not None:
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()

    def finish(self, meta: dict, metrics: dict) -> dict:
        """Write the index (the whole folder's, or the shard's with its metrics) and, for a shard, rename its
        folder into place."""
        images = sorted(self.entries.values(), key=lambda r: r["key"])
        index = {**meta, "images": images, "metrics": metrics}
        if self.shard is None:
            write_json(self.dir / INDEX_FILE, {**index, "num_shards": 1})
            return index
        self._fh.close()
        self._fh = None
        (self.dir / _ENTRIES).unlink()
        (self.dir / _FINGERPRINT).unlink()
        write_json(self.dir / INDEX_FILE, {**index, "shard": shard_name(self.shard)})
        final = shard_dir(self.out, self.shard)
        if final.exists():
            shutil.rmtree(final)
        self.dir.rename(final)
        return index


def _num_shards(out: Path, num_shards: int | None) -> int:
    if num_shards is not None:
        return num_shards
    sdir = out / SHARDS_DIR
    ns = {int(m.group(2)) for p in (sdir.iterdir() if sdir.is_dir() else []) if (m := _SHARD_RE.match(p.name))}
    if len(ns) != 1:
        raise LongtailError(f"{sdir}: " + ("no finished shard" if not ns else f"shards of several N {sorted(ns)}")
                            + "; run every --shard i/N of the stage, or pass --shards N.")
    return ns.pop()


def combine_metrics(parts: list[dict]) -> dict:
    """The stage's metrics from its shards': ``n_images`` summed, every other number averaged over images."""
    n = sum(int(p.get("n_images", 0)) for p in parts)
    out = {"n_images": n, "num_shards": len(parts)}
    for k in sorted({k for p in parts for k in p} - {"n_images"}):
        out[k] = float(sum(p[k] * p["n_images"] for p in parts if k in p) / max(n, 1))
    return out


def gather(out: str | Path, num_shards: int | None = None) -> dict:
    """``<out>/index.json`` from the N shard indexes (N: ``num_shards``, else the one N present); errors name a
    missing shard and a file its index lists but that is gone. The index's ``metrics`` combine the shards'."""
    out = hierarchy_dir(out)
    num_shards = _num_shards(out, num_shards)
    parts = []
    for i in range(1, num_shards + 1):
        p = shard_dir(out, (i, num_shards)) / INDEX_FILE
        if not p.exists():
            raise LongtailError(f"{p}: shard {i} of {num_shards} missing (not run or not finished); rerun the stage "
                                f"with --out-dir {out} --shard {i}/{num_shards}.")
        parts.append(read_json(p, "shard index"))
    images = sorted((r for part in parts for r in part["images"]), key=lambda r: r["key"])
    dup = [a["key"] for a, b in zip(images, images[1:]) if a["key"] == b["key"]]
    if dup:
        raise LongtailError(f"{out}: image {dup[0]} is in two shards; delete {out / SHARDS_DIR} and rerun with one N.")
    for r in images:
        f = out / (r.get("tree") or r["edges"])
        if not f.exists():
            raise LongtailError(f"{f}: listed by a shard index but missing; delete {f.parent} and rerun its shard.")
    meta = {k: v for k, v in parts[0].items() if k not in ("images", "metrics", "shard")}
    index = {**meta, "num_shards": num_shards, "shards": [f"{SHARDS_DIR}/{shard_name((i, num_shards))}"
                                                         for i in range(1, num_shards + 1)],
             "metrics": combine_metrics([p.get("metrics", {}) for p in parts]), "images": images}
    write_json(out / INDEX_FILE, index)
    return index
