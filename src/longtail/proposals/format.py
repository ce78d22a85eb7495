"""The proposal store every proposal method writes and every downstream stage reads, per image.

A proposal set is a folder ``<set>/`` (e.g. ``results/proposals/<method>/<split>/``):

``<set>/shards/<i>-of-<N>.jsonl``  one JSON line per image of shard i of N (``longtail.common.shards``: the
                                  image ids sorted, shard i = every N-th from the (i-1)-th), in ascending id:
    {"image_id": 7, "proposals": [record, ...]}        record = COCO result
    {"image_id", "category_id": 1, "bbox": [x, y, w, h], "segmentation": RLE (counts as str), "score", ...}
                                  by descending score; images without a proposal have an empty list.
``<set>/shards/<i>-of-<N>.json``   that shard's metadata (method, dataset, topk, nms_iou, ...) and image table
                                  with each line's byte ``offset`` and ``length``.
``<set>/index.json``               written by :func:`gather` once every shard is there: {"method", "dataset",
                                  "topk", "nms_iou", "num_proposals", "num_shards", "shards": [...],
                                  "images": [{"id", "file_name", "height", "width", "num_proposals",
                                  "shard", "offset", "length"}] (ascending id), "images_skipped", ...}.

A shard is complete or absent: :class:`ProposalWriter` appends to ``<i>-of-<N>.jsonl.part`` (one line per image,
flushed), writes the shard's ``.json`` and then renames the ``.part``; a killed job leaves only the ``.part``,
from whose last complete line the next run of that shard resumes (when the method's parameters are unchanged:
``.part.json``). ``index.json`` (atomic) marks the set complete. Readers seek to an image's line:
:class:`ProposalReader` (random access by image id; 28 bytes an image of index memory),
:func:`read_image_proposals`, :func:`iter_proposals` (memory: one image); :func:`read_proposals` (every record in a
list: small sets, pycocotools) is built on them. Mask encoding and decoding: :mod:`longtail.common.masks`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError
from longtail.common.io import read_json, write_json
from longtail.common.masks import encode_mask, rle_for_pycocotools
from longtail.common.shards import shard_name, shards_present

INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
#: what a set's metadata must agree on across shards (and a resumed .part with its run)
SET_KEYS = ("method", "dataset", "topk", "nms_iou")


def mask_iou_matrix(a: Sequence[dict], b: Sequence[dict]) -> np.ndarray:
    """Mask IoU between two lists of RLEs (pycocotools)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = [rle_for_pycocotools(r) for r in a], [rle_for_pycocotools(r) for r in b]
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)))


