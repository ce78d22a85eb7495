"""Per-image data path of train-embedding and embed: memory bounded by one batch of images, not by the split.

* :class:`ProposalIndex` reads the proposal store (one JSON line per image) once, one image at a time, and
  keeps per kept record only its id, image id, score and whether its mask is non-empty (~25 bytes a record:
  150 MB for COCO train's 5.9M proposals); an image's records are read again from its line when the image is
  loaded. The top ``proposals_per_image`` of each image are those of
  :func:`longtail.embedding.sampling.top_per_image`.
* :class:`ProposalImageDataset` (``torch.utils.data.Dataset``): item = one image: it decodes the image and its
  proposals' RLEs, loads its region tree (if a trees folder is given), cuts the full/fg/bg crops and computes
  that image's relations (positives, same-image negatives, children incl. region-tree pairs).
* :class:`StepBatchSampler` yields the images of each training step in today's order (per-epoch permutation
  ``default_rng([seed, epoch])``), from any start step (resume), split across DDP ranks;
  :func:`collate_images` concatenates the images of a step and samples its triplets with
  ``default_rng([seed, 1, step])`` through :func:`~longtail.embedding.sampling.sample_triplets`, so the
  triplets (and the losses) are the ones of the in-RAM path.

Peak memory: the per-record arrays above, the image table of ``index.json`` (ImageMeta per image, and the
:class:`~longtail.proposals.format.ProposalReader`'s 28 bytes an image), ``num_workers x prefetch`` batches
of crops (images_per_batch x proposals x 3 crops x 3 x S x S bytes each) and the items kept for the later epochs
(at most ``ITEM_MEMO_BYTES`` of crops, in the main process only: the whole sample, a small part of COCO).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError
from longtail.common.io import read_json
from longtail.common.masks import rle_for_pycocotools
from longtail.common.preemption import worker_init  # noqa: F401 (re-exported)
from longtail.embedding.crops import CROP_KINDS, load_image, mask_crops
from longtail.embedding.sampling import Relations, Triplets, build_relations, region_tree_pairs, sample_triplets

#: bytes of training items (crops + relations) a ProposalImageDataset keeps for the next epochs (main process only)
ITEM_MEMO_BYTES = 512 << 20
#: relation counts of a step's images, summed over the first epoch into train-embedding's metrics
REL_STATS = ("anchors_with_positive", "anchors_with_child", "anchors_with_same_image_negative", "region_tree_pairs")


@dataclass
class ImageMeta:
    id: int
    file_name: str
    height: int
    width: int


class ProposalIndex:
    """The kept proposals of a proposal set (:mod:`longtail.proposals.format`: one JSON line per image), per image.

    One pass over the set (one image's line in memory at a time) keeps, per kept record, its image id, score
    and whether its mask is non-empty (~25 bytes a record: 150 MB for COCO train's 5.9M proposals); an image's
    records are read again from its line when the image is loaded. ``record_ids`` are positions in
    :func:`~longtail.proposals.format.read_proposals`' list (as in embeddings.npz's ``proposal_ids``),
    ascending; ``image_ids`` the images with kept proposals, ascending.
    """

    def __init__(self, path: str | Path, n_per_image: int | None):
        from longtail.proposals.format import ProposalReader, iter_proposals, proposal_set_dir, read_index

        self.dir = proposal_set_dir(path)
        self.file = self.dir / "index.json"
        index = read_index(self.dir)
        self.n_per_image = int(n_per_image or 0)
        self.images = {int(im["id"]): ImageMeta(int(im["id"]), im["file_name"], int(im["height"]), int(im["width"]))
                       for im in index["images"]}
        self._reader = ProposalReader(self.dir, index)                     # 28 bytes an image
        self.index = {k: v for k, v in index.items() if k != "images"}     # the table lives in self.images
        rid, img, area = array("q"), array("q"), array("q")               # 8 bytes a record, not Python objects
        score = array("d")
        base = 0
        for entry, recs in iter_proposals(self.dir, index):
            for j, rec in enumerate(self._kept(recs)):
                rid.append(base + j)
                img.append(int(entry["id"]))
                score.append(float(rec["score"]))
                area.append(_area(rec["segmentation"]))
            base += len(recs)
        self.proposals_in_file = base
        if not base:
            raise LongtailError(f"{self.dir}: no proposals at all; check the proposal stage's output.")
        self.record_ids = np.frombuffer(rid, np.int64).copy()
        self.record_image = np.frombuffer(img, np.int64).copy()
        self.record_score = np.frombuffer(score, np.float64).copy()
        self.record_valid = np.frombuffer(area, np.int64) > 0
        del rid, img, area, score
        # records are grouped by image in ascending image id (the store's order)
        self.image_ids, starts = np.unique(self.record_image, return_index=True)
        ends = np.r_[starts[1:], len(self.record_image)]
        self._span = {int(i): (int(a), int(b)) for i, a, b in zip(self.image_ids, starts, ends)}

    def _kept(self, recs: list) -> list:
        """The top ``n_per_image`` of an image's records (stored by descending score: the first ones, as
        :func:`~longtail.embedding.sampling.top_per_image` picks them)."""
        return recs[:self.n_per_image] if self.n_per_image else recs

    def positions(self, image_id: int) -> np.ndarray:
        """Positions (into the kept arrays) of an image's kept records, ascending record id."""
        span = self._span.get(int(image_id))
        return np.zeros(0, np.int64) if span is None else np.arange(span[0], span[1])

    def records(self, image_id: int) -> tuple[np.ndarray, list[dict]]:
        """(positions, records) of an image's kept proposals, read from its line of the store."""
        pos = self.positions(image_id)
        if len(pos) == 0:
            return pos, []
        recs = self._kept(self._reader.read(image_id))         # handles per (DataLoader worker) process
        if len(recs) != len(pos):
            raise LongtailError(f"{self.dir}: image {image_id} has {len(recs)} kept proposals now, {len(pos)} when "
                                f"the set was indexed; the set changed during the run - rerun.")
        return pos, recs

    def valid_image_ids(self) -> np.ndarray:
        """Images with at least one non-empty kept mask, sorted by id (the in-RAM path's training images)."""
        return np.unique(self.record_image[self.record_valid])


