"""Triplet sampling of Weng et al. 2021, 3.2 and 4.1.

Per proposal j (the anchor):

* L_mask triplet: (x_j,full, x_j,fg, x_j,bg) - always available.
* L_object: 1 positive = another proposal of the same image with mask IoU > ``pos_iou`` (0.4), and
  ``num_negatives`` (3) negatives = non-overlapping proposals (mask IoU <= ``neg_max_iou``, default 0) of the
  same image or any proposal of another image of the training batch.
* L_hierarchical: 1 child = a proposal of the same image lying inside the anchor's mask
  (|child ∩ anchor| / |child| >= ``child_containment``) and much smaller
  (``child_min_area_ratio`` <= |child| / |anchor| <= ``child_max_area_ratio``).

Anchors without a positive (or without any negative) get no L_object term, anchors without a child no
L_hierarchical term; every valid proposal gets its L_mask term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.masks import rle_for_pycocotools


@dataclass
class Relations:
    """Pairwise relations between the proposals of a training set (indices are global, into the records)."""

    image_index: np.ndarray                      # (N,) image number of each proposal
    images: list[np.ndarray]                     # proposals of each image
    positives: list[np.ndarray]                  # IoU > pos_iou, same image, not itself
    negatives: list[np.ndarray]                  # IoU <= neg_max_iou, same image
    children: list[np.ndarray]                   # inside the mask and much smaller
    stats: dict = field(default_factory=dict)


def build_relations(rles: Sequence[dict], image_ids: Sequence[int], valid: np.ndarray | None = None, *,
                    pos_iou: float = 0.4, neg_max_iou: float = 0.0, child_containment: float = 0.9,
                    child_max_area_ratio: float = 0.5, child_min_area_ratio: float = 0.0,
                    extra_children: Sequence[tuple[int, int]] = ()) -> Relations:
    """Positives, same-image negatives and children of every proposal (pycocotools mask IoU).

    ``valid`` (N,) bool excludes proposals (empty masks) from every relation. ``extra_children`` are extra
    (parent, child) pairs of global indices, e.g. from a region tree.
    """
    n = len(rles)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    image_ids = np.asarray(image_ids)
    uniq, image_index = np.unique(image_ids, return_inverse=True)
    images = [np.flatnonzero((image_index == k) & valid) for k in range(len(uniq))]
    empty = np.zeros(0, dtype=np.int64)
    positives = [empty] * n
    negatives = [empty] * n
    children = [empty] * n
    for idx in images:
        if len(idx) == 0:
            continue
        r = [rle_for_pycocotools(rles[i]) for i in idx]
        area = mask_utils.area(r).astype(np.float64)
        iou = np.asarray(mask_utils.iou(r, r, [0] * len(r))).reshape(len(r), len(r))
        # iscrowd=1 -> |d ∩ g| / |d|: row = candidate child, column = parent
        inside = np.asarray(mask_utils.iou(r, r, [1] * len(r))).reshape(len(r), len(r))
        ratio = area[:, None] / np.maximum(area[None, :], 1e-12)           # |child| / |parent|
        eye = np.eye(len(r), dtype=bool)
        for a, g in enumerate(idx):
            positives[g] = idx[(iou[a] > pos_iou) & ~eye[a]]
            negatives[g] = idx[(iou[a] <= neg_max_iou) & ~eye[a]]
            is_child = ((inside[:, a] >= child_containment) & (ratio[:, a] <= child_max_area_ratio)
                        & (ratio[:, a] >= child_min_area_ratio) & ~eye[a])
            children[g] = idx[is_child]
    for parent, child in extra_children:
        if valid[parent] and valid[child] and parent != child:
            children[parent] = np.union1d(children[parent], [child]).astype(np.int64)
    has = lambda lst: int(sum(len(lst[i]) > 0 for i in range(n) if valid[i]))
    stats = {"num_proposals": int(valid.sum()), "num_images": int(sum(len(i) > 0 for i in images)),
             "anchors_with_positive": has(positives), "anchors_with_child": has(children),
             "anchors_with_same_image_negative": has(negatives)}
    return Relations(image_index=image_index, images=images, positives=positives, negatives=negatives,
                     children=children, stats=stats)


@dataclass
class Triplets:
    """Sampled triplets of one training batch (global proposal indices)."""

    proposals: np.ndarray          # (P,) every proposal of the batch: L_mask anchors
    anchors: np.ndarray            # (A,) L_object anchors
    positives: np.ndarray          # (A,)
    negatives: np.ndarray          # (A, num_negatives)
    parents: np.ndarray            # (H,) L_hierarchical anchors
    children: np.ndarray           # (H,)


def sample_triplets(rel: Relations, batch_images: Sequence[int], rng: np.random.Generator,
                    num_negatives: int = 3) -> Triplets:
    """Sample 1 positive, ``num_negatives`` negatives and 1 child per anchor of the batch's images.

    Negatives are drawn uniformly from the anchor's non-overlapping same-image proposals and all proposals
    of the other images of the batch, without replacement when there are enough, else with replacement.
    """
    props = [rel.images[k] for k in batch_images]
    proposals = np.concatenate(props) if props else np.zeros(0, np.int64)
    anchors, positives, negatives, parents, children = [], [], [], [], []
    for k, idx in zip(batch_images, props):
        others = proposals[rel.image_index[proposals] != k]
        for a in idx:
            pos = rel.positives[a]
            cand = np.concatenate([rel.negatives[a], others])
            if len(pos) and len(cand):
                anchors.append(a)
                positives.append(rng.choice(pos))
                negatives.append(rng.choice(cand, size=num_negatives, replace=len(cand) < num_negatives))
            if len(rel.children[a]):
                parents.append(a)
                children.append(rng.choice(rel.children[a]))
    as_int = lambda x: np.asarray(x, dtype=np.int64)
    return Triplets(proposals=as_int(proposals), anchors=as_int(anchors), positives=as_int(positives),
                    negatives=as_int(negatives).reshape(-1, num_negatives), parents=as_int(parents),
                    children=as_int(children))


def top_per_image(records: Sequence[dict], n: int | None) -> list[int]:
    """Indices of the ``n`` highest-scoring records of each image (all if ``n`` is None/0), in input order."""
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(int(r["image_id"]), []).append(i)
    keep: list[int] = []
    for idx in by_image.values():
        order = sorted(idx, key=lambda i: (-float(records[i]["score"]), i))
        keep.extend(order[:n] if n else order)
    return sorted(keep)


def region_tree_pairs(rles: Sequence[dict], image_ids: Sequence[int], trees: dict, *, match_iou: float = 0.5,
                      max_area_ratio: float = 0.5, valid: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(parent, child) proposal pairs from UCM region trees (longtail.hierarchy.tree.RegionTree per image id).

    Each proposal is matched to the tree node of highest mask IoU (if >= ``match_iou``); P is a parent of Q when
    Q's node is a strict descendant of P's node and |Q| / |P| <= ``max_area_ratio``. Images without a tree add
    nothing.
    """
    from longtail.common.errors import LongtailError
    from longtail.common.masks import decode_mask

    valid = np.ones(len(rles), bool) if valid is None else np.asarray(valid, bool)
    by_image: dict[int, list[int]] = {}
    for i, im in enumerate(image_ids):
        if valid[i] and int(im) in trees:
            by_image.setdefault(int(im), []).append(i)
    pairs: list[tuple[int, int]] = []
    for im, idx in by_image.items():
        tree = trees[im]
        masks = [decode_mask(rles[i]) for i in idx]
        if masks[0].shape != tree.shape:
            raise LongtailError(f"region tree of image {im} has shape {tree.shape} but its proposals "
                                f"{masks[0].shape}; the trees were made for other images - rerun `longtail ucm`.")
        n_leaves, n_nodes = tree.n_leaves, tree.n_nodes
        inter = np.zeros((len(idx), n_nodes))
        for k, m in enumerate(masks):
            inter[k, :n_leaves] = np.bincount(tree.leaf_labels[m], minlength=n_leaves)[:n_leaves]
        for v in range(n_nodes - 1):                     # children are numbered before their parents
            inter[:, tree.parents[v]] += inter[:, v]
        node_area = tree.areas().astype(np.float64)
        area = np.array([m.sum() for m in masks], np.float64)
        iou = inter / np.maximum(area[:, None] + node_area[None, :] - inter, 1e-12)
        node = iou.argmax(1)
        matched = iou[np.arange(len(idx)), node] >= match_iou
        ancestors = []
        for v in node:
            chain = set()
            while tree.parents[v] != v:
                v = int(tree.parents[v])
                chain.add(v)
            ancestors.append(chain)
        for p in range(len(idx)):
            for q in range(len(idx)):
                if (p != q and matched[p] and matched[q] and node[p] in ancestors[q]
                        and area[q] <= max_area_ratio * area[p]):
                    pairs.append((idx[p], idx[q]))
    return pairs


def load_region_trees(trees_dir: str, image_ids: Sequence[int]) -> dict:
    """Region trees of ``longtail ucm`` (``index.json`` + ``<key>.npz``) for the given image ids, all at once (the
    in-RAM path; the streaming dataset loads one image's tree per item)."""
    from longtail.embedding.dataset import RegionTreeIndex

    index = RegionTreeIndex(trees_dir)
    return {int(i): index.get(int(i)) for i in image_ids if int(i) in index.files}