def mask_nms(rles: Sequence[dict], scores: Sequence[float], iou_thr: float, topk: int | None = None) -> list[int]:
    """Greedy mask NMS: indices kept, by descending score, at most ``topk``."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    if len(order) == 0:
        return []
    iou = mask_iou_matrix([rles[i] for i in order], [rles[i] for i in order])
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for pos in range(len(order)):
        if suppressed[pos]:
            continue
        keep.append(int(order[pos]))
        if topk is not None and len(keep) >= topk:
            break
        suppressed |= iou[pos] > iou_thr
    return keep


def make_record(image_id: int, mask: np.ndarray | dict, score: float, **extra) -> dict:
    rle = mask if isinstance(mask, dict) else encode_mask(mask)
    bbox = mask_utils.toBbox(rle_for_pycocotools(rle)).tolist()
    return {"image_id": int(image_id), "category_id": 1, "bbox": [float(v) for v in bbox],
            "segmentation": rle, "score": float(score), **extra}



# --- the per-image proposal store ---------------------------------------------------------------------------

def proposal_set_dir(path: str | Path) -> Path:
    """The set folder of ``path`` (the folder itself or its ``index.json``, as Snakemake rules pass it)."""
    path = Path(path)
    return path.parent if path.name == INDEX_FILE else path


def shard_path(set_dir: str | Path, shard: tuple[int, int]) -> Path:
    """``<set>/shards/<i>-of-<N>.jsonl``."""
    return proposal_set_dir(set_dir) / SHARDS_DIR / f"{shard_name(shard)}.jsonl"


def _meta_path(jsonl: Path) -> Path:
    return jsonl.with_suffix(".json")


def _image_entry(im: dict) -> dict:
    return {"id": int(im["id"]), "file_name": im["file_name"], "height": int(im["height"]),
            "width": int(im["width"])}


def _parse_line(line: bytes, path: Path, lineno: int, image_id: int | None = None) -> dict:
    """One image's line of a shard file, checked; a truncated or foreign line names the file and line."""
    hint = "delete it and rerun the shard (`longtail propose ... --shard`)"
    if not line.endswith(b"\n"):
        raise LongtailError(f"{path}: truncated at line {lineno} (a killed or interrupted copy?); {hint}.")
    try:
        obj = json.loads(line)
    except ValueError:
        raise LongtailError(f"{path}: line {lineno} is not JSON (truncated or corrupted); {hint}.") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("proposals"), list) or "image_id" not in obj:
        raise LongtailError(f"{path}: line {lineno} is not {{'image_id', 'proposals': [...]}}; {hint}.")
    if image_id is not None and int(obj["image_id"]) != int(image_id):
        raise LongtailError(f"{path}: line {lineno} holds image {obj['image_id']}, the index says {image_id}: the "
                            f"shard and {INDEX_FILE} disagree; {hint} and `longtail gather-proposals`.")
    return obj