def _area(seg) -> int:
    try:
        return int(mask_utils.area(rle_for_pycocotools(seg)))
    except Exception:
        return 1                       # not an RLE we can measure: decoded (and checked) when its image is read


# --- region trees, per image --------------------------------------------------------------------------------

class RegionTreeIndex:
    """``longtail ucm`` output (``index.json`` naming each image's ``.npz``): the tree of one image is loaded on
    demand."""

    def __init__(self, trees_dir: str | Path):
        from longtail.hierarchy.shards import hierarchy_dir

        self.dir = hierarchy_dir(trees_dir)               # the folder or its index.json
        index = read_json(self.dir / "index.json", "region tree index")
        if not isinstance(index, dict) or not isinstance(index.get("images"), list):
            raise LongtailError(f"{self.dir / 'index.json'}: no 'images' list; rerun `longtail ucm`.")
        self.files = {int(r["image_id"]): r["tree"] for r in index["images"] if r.get("image_id") is not None}

    def get(self, image_id: int):
        from longtail.hierarchy.tree import load_region_tree

        name = self.files.get(int(image_id))
        return None if name is None else load_region_tree(self.dir / name)


# --- items and batches --------------------------------------------------------------------------------------

@dataclass
class ImageItem:
    """One image's proposals: crops of its non-empty masks and their relations (local indices)."""

    pos: int                       # position of the image in the dataset
    image_id: int
    record_ids: np.ndarray         # (n,) positions in proposals.json
    scores: np.ndarray             # (n,)
    crops: torch.Tensor            # (n, k, 3, S, S) uint8
    positives: list[np.ndarray]
    negatives: list[np.ndarray]
    children: list[np.ndarray]
    empty: int = 0                 # empty masks left out
    tree_pairs: int = 0


