"""Embedding of all proposals and of the ground-truth anchors (Weng et al. 2021, 3.3).

The embedding of an object (proposal or anchor) is its foreground embedding z_fg = f(x_fg): the box crop
with everything outside the mask blanked. Anchors are ``anchors_per_category`` GT masks per category taken
from the TRAIN split's annotations (not crowd, area >= ``anchor_min_area``), chosen at random with the seed;
a category with no eligible annotation has no anchor (listed in the metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from longtail.common.errors import LongtailError
from longtail.common.masks import rle_for_json, to_rle

log = logging.getLogger(__name__)


def select_anchors(gt: dict, per_category: int, seed: int, min_area: float = 0.0,
                   source: str = "ground truth", on_missing: str = "skip") -> tuple[list[dict], list[int]]:
    """(annotations chosen as anchors sorted by category then id, category ids without any anchor).

    A category without any eligible mask in ``gt`` (e.g. an LVIS category absent from LVIS train) gets no anchor:
    listed (``on_missing: skip``, the caller counts them) or a :class:`LongtailError` naming ``source``
    (``on_missing: fail``, the ``embedding.on_missing_anchor`` param).
    """
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise LongtailError(f"{source}: no '{key}' list; give a COCO instances JSON (results/data/train.json).")
    image_ids = {im["id"] for im in gt["images"]}
    by_cat: dict[int, list[dict]] = {c["id"]: [] for c in gt["categories"]}
    for a in gt["annotations"]:
        if a.get("iscrowd", 0) or a.get("area", 0) < min_area or a["image_id"] not in image_ids:
            continue
        if a["category_id"] not in by_cat:
            raise LongtailError(f"{source}: annotation {a['id']} has category_id {a['category_id']} that is not in "
                                f"'categories'; fix the file or rerun `longtail prepare`.")
        by_cat[a["category_id"]].append(a)
    rng = np.random.default_rng(seed)
    chosen, missing = [], []
    for cid in sorted(by_cat):
        anns = sorted(by_cat[cid], key=lambda a: a["id"])
        if not anns:
            missing.append(cid)
            continue
        pick = rng.choice(len(anns), size=min(per_category, len(anns)), replace=False)
        chosen += sorted((anns[i] for i in pick), key=lambda a: a["id"])
    if missing and on_missing == "fail":
        names = {c["id"]: c["name"] for c in gt["categories"]}
        raise LongtailError(f"{source}: {len(missing)} categories have no mask to draw an anchor from (e.g. "
                            f"{[names[c] for c in missing[:5]]}) and embedding.on_missing_anchor is fail; set it "
                            f"to skip to leave them without anchor (counted in the embed metrics), or give "
                            f"--anchors a ground truth with masks of every category")
    return chosen, missing


def anchor_records(gt: dict, anns: Sequence[dict]) -> list[dict]:
    """Anchors as proposal-like records ({"image_id", "segmentation"}) for the crop extraction."""
    images = {im["id"]: im for im in gt["images"]}
    out = []
    for a in anns:
        im = images[a["image_id"]]
        if not a.get("segmentation"):
            raise LongtailError(f"annotation {a.get('id')}: no segmentation; anchors need masks.")
        rle = to_rle(a["segmentation"], im["height"], im["width"], source=f"annotation {a.get('id')}")
        out.append({"image_id": a["image_id"], "segmentation": rle_for_json(rle),
                    "ann_id": a["id"], "category_id": a["category_id"]})
    return out


# --- streaming embedding of a proposal set ------------------------------------------------------------------

PARTS_SUFFIX = ".parts"
MANIFEST = "manifest.json"


class PartsWriter:
    """Chunks of the output written as they finish: ``<out>.parts/part-000012.npz`` (each renamed into place
    when complete) plus ``manifest.json`` (the run's fingerprint). A rerun with the same fingerprint keeps the
    finished chunks; :meth:`finish` concatenates them into ``<out>`` atomically and removes the folder.
    Nothing half-written is ever read: a part only exists once complete, ``<out>`` only once all are."""

    def __init__(self, out: str | Path, fingerprint: str):
        from longtail.common.io import read_json, write_json

        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + PARTS_SUFFIX)
        man = self.dir / MANIFEST
        if self.dir.exists():
            old = read_json(man, "embed parts manifest") if man.exists() else {}
            if old.get("fingerprint") != fingerprint:
                import shutil

                log.warning("%s: parts of another model/configuration/proposal set; starting over", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not man.exists():
            write_json(man, {"fingerprint": fingerprint})

    def part(self, k: int) -> Path:
        return self.dir / f"part-{k:06d}.npz"

    def done(self, k: int) -> bool:
        return self.part(k).exists()

    def write(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        from longtail.common.io import atomic_path

        with atomic_path(self.part(k)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def read_all(self, n_parts: int) -> dict[str, np.ndarray]:
        """The parts as one set of proposal arrays, in proposals.json order (:func:`merge_by_id`)."""
        return merge_by_id([self.part(k) for k in range(n_parts)])

    def finish(self, arrays: dict[str, np.ndarray]) -> None:
        import shutil

        from longtail.common.io import atomic_path

        with atomic_path(self.out) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class ImageRows:
    """What a finished image contributes to its part: everything of its ImageItem but the crops."""

    pos: int
    image_id: int
    record_ids: np.ndarray
    scores: np.ndarray
    empty: int


@torch.no_grad()
def embed_items(model, items: Sequence) -> np.ndarray:
    """(sum of n_i, dim) float32 fg embeddings of per-image items (their (n_i, 1, 3, S, S) uint8 crops)."""
    from longtail.embedding.crops import to_input
    from longtail.embedding.train import model_device

    crops = torch.cat([it.crops[:, 0] for it in items]) if items else torch.zeros(0)
    if len(crops) == 0:
        return np.zeros((0, model.dim), np.float32)
    z = model(to_input(crops).to(model_device(model)))
    return model.space.project(z).float().cpu().numpy()


def embed_proposal_set(model, proposals, cfg: dict, out: str | Path, *, fingerprint: str, chunk_images: int,
                       batch_size: int, num_workers: int = 0, progress: bool = True,
                       image_ids: Sequence[int] | None = None) -> dict:
    """Embed (z_fg) every kept proposal of a :class:`~longtail.embedding.dataset.ProposalIndex` (or of its
    images ``image_ids``: a shard), image by image.

    Images go through a DataLoader (``num_workers``) in groups of about ``batch_size`` crops; every
    ``chunk_images`` images a part is written (:class:`PartsWriter`), so a killed run resumes from its last
    finished chunk. Returns the proposal arrays of embeddings.npz (and ``empty_masks``), in proposals.json
    order, and leaves the parts folder for :meth:`PartsWriter.finish`.
    """
    from tqdm import tqdm

    from longtail.embedding.dataset import ProposalImageDataset, worker_init

    model.eval()
    ds = ProposalImageDataset(proposals, cfg, train=False)
    if image_ids is not None:
        ds.image_ids = np.intersect1d(ds.image_ids, np.asarray(list(image_ids), np.int64))   # sorted
    writer = PartsWriter(out, fingerprint)
    n = len(ds)
    C = max(1, int(chunk_images))
    n_parts = max(1, -(-n // C))
    todo = [k for k in range(n_parts) if not writer.done(k)]
    if len(todo) < n_parts:
        log.info("resuming embed: %d of %d parts already in %s", n_parts - len(todo), n_parts, writer.dir)
    per_image = len(proposals.record_ids) / max(1, len(proposals.image_ids))      # kept proposals an image
    group = max(1, int(int(batch_size) // max(1.0, per_image)))
    order = [i for k in todo for i in range(k * C, min(n, (k + 1) * C))]
    # groups never cross a chunk boundary
    groups = []
    for k in todo:
        idx = list(range(k * C, min(n, (k + 1) * C)))
        groups += [idx[s:s + group] for s in range(0, len(idx), group)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=groups, num_workers=int(num_workers), collate_fn=list,
                                         worker_init_fn=worker_init if num_workers else None)
    pending: dict[int, list] = {}
    bar = tqdm(total=len(order), desc="embed proposals", unit="img", disable=not progress)
    for items in loader:
        z = embed_items(model, items)
        o = 0
        for it in items:
            k = it.pos // C
            m = len(it.record_ids)
            # the chunk waits for its last image: keep the rows, not the item's crops (at 224 px, 500 images
            # x 50 proposals of crops would be 3.8 GB)
            row = ImageRows(it.pos, it.image_id, it.record_ids, it.scores, it.empty)
            pending.setdefault(k, []).append((row, z[o:o + m]))
            o += m
            chunk_end = min(n, (k + 1) * C)
            if it.pos == chunk_end - 1:                 # groups arrive in order: the chunk is complete
                done = pending.pop(k)
                writer.write(k, {
                    "proposal_embeddings": np.concatenate([zz for _, zz in done]).astype(np.float32)
                    .reshape(-1, model.dim),
                    "proposal_ids": np.concatenate([t.record_ids for t, _ in done]).astype(np.int64),
                    "proposal_image_ids": np.concatenate([np.full(len(t.record_ids), t.image_id, np.int64)
                                                          for t, _ in done]),
                    "proposal_scores": np.concatenate([t.scores for t, _ in done]).astype(np.float32),
                    "empty_masks": np.asarray([sum(t.empty for t, _ in done)], np.int64)})
        bar.update(len(items))
    bar.close()
    arrays = writer.read_all(n_parts) if n else {}       # in proposals.json order
    if not n:
        arrays = {"proposal_embeddings": np.zeros((0, model.dim), np.float32),
                  "proposal_ids": np.zeros(0, np.int64), "proposal_image_ids": np.zeros(0, np.int64),
                  "proposal_scores": np.zeros(0, np.float32), "empty_masks": np.zeros(1, np.int64)}
    arrays["empty_masks"] = np.asarray(int(arrays["empty_masks"].sum()))
    return arrays, writer


def embed_records(model, records: Sequence[dict], images: dict[int, dict], cfg: dict, *, batch_size: int,
                  source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(embeddings of the non-empty masks, their positions in ``records``) of a few records (the anchors),
    image by image: one image's crops in memory at a time."""
    from longtail.embedding.crops import load_image
    from longtail.embedding.dataset import image_item

    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(int(r["image_id"]), []).append(i)
    zs, keep, pend = [], [], []

    def flush():
        if pend:
            zs.append(embed_items(model, [it for it, _ in pend]))
            for it, idx in pend:
                keep.extend(int(idx[j]) for j in it.record_ids)
            pend.clear()

    model.eval()
    for image_id, idx in by_image.items():
        if image_id not in images:
            raise LongtailError(f"{source}: image_id {image_id} is not in its image list.")
        im = images[image_id]
        image = load_image(im["file_name"], source)
        it = image_item(0, image, image_id, [records[i]["segmentation"] for i in idx], np.arange(len(idx)),
                        np.zeros(len(idx)), cfg, ("fg",), relations=False, source=source)
        pend.append((it, np.asarray(idx)))
        if sum(len(p.record_ids) for p, _ in pend) >= batch_size:
            flush()
    flush()
    z = np.concatenate(zs) if zs else np.zeros((0, model.dim), np.float32)
    keep_a = np.asarray(keep, np.int64)
    o = np.argsort(keep_a, kind="stable")
    return z[o].astype(np.float32), keep_a[o]


def embed_fingerprint(model_path: str | Path, proposals, cfg: dict, chunk_images: int) -> str:
    """What the parts of a killed embed depend on: the model file, the proposal file, the crops, the chunking."""
    import hashlib

    from longtail.common.params import params_hash

    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    st = Path(proposals.file).stat()
    return params_hash([h.hexdigest(), str(Path(proposals.file).resolve()), st.st_size, st.st_mtime_ns,
                        int(cfg["crop_size"]), cfg["proposals_per_image"], int(chunk_images)])


# --- shards: `embed --shard i/N` + `gather-embeddings` ------------------------------------------------------

ROW_KEYS = ("proposal_embeddings", "proposal_ids", "proposal_image_ids", "proposal_scores")    # one row a proposal
SHARD_KEYS = (*ROW_KEYS, "empty_masks")


def merge_by_id(files: Sequence[Path], hint: str = "") -> dict[str, np.ndarray]:
    """The :data:`ROW_KEYS` arrays of several .npz files (an embed's parts, or its shards) as one, sorted by
    proposal id (proposals.json order), and their ``empty_masks`` concatenated.

    Two passes over the files: the ids first (8 bytes a proposal), then each file's rows written straight to
    their sorted place in the output. Memory: one copy of the output plus one file's arrays, instead of the list
    of files, its concatenation and a sorted copy (embed at 1M proposals: 1.43x its 1x peak before). A file that
    cannot be read raises :class:`LongtailError` naming it (``hint``: what to do)."""
    import zipfile

    def load(f: Path, keys: Sequence[str]) -> list[np.ndarray]:
        try:
            with np.load(f) as z:
                return [np.atleast_1d(z[k]) for k in keys]
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise LongtailError(f"{f}: truncated or corrupt embedding file ({type(e).__name__}: {e})"
                                + (f"; {hint}." if hint else ".")) from None

    ids, empty = zip(*(load(f, ("proposal_ids", "empty_masks")) for f in files)) if files else ((), ())
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    dest = np.empty_like(order)
    dest[order] = np.arange(len(order))
    out: dict[str, np.ndarray] = {"proposal_ids": all_ids[order]}
    del order, all_ids
    start = 0
    for f, n in zip(files, (len(i) for i in ids)):
        rows = load(f, ROW_KEYS[:1] + ROW_KEYS[2:])
        where = dest[start:start + n]
        for key, a in zip(ROW_KEYS[:1] + ROW_KEYS[2:], rows):
            if key not in out:
                out[key] = np.empty((len(dest), *a.shape[1:]), a.dtype)
            out[key][where] = a
        start += n
    out["empty_masks"] = np.concatenate(empty) if empty else np.zeros(0, np.int64)
    return {k: out[k] for k in SHARD_KEYS if k in out}


def shard_file(out: str | Path, shard: tuple[int, int]) -> Path:
    """``<out stem>.shards/<i>-of-<N>.npz`` next to the embeddings file ``out``."""
    from longtail.common.shards import shard_name

    out = Path(out)
    return out.with_name(out.stem + ".shards") / f"{shard_name(shard)}.npz"


def _shard_fingerprint(f: Path) -> str | None:
    try:
        with np.load(f) as z:
            return str(z["fingerprint"])
    except Exception:                   # unreadable: not finished (atomic writes: only a foreign/corrupt copy)
        return None


def embed_shard(model, proposals, cfg: dict, out: str | Path, shard: tuple[int, int], *, fingerprint: str,
                chunk_images: int, batch_size: int, num_workers: int = 0) -> tuple[Path, bool]:
    """Embed the kept proposals of shard ``(i, N)`` of the set's images (ids sorted, ``[i-1::N]``,
    :mod:`longtail.common.shards`) into :func:`shard_file` (atomic; parts in ``<file>.parts/`` while it runs,
    so a killed shard resumes from its finished chunks). A finished shard of the same fingerprint (model,
    proposal set, crops, chunking) is not recomputed. Returns (the file, whether it was computed now)."""
    from longtail.common.shards import select_shard, shard_name

    import re
    import shutil

    f = shard_file(out, shard)
    fp = f"{fingerprint}:{shard_name(shard)}"
    for old in (f.parent.iterdir() if f.parent.is_dir() else []):     # resharded: the shards of another N go
        m = re.fullmatch(r"\d+-of-(\d+)\.npz(\.parts)?", old.name)
        if m and int(m.group(1)) != shard[1]:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    if f.exists() and _shard_fingerprint(f) == fp:
        log.info("embed: shard %s already finished in %s; not recomputed", shard_name(shard), f)
        return f, False
    ids = select_shard(sorted(proposals.images), shard, key=int)
    arrays, writer = embed_proposal_set(model, proposals, cfg, f, fingerprint=fp, chunk_images=chunk_images,
                                        batch_size=batch_size, num_workers=num_workers, image_ids=ids)
    arrays["empty_masks"] = np.asarray(arrays["empty_masks"])
    writer.finish({**arrays, "fingerprint": np.asarray(fp), "image_ids": np.asarray(ids, np.int64)})
    return f, True


def gather_shards(out: str | Path, num_shards: int | None, fingerprint: str, proposals) -> dict[str, np.ndarray]:
    """The proposal arrays of embeddings.npz from the N shard files (N: ``num_shards``, else the one N
    present), in proposals.json order. Errors name a missing, truncated/corrupt or foreign (another model,
    configuration or proposal set) shard file, and shards that together miss or repeat proposals."""
    import zipfile

    import re

    from longtail.common.shards import shard_name

    out = Path(out)
    sdir = shard_file(out, (1, 1)).parent
    ns = {int(m.group(1)) for p in (sdir.iterdir() if sdir.is_dir() else [])
          if (m := re.fullmatch(r"\d+-of-(\d+)\.npz", p.name))}         # not the .parts folders / temp files
    if num_shards is None and len(ns) != 1:
        raise LongtailError(f"{sdir}: " + ("no finished shard" if not ns else f"shards of several N {sorted(ns)}")
                            + "; run every `longtail embed --shard i/N`, or pass --shards N.")
    n = num_shards if num_shards is not None else ns.pop()
    files = [shard_file(out, (i, n)) for i in range(1, n + 1)]
    for i, f in enumerate(files, 1):
        hint = f"delete it and rerun `longtail embed ... --out {out} --shard {i}/{n}`"
        if not f.exists():
            raise LongtailError(f"{f}: shard {i} of {n} missing (not run or not finished); run `longtail embed ... "
                                f"--out {out} --shard {i}/{n}`.")
        try:
            with np.load(f) as z:
                got = str(z["fingerprint"])
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
            raise LongtailError(f"{f}: truncated or corrupt embedding shard ({type(e).__name__}: {e}); {hint}.") \
                from None
        if got != f"{fingerprint}:{shard_name((i, n))}":
            raise LongtailError(f"{f}: embedded with another model, configuration or proposal set than this "
                                f"gather's; {hint}.")
    arrays = merge_by_id(files, hint=f"delete it and rerun its `longtail embed ... --out {out} --shard i/{n}`")
    ids = arrays["proposal_ids"]
    empty = int(arrays["empty_masks"].sum())
    if (ids[1:] == ids[:-1]).any() or len(ids) + empty != len(proposals.record_ids):
        raise LongtailError(f"{sdir}: the {n} shards hold {len(ids)} proposals (+ {empty} empty masks), the set "
                            f"{proposals.dir} has {len(proposals.record_ids)} kept; delete {sdir} and rerun the "
                            f"shards with one N.")
    arrays["empty_masks"] = np.asarray(empty)
    return arrays