class ProposalWriter:
    """Appends one image's proposals at a time to shard ``(i, N)`` of a set; :meth:`finish` commits the shard.

    ``meta``: method, dataset, topk, nms_iou and anything else the set's index should carry. If a ``.part`` of
    the same shard exists from a killed run with the same ``meta``, its complete lines are kept (``done``: their
    image ids) and writing resumes after them; otherwise it starts afresh. Use as a context manager or call
    :meth:`close` (an unfinished shard stays a ``.part``: never mistaken for a complete one).
    """

    def __init__(self, set_dir: str | Path, shard: tuple[int, int], *, resume: bool = True, **meta):
        missing = [k for k in SET_KEYS if k not in meta]
        if missing:
            raise LongtailError(f"ProposalWriter: metadata {missing} missing")
        self.shard = shard
        self.path = shard_path(set_dir, shard)
        self.part = self.path.with_name(self.path.name + ".part")
        self.part_meta = self.part.with_name(self.part.name + ".json")
        self.meta = {k: (str(v) if k == "dataset" else v) for k, v in meta.items()}
        self.images: list[dict] = []
        self.skipped: list[int] = []
        self.num_proposals = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        offset = self._resume() if resume else self._start()
        self._f = open(self.part, "r+b" if offset else "wb")
        self._f.truncate(offset)
        self._f.seek(offset)
        self._offset = offset

    @property
    def done(self) -> set[int]:
        """Image ids already written (resumed or added)."""
        return {im["id"] for im in self.images}

    def _start(self) -> int:
        write_json(self.part_meta, self.meta)
        return 0

    def _resume(self) -> int:
        """Keep the complete lines of a ``.part`` written with the same metadata; the byte offset to go on at."""
        if not (self.part.exists() and self.part_meta.exists()):
            return self._start()
        try:
            same = json.loads(self.part_meta.read_text()) == json.loads(json.dumps(self.meta))
        except ValueError:
            same = False
        if not same:
            return self._start()
        offset = 0
        with open(self.part, "rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    obj = _parse_line(line, self.part, lineno)
                    entry = {**obj["image"], "num_proposals": len(obj["proposals"])}
                except (LongtailError, KeyError, TypeError):
                    break                                         # the line a kill cut: rewritten
                self._record(entry, obj.get("skipped", False), offset, len(line))
                offset += len(line)
        return offset

    def _record(self, entry: dict, skipped: bool, offset: int, length: int) -> None:
        self.images.append({**entry, "offset": offset, "length": length})
        self.num_proposals += entry["num_proposals"]
        if skipped:
            self.skipped.append(entry["id"])

    def add(self, image: dict, records: Sequence[dict], *, skipped: bool = False) -> None:
        """Append ``image``'s records (written in the given order: by descending score); ``skipped``: the method
        did not run on it (counted in the index's ``images_skipped``, left out of evaluation)."""
        entry = _image_entry(image)
        for r in records:
            if int(r["image_id"]) != entry["id"]:
                raise LongtailError(f"ProposalWriter.add: a record of image {r['image_id']} given for image "
                                    f"{entry['id']}")
        obj = {"image_id": entry["id"], "image": entry, "proposals": list(records)}
        if skipped:
            obj["skipped"] = True
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        self._f.write(line)
        self._f.flush()
        self._record({**entry, "num_proposals": len(records)}, skipped, self._offset, len(line))
        self._offset += len(line)

    def finish(self) -> Path:
        """Commit the shard: ``<i>-of-<N>.json`` then the rename ``.part`` -> ``.jsonl``; returns the shard file."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        order = sorted(range(len(self.images)), key=lambda k: self.images[k]["id"])
        if [self.images[k]["id"] for k in order] != [im["id"] for im in self.images]:
            raise LongtailError(f"{self.part}: images were not added in ascending id order")
        write_json(_meta_path(self.path), {**self.meta, "shard": shard_name(self.shard),
                                           "num_proposals": self.num_proposals, "bytes": self._offset,
                                           "images_skipped": sorted(self.skipped), "images": self.images},
                   indent=None)
        os.replace(self.part, self.path)
        self.part_meta.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        """Close; an unfinished shard with no image written leaves nothing behind (nor the empty folders)."""
        if not self._f.closed:
            self._f.close()
            if not self.images:
                self.discard()

    def discard(self) -> None:
        """Drop the unfinished shard (e.g. its result was rejected), and the folders if that leaves them empty."""
        self._f.close()
        self.part.unlink(missing_ok=True)
        self.part_meta.unlink(missing_ok=True)
        for d in (self.path.parent, self.path.parent.parent):
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self) -> "ProposalWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_done(set_dir: str | Path, shard: tuple[int, int]) -> bool:
    """A finished shard (its ``.jsonl`` and ``.json`` exist): never recomputed."""
    p = shard_path(set_dir, shard)
    return p.exists() and _meta_path(p).exists()


def gather(set_dir: str | Path, num_shards: int | None = None) -> dict:
    """Write ``<set>/index.json`` from the N finished shards (N: ``num_shards``, else the one N present).

    Errors name a missing shard, a shard file shorter than its metadata (truncated) and shards that disagree
    on method/dataset/topk/nms_iou or share an image.
    """
    set_dir = proposal_set_dir(set_dir)
    sdir = set_dir / SHARDS_DIR
    num_shards = shards_present(sdir, ".jsonl", num_shards, "run `longtail propose --shard i/N` for every i")
    metas, shards = [], []
    for i in range(1, num_shards + 1):
        p = shard_path(set_dir, (i, num_shards))
        if not shard_done(set_dir, (i, num_shards)):
            raise LongtailError(f"{p}: shard {i} of {num_shards} missing (not run or not finished); run "
                                f"`longtail propose ... --out-dir {set_dir} --shard {i}/{num_shards}`.")
        meta = read_json(_meta_path(p), "proposal shard metadata")
        if p.stat().st_size != meta["bytes"]:
            k = next((n + 1 for n, im in enumerate(meta["images"])
                      if im["offset"] + im["length"] > p.stat().st_size), len(meta["images"]))
            raise LongtailError(f"{p}: {p.stat().st_size} bytes, its metadata says {meta['bytes']}: truncated at "
                                f"line {k}; delete it and rerun the shard (--shard {i}/{num_shards}).")
        rel = f"{SHARDS_DIR}/{p.name}"
        for im in meta["images"]:
            im["shard"] = rel
        metas.append(meta)
        shards.append(rel)
    first = metas[0]
    for i, m in enumerate(metas[1:], 2):
        diff = [k for k in first if k not in ("shard", "num_proposals", "bytes", "images", "images_skipped")
                and m.get(k) != first[k]]
        if diff:
            raise LongtailError(f"{shards[i - 1]}: {diff} differ from {shards[0]} ({[m.get(k) for k in diff]} vs "
                                f"{[first[k] for k in diff]}); rerun every shard with the same parameters.")
    images = sorted((im for m in metas for im in m["images"]), key=lambda im: im["id"])
    dup = [a["id"] for a, b in zip(images, images[1:]) if a["id"] == b["id"]]
    if dup:
        raise LongtailError(f"{set_dir}: image {dup[0]} is in two shards; rerun the shards with one N.")
    index = {k: v for k, v in first.items() if k not in ("shard", "bytes", "images", "images_skipped")}
    index.update(num_proposals=sum(m["num_proposals"] for m in metas), num_shards=num_shards, shards=shards,
                 images=images)
    skipped = sorted(i for m in metas for i in m["images_skipped"])
    if skipped:
        index["images_skipped"] = skipped
    write_json(set_dir / INDEX_FILE, index)
    return index


def read_index(set_dir: str | Path) -> dict:
    """The ``index.json`` of a gathered set (clear error if absent or not a proposal index)."""
    set_dir = proposal_set_dir(set_dir)
    index = read_json(set_dir / INDEX_FILE, "proposal index",
                      hint="Run `longtail propose` (and `longtail gather-proposals` after sharded runs) first.")
    if not isinstance(index, dict) or not isinstance(index.get("images"), list):
        raise LongtailError(f"{set_dir / INDEX_FILE}: no 'images' list; not a proposal set index, rerun "
                            f"`longtail propose`.")
    if index["images"] and "shard" not in index["images"][0]:
        raise LongtailError(f"{set_dir / INDEX_FILE}: an index without shard offsets (a proposals.json set of an "
                            f"older version); rerun `longtail propose`.")
    return index


class _ShardFiles:
    """Open shard files of a set, one handle per shard."""

    def __init__(self, set_dir: Path):
        self.dir, self.files = set_dir, {}

    def line(self, entry: dict) -> dict:
        rel = entry["shard"]
        f = self.files.get(rel)
        if f is None:
            path = self.dir / rel
            if not path.exists():
                raise LongtailError(f"{path}: proposal shard missing (the index names it); rerun its shard and "
                                    f"`longtail gather-proposals`.")
            f = self.files[rel] = open(path, "rb")
        f.seek(entry["offset"])
        line = f.read(entry["length"])
        try:
            return _parse_line(line, self.dir / rel, 0, entry["id"])
        except LongtailError:      # again, with the line number in the message
            return _parse_line(line, self.dir / rel, _line_number(f, entry["offset"]), entry["id"])

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _line_number(f, offset: int) -> int:
    """1-based line at byte ``offset`` of ``f`` (only for error messages)."""
    f.seek(0)
    return f.read(offset).count(b"\n") + 1


def image_entries(index: dict) -> dict[int, dict]:
    return {int(im["id"]): im for im in index["images"]}


class ProposalReader:
    """Per-image reads of a gathered proposal set: ``reader.read(image_id)`` seeks to that image's line.

    Memory bound: the reader keeps, per image, only its id, shard number, byte offset and length in numpy
    arrays (8 + 4 + 8 + 8 = 28 bytes an image: 3.3 MB for COCO train2017's 118k images), one open handle per
    shard file and no record; the parsed ``index.json`` (``index``, or read here) is not kept. Handles are
    opened on first use in each process (a pickled reader, e.g. in a DataLoader worker, opens its own).
    """

    def __init__(self, set_dir: str | Path, index: dict | None = None):
        self.dir = proposal_set_dir(set_dir)
        index = index if index is not None else read_index(self.dir)
        self.shards = sorted({im["shard"] for im in index["images"]})
        shard_no = {rel: k for k, rel in enumerate(self.shards)}
        ims = sorted(index["images"], key=lambda im: int(im["id"]))
        self.image_ids = np.fromiter((int(im["id"]) for im in ims), np.int64, len(ims))
        self._shard = np.fromiter((shard_no[im["shard"]] for im in ims), np.int32, len(ims))
        self._offset = np.fromiter((int(im["offset"]) for im in ims), np.int64, len(ims))
        self._length = np.fromiter((int(im["length"]) for im in ims), np.int64, len(ims))
        self._files, self._pid = None, None

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id) -> bool:
        return self._position(image_id) is not None

    def _position(self, image_id) -> int | None:
        k = int(np.searchsorted(self.image_ids, int(image_id)))
        return k if k < len(self.image_ids) and self.image_ids[k] == int(image_id) else None

    def read(self, image_id: int) -> list[dict]:
        """The records of one image (by descending score); a truncated/corrupt line names its file and line."""
        k = self._position(image_id)
        if k is None:
            raise LongtailError(f"{self.dir / INDEX_FILE}: image {image_id} is not in this proposal set")
        if self._files is None or self._pid != os.getpid():
            self._files, self._pid = _ShardFiles(self.dir), os.getpid()
        entry = {"id": int(image_id), "shard": self.shards[self._shard[k]], "offset": int(self._offset[k]),
                 "length": int(self._length[k])}
        return self._files.line(entry)["proposals"]

    def close(self) -> None:
        if self._files is not None and self._pid == os.getpid():
            self._files.close()
        self._files = None

    def __enter__(self) -> "ProposalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):                     # DataLoader workers open their own files
        return {**self.__dict__, "_files": None, "_pid": None}


def read_image_proposals(set_dir: str | Path, image_id: int, index: dict | None = None) -> list[dict]:
    """The records of one image (seeks to its line; no other image is read). Many images: a
    :class:`ProposalReader`."""
    with ProposalReader(set_dir, index) as reader:
        return reader.read(image_id)


def iter_proposals(set_dir: str | Path, index: dict | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """(image entry of the index, its records) for every image in ascending id; memory: one image."""
    set_dir = proposal_set_dir(set_dir)
    index = index if index is not None else read_index(set_dir)
    files = _ShardFiles(set_dir)
    try:
        for entry in index["images"]:
            yield entry, files.line(entry)["proposals"]
    finally:
        files.close()


def read_proposals(set_dir: str | Path) -> tuple[dict, list[dict]]:
    """(index, every record in a list: by image id, then descending score). For small sets and pycocotools'
    ``loadRes``; streaming readers use :func:`iter_proposals`."""
    index = read_index(set_dir)
    records: list[dict] = []
    for _, recs in iter_proposals(set_dir, index):
        records.extend(recs)
    return index, records


def write_proposals(out_dir: str | Path, records: Iterable[dict], images: Sequence[dict], *, method: str,
                    dataset: str, topk: int, nms_iou: float, shard: tuple[int, int] = (1, 1), **meta) -> Path:
    """Write the records of ``images`` (any order) as shard ``shard`` of ``out_dir``; with the default single
    shard the set is complete (``index.json`` gathered)."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_image[int(r["image_id"])].append(r)
    known = {int(im["id"]) for im in images}
    stray = sorted(set(by_image) - known)
    if stray:
        raise LongtailError(f"write_proposals: proposals of image {stray[0]} which is not in the image list")
    skipped = set(meta.pop("images_skipped", []))
    with ProposalWriter(out_dir, shard, resume=False, method=method, dataset=str(dataset), topk=topk,
                        nms_iou=nms_iou, **meta) as w:
        for im in sorted(images, key=lambda im: int(im["id"])):
            recs = sorted(by_image.get(int(im["id"]), []), key=lambda r: -r["score"])
            w.add(im, recs, skipped=int(im["id"]) in skipped)
        w.finish()
    if shard[1] == 1:
        gather(out_dir, 1)
    return proposal_set_dir(out_dir)