def image_item(pos: int, image: np.ndarray, image_id: int, rles: Sequence[dict], record_ids: np.ndarray,
               scores: np.ndarray, cfg: dict, kinds: Sequence[str] = CROP_KINDS, tree=None,
               relations: bool = True, source: str = "") -> ImageItem:
    """Crops (empty masks left out) and, if ``relations``, the within-image relations of one image."""
    from longtail.common.masks import decode_mask

    size = int(cfg["crop_size"])
    crops, keep = [], []
    for j, rle in enumerate(rles):
        c = mask_crops(image, decode_mask(rle), size, kinds)
        if c is not None:
            crops.append(c)
            keep.append(j)
    keep_a = np.asarray(keep, np.int64)
    arr = np.stack(crops) if crops else np.zeros((0, len(kinds), 3, size, size), np.uint8)
    pos_l = neg_l = ch_l = []
    n_pairs = 0
    if relations and len(keep):
        kept = [rles[j] for j in keep]
        ids = [image_id] * len(kept)
        extra = region_tree_pairs(kept, ids, {image_id: tree}, match_iou=cfg["tree_match_iou"],
                                  max_area_ratio=cfg["child_max_area_ratio"]) if tree is not None else []
        n_pairs = len(extra)
        rel = build_relations(kept, ids, pos_iou=cfg["pos_iou"], neg_max_iou=cfg["neg_max_iou"],
                              child_containment=cfg["child_containment"],
                              child_max_area_ratio=cfg["child_max_area_ratio"],
                              child_min_area_ratio=cfg["child_min_area_ratio"], extra_children=extra)
        pos_l, neg_l, ch_l = rel.positives, rel.negatives, rel.children
    return ImageItem(pos=pos, image_id=int(image_id), record_ids=np.asarray(record_ids, np.int64)[keep_a],
                     scores=np.asarray(scores, np.float64)[keep_a], crops=torch.from_numpy(arr),
                     positives=list(pos_l), negatives=list(neg_l), children=list(ch_l),
                     empty=len(rles) - len(keep), tree_pairs=n_pairs)


class ProposalImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over images: item ``i`` (or ``(i, step)`` from :class:`StepBatchSampler`) = one image.

    ``train=True``: the images with at least one non-empty kept mask, sorted by id (as in the in-RAM path),
    3 crops per proposal and the relations. ``train=False`` (embed): every image with kept proposals, in the
    file's order, fg crops only, no relations. ``max_per_image`` (> 0) caps an image's proposals per step
    (a random subset seeded by ``(seed, step, image)``; see ``embedding.max_proposals_per_step``).

    A training item that the cap leaves whole is the same in every epoch: the first ones, up to
    ``ITEM_MEMO_BYTES`` of crops, are kept and handed out again (a shallow copy) instead of cutting the crops and
    building the relations again. Only when the items are read in the main process (``num_workers: 0``, the sample
    default): DataLoader workers are started anew every epoch, so a worker's memo would only cost memory.
    """

    def __init__(self, proposals: ProposalIndex, cfg: dict, *, trees_dir: str | Path | None = None,
                 train: bool = True, max_per_image: int = 0, seed: int = 0):
        self.proposals, self.cfg, self.train, self.seed = proposals, cfg, train, int(seed)
        self.trees = RegionTreeIndex(trees_dir) if trees_dir else None
        self.image_ids = proposals.valid_image_ids() if train else proposals.image_ids
        self.kinds = CROP_KINDS if train else ("fg",)
        self.max_per_image = int(max_per_image or 0)
        self.record_ids = proposals.record_ids
        self._memo: dict[int, ImageItem] = {}
        self._memo_bytes = 0

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key) -> ImageItem:
        import dataclasses

        i, step = key if isinstance(key, tuple) else (key, None)
        image_id = int(self.image_ids[i])
        valid = np.flatnonzero(self.proposals.record_valid[self.proposals.positions(image_id)])
        capped = bool(self.train and self.max_per_image and step is not None and len(valid) > self.max_per_image)
        if not capped and i in self._memo:
            return dataclasses.replace(self._memo[i])
        pos, recs = self.proposals.records(image_id)
        if capped:
            rng = np.random.default_rng([self.seed, 2, int(step), image_id])
            sel = np.sort(rng.choice(valid, self.max_per_image, replace=False))
            pos, recs = pos[sel], [recs[j] for j in sel]
        item = self._item(i, image_id, pos, recs, self.kinds, relations=self.train)
        if (self.train and not capped and self._memo_bytes + item.crops.nbytes <= ITEM_MEMO_BYTES
                and torch.utils.data.get_worker_info() is None):   # a worker's memo dies with it at the epoch end
            self._memo[i] = item
            self._memo_bytes += item.crops.nbytes
            return dataclasses.replace(item)
        return item

    def _item(self, i: int, image_id: int, pos: np.ndarray, recs: list, kinds, relations: bool) -> ImageItem:
        src = str(self.proposals.dir)
        image = load_image(self.proposals.images[image_id].file_name, src)
        tree = self.trees.get(image_id) if (self.trees is not None and relations) else None
        return image_item(i, image, image_id, [r["segmentation"] for r in recs], self.proposals.record_ids[pos],
                          self.proposals.record_score[pos], self.cfg, kinds, tree=tree, relations=relations,
                          source=src)

    def fg_crops(self, i: int) -> torch.Tensor:
        """(n, 3, S, S) uint8 fg crops of image ``i``'s non-empty kept masks (no cap), as ``self[i].crops`` has
        them, without cutting the other kinds or building relations (the PCA head init's input)."""
        image_id = int(self.image_ids[i])
        pos, recs = self.proposals.records(image_id)
        return self._item(i, image_id, pos, recs, ("fg",), relations=False).crops[:, 0]


@dataclass
class Batch:
    """The images of one step: crops in image order, batch-local relations and the sampled triplets."""

    step: int
    crops: torch.Tensor            # (P, k, 3, S, S) uint8
    record_ids: np.ndarray         # (P,)
    relations: Relations
    triplets: Triplets
    items: list                    # the ImageItems without their crops
    stats: dict                    # relation counts of the batch's images (REL_STATS)


def batch_relations(items: Sequence[ImageItem]) -> Relations:
    """The items' per-image relations with indices into the concatenation of their proposals."""
    offsets = np.cumsum([0] + [len(it.record_ids) for it in items])
    shift = lambda lst, o: [np.asarray(a, np.int64) + o for a in lst]
    pos, neg, ch, images = [], [], [], []
    for it, o in zip(items, offsets[:-1]):
        pos += shift(it.positives, o)
        neg += shift(it.negatives, o)
        ch += shift(it.children, o)
        images.append(np.arange(o, o + len(it.record_ids), dtype=np.int64))
    image_index = np.repeat(np.arange(len(items)), np.diff(offsets))
    return Relations(image_index=image_index, images=images, positives=pos, negatives=neg, children=ch)


def collate_images(items: Sequence[ImageItem], *, seed: int, num_negatives: int) -> Batch:
    """A step's batch; triplets drawn with ``default_rng([seed, 1, step])`` (as in the in-RAM path)."""
    step = int(getattr(items[0], "step", -1)) if items else -1
    rel = batch_relations(items)
    rng = np.random.default_rng([seed, 1, step] if items else 0)      # no images (a DDP rank): nothing drawn
    trip = sample_triplets(rel, list(range(len(items))), rng, num_negatives)
    crops = torch.cat([it.crops for it in items]) if items else torch.zeros(0, dtype=torch.uint8)
    rec = np.concatenate([it.record_ids for it in items]) if items else np.zeros(0, np.int64)
    stats = {"anchors_with_positive": sum(int(sum(len(p) > 0 for p in it.positives)) for it in items),
             "anchors_with_child": sum(int(sum(len(c) > 0 for c in it.children)) for it in items),
             "anchors_with_same_image_negative": sum(int(sum(len(n) > 0 for n in it.negatives)) for it in items),
             "region_tree_pairs": sum(it.tree_pairs for it in items)}
    light = [ImageItem(it.pos, it.image_id, it.record_ids, it.scores, it.crops[:0], [], [], [], it.empty,
                       it.tree_pairs) for it in items]
    return Batch(step=step, crops=crops, record_ids=rec, relations=rel, triplets=trip, items=light, stats=stats)


class _StepItems(torch.utils.data.Dataset):
    """Wraps a per-image dataset so that each item knows its step (for the triplet RNG and the cap)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        i, step = key
        it = self.base[(i, step)] if isinstance(self.base, ProposalImageDataset) else self.base[i]
        it.step = step
        return it


class StepBatchSampler(torch.utils.data.Sampler):
    """Dataset keys ``(image, step)`` of steps ``start..total-1``: the images of step s are
    ``default_rng([seed, epoch]).permutation(n)[b*B:(b+1)*B]`` (epoch, b = divmod(s, steps_per_epoch)); under
    DDP rank r of W takes every W-th of them (the global batch of B images is preserved across the ranks; a
    step with fewer than W images repeats some so that no rank is idle)."""

    def __init__(self, n_images: int, images_per_batch: int, seed: int, start: int, total: int,
                 rank: int = 0, world: int = 1):
        self.n, self.B, self.seed, self.start, self.total = n_images, int(images_per_batch), seed, start, total
        self.rank, self.world = rank, world
        self.steps_per_epoch = steps_per_epoch(n_images, self.B)

    def images(self, step: int) -> list[int]:
        epoch, b = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return [int(i) for i in order[b * self.B:(b + 1) * self.B]]

    def __iter__(self):
        for s in range(self.start, self.total):
            imgs = self.images(s)
            if len(imgs) < self.world:             # every rank needs an image (DDP syncs every step): repeat
                imgs = (imgs * self.world)[:self.world]         # some, like DistributedSampler's padding
            yield [(i, s) for i in imgs[self.rank::self.world]]

    def __len__(self):
        return max(0, self.total - self.start)


def per_image_cap(max_proposals_per_step: int, images_per_batch: int, world: int = 1) -> int:
    """Proposals an image keeps per step so that a process's step has at most ``max_proposals_per_step``
    (0 = no cap): ``max(1, cap // images per process)``."""
    if not max_proposals_per_step:
        return 0
    return max(1, int(max_proposals_per_step) // max(1, math.ceil(int(images_per_batch) / max(1, world))))


def training_dataset(proposals_dir: str | Path, cfg: dict, *, trees_dir: str | Path | None = None, seed: int = 0,
                     world: int = 1) -> ProposalImageDataset:
    """The streaming training dataset of a proposal set with the configuration's top-N and per-step cap."""
    ds = ProposalImageDataset(ProposalIndex(proposals_dir, cfg["proposals_per_image"]), cfg, trees_dir=trees_dir,
                              max_per_image=per_image_cap(cfg["max_proposals_per_step"],
                                                          cfg["images_per_batch"], world), seed=seed)
    if len(ds) == 0:
        raise LongtailError(f"{proposals_dir}: every proposal mask is empty; nothing to train on.")
    return ds


def steps_per_epoch(n_images: int, images_per_batch: int) -> int:
    return max(1, math.ceil(n_images / int(images_per_batch)))


def step_loader(dataset, sampler: StepBatchSampler, *, seed: int, num_negatives: int,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """DataLoader of training steps (one :class:`Batch` per step) with ``num_workers`` worker processes."""
    import functools

    return torch.utils.data.DataLoader(
        _StepItems(dataset), batch_sampler=sampler, num_workers=int(num_workers),
        collate_fn=functools.partial(collate_images, seed=seed, num_negatives=num_negatives),
        worker_init_fn=worker_init if num_workers else None)
