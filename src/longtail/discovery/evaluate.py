"""Evaluation of discovered clusters (Weng et al. §3.3, §4, Tables 1 and 3).

* ``cluster_category_distance`` + ``greedy_labels``: every cluster gets the label of the ground-truth category
  it is on average closest to (mean distance between its members and that category's anchor embeddings);
  pairs are taken in order of increasing distance and each label is used at most once. Clusters left
  unlabelled are "novel" (-1).
* ``detections``: each proposal takes its cluster's label and its own objectness score (COCO results).
* ``coco_eval`` (pycocotools, segm): AP, AP50, AP75, APs, APm, APl on the chosen categories.
* ``lvis_eval`` (the ``lvis`` API): the same plus APr, APc, APf, optionally over a subset of the categories
  (Table 1: the novel ones); ``is_lvis`` tells federated LVIS ground truth (LVIS label space of ``prepare``).
* ``purity`` (Manning et al. 2008): sum over clusters of the majority-class count / number of items, over the
  clusters labelled with a category (as Table 3), overall and per group (frequency or base/novel).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError
from longtail.common.masks import rle_for_json, rle_for_pycocotools, to_rle
from longtail.discovery.groundtruth import (AnnotationsByImage, PackedAnnotations, annotation_column,
                                           images_annotations)
from longtail.discovery.spaces import pairwise_dist

NOVEL = -1
COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
LVIS_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


# -- labelling ----------------------------------------------------------------------------------------------
def cluster_category_distance(Z: np.ndarray, labels: np.ndarray, n_clusters: int, anchors: np.ndarray,
                              anchor_cats: np.ndarray, space: str, curvature: float = 1.0,
                              chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """D[c, g] = mean over members i of cluster c and anchors a of category g of d(z_i, a).

    Returns (D, categories); D is +inf for empty clusters.
    """
    cats, inv = np.unique(np.asarray(anchor_cats), return_inverse=True)
    onehot = np.zeros((len(anchor_cats), len(cats)))
    onehot[np.arange(len(anchor_cats)), inv] = 1.0
    onehot /= onehot.sum(0, keepdims=True)
    import torch

    S = torch.zeros((n_clusters, len(cats)), dtype=torch.float64)
    lab = torch.as_tensor(np.asarray(labels, np.int64))
    for s in range(0, len(Z), chunk):
        d = pairwise_dist(Z[s:s + chunk], anchors, space, curvature) @ onehot   # (n, G) mean per category
        S.index_add_(0, lab[s:s + chunk], torch.from_numpy(d))
    S = S.numpy()
    sizes = np.bincount(labels, minlength=n_clusters).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        D = S / sizes[:, None]
    D[sizes == 0] = np.inf
    return D, cats


def greedy_labels(D: np.ndarray, categories: Sequence[int]) -> np.ndarray:
    """Greedy one-to-one matching: closest (cluster, category) pair first; -1 for unlabelled clusters."""
    out = np.full(D.shape[0], NOVEL, dtype=np.int64)
    order = np.argsort(D, axis=None, kind="stable")
    used_c, used_g = np.zeros(D.shape[0], bool), np.zeros(D.shape[1], bool)
    left = min(D.shape[0], D.shape[1])
    for flat in order:
        c, g = divmod(int(flat), D.shape[1])
        if not np.isfinite(D[c, g]):
            break
        if used_c[c] or used_g[g]:
            continue
        out[c] = categories[g]
        used_c[c] = used_g[g] = True
        left -= 1
        if left == 0:
            break
    return out


# -- ground truth matching ----------------------------------------------------------------------------------
def gt_class_of_proposals(records: Sequence[dict], gt: dict, iou_thr: float = 0.5) -> np.ndarray:
    """Category of the best-overlapping non-crowd GT mask (IoU >= iou_thr) of every proposal, else -1."""
    imgs = {im["id"]: im for im in gt["images"]}
    by_img: dict[int, list[dict]] = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            by_img[a["image_id"]].append(a)
    prop_by_img: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        prop_by_img[r["image_id"]].append(i)
    out = np.full(len(records), -1, dtype=np.int64)
    for img_id, idx in prop_by_img.items():
        anns = by_img.get(img_id, [])
        if not anns:
            continue
        im = imgs.get(img_id)
        if im is None:
            raise LongtailError(f"proposals reference image {img_id} which is not in the ground truth JSON; "
                                f"evaluate the proposals against the dataset they were made on")
        g = [to_rle(a["segmentation"], im["height"], im["width"], source=f"annotation {a.get('id', '?')}")
             for a in anns]
        p = [to_rle(records[i]["segmentation"], im["height"], im["width"], source=f"proposal {i}") for i in idx]
        iou = np.asarray(mask_utils.iou(p, g, [0] * len(g))).reshape(len(p), len(g))
        best = iou.argmax(1)
        ok = iou[np.arange(len(p)), best] >= iou_thr
        cats = np.array([a["category_id"] for a in anns])
        out[np.asarray(idx)[ok]] = cats[best[ok]]
    return out


# -- purity -------------------------------------------------------------------------------------------------
def purity(cluster_of: np.ndarray, gt_class: np.ndarray, cluster_label: np.ndarray | None = None,
           groups: dict[int, str] | None = None) -> dict:
    """Purity of the clusters over the items with a GT class (gt_class >= 0).

    With ``cluster_label`` only labelled clusters (label != -1) count, as in Table 3; with ``groups``
    (category id -> group name) also per group of the cluster's label.
    """
    keep = gt_class >= 0
    cl, gc = cluster_of[keep], gt_class[keep]
    if cluster_label is not None:
        lab = cluster_label[cl]
        m = lab != NOVEL
        cl, gc, lab = cl[m], gc[m], lab[m]
    res: dict = {}
    majority: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for c in np.unique(cl):
        _vals, counts = np.unique(gc[cl == c], return_counts=True)
        majority[int(c)] = int(counts.max())
        sizes[int(c)] = int(counts.sum())
    n = sum(sizes.values())
    res["purity"] = float(sum(majority.values()) / n) if n else 0.0
    res["items"] = int(n)
    res["clusters"] = len(sizes)
    if groups is not None and cluster_label is not None:
        for gname in sorted(set(groups.values())):
            cs = [c for c in sizes if groups.get(int(cluster_label[c])) == gname]
            ng = sum(sizes[c] for c in cs)
            res[f"purity_{gname}"] = float(sum(majority[c] for c in cs) / ng) if ng else None
            res[f"clusters_{gname}"] = len(cs)
    return res


# -- detections and AP --------------------------------------------------------------------------------------
def detections(records: Sequence[dict], proposal_ids: np.ndarray, cluster_of: np.ndarray,
               cluster_label: np.ndarray) -> list[dict]:
    """COCO results: each embedded proposal with its cluster's category and its own score (novel: skipped)."""
    out = []
    for pid, c in zip(proposal_ids.tolist(), cluster_of.tolist()):
        cat = int(cluster_label[c])
        if cat == NOVEL:
            continue
        r = records[pid]
        out.append({"image_id": int(r["image_id"]), "category_id": cat, "segmentation": r["segmentation"],
                    "score": float(r["score"])})
    return out


@contextlib.contextmanager
def _quiet():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def gt_by_image(gt: dict) -> AnnotationsByImage:
    """Where every image's annotations of ``gt`` are (a list of dicts or :func:`read_gt`'s packed ones)."""
    return AnnotationsByImage(gt["annotations"])


def gt_subset(gt: dict, by_img: AnnotationsByImage, img_ids: Iterable[int]) -> dict:
    """``gt`` restricted to ``img_ids`` (its other keys kept): the ground truth of one chunk of images, its
    annotations parsed (packed) or shallow copies, so an evaluator's in-place edits (RLE, ignore flags) stay
    in the chunk."""
    ids = {int(i) for i in img_ids}
    return {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
            "annotations": images_annotations(gt, by_img, ids)}


class _EvalImgs:
    """The per (category, area range, image) results of pycocotools' / lvis' ``evaluate`` over every chunk of
    images, for one ``accumulate``: read as their flat list (category-major, then area, then image; None where
    an image has neither GT nor detections of a category), stored compact.

    Compact = only what ``accumulate`` reads (scores, the matched flag per IoU threshold as bool instead of the
    matched id, ignore flags; LVIS: the detection ids), each chunk's entries concatenated into one array per
    field, an entry being its slices (made when ``accumulate`` reads it). Memory: 8 + 2 x 10 bytes a detection
    and area range (+ 8 for LVIS ids), 1 byte a GT and range, 32 bytes an (image, category, range) with GT or
    detections. ``accumulate`` only tests the matched id against 0, so AP is the same to the bit.
    """

    def __init__(self, keys: dict[str, str], n_imgs: int):
        self.keys, self.n_imgs, self.size = keys, n_imgs, 0
        self._firsts: list[int] = []          # per chunk: its first image's position
        self._chunks: list[tuple] = []        # per chunk: (flat indices, detection offsets, GT offsets, arrays)

    def add(self, chunk: Sequence[dict | None], first: int, n: int) -> None:
        """One chunk's ``evalImgs`` (over its ``n`` images, the ``first``-th.. of all) merged in."""
        self.size = len(chunk) // n * self.n_imgs
        k = self.keys
        flat, es = [], []
        for j, e in enumerate(chunk):
            if e is not None:
                ka, i = divmod(j, n)
                flat.append(ka * self.n_imgs + first + i)      # ascending: j is
                es.append(e)
        if not es:
            return
        t = np.asarray(es[0][k["matches"]]).shape[0]
        d = np.cumsum([0] + [len(e[k["scores"]]) for e in es])
        g = np.cumsum([0] + [len(e[k["gt_ignore"]]) for e in es])
        arrays = {k["scores"]: np.concatenate([np.asarray(e[k["scores"]], np.float64).reshape(-1) for e in es]),
                  k["matches"]: np.concatenate([np.asarray(e[k["matches"]]).reshape(t, -1) != 0 for e in es], 1),
                  k["dt_ignore"]: np.concatenate([np.asarray(e[k["dt_ignore"]], bool).reshape(t, -1) for e in es], 1),
                  k["gt_ignore"]: np.concatenate([np.asarray(e[k["gt_ignore"]]).astype(bool).reshape(-1)
                                                  for e in es])}
        if "ids" in k:
            arrays[k["ids"]] = np.concatenate([np.asarray(e[k["ids"]], np.int64).reshape(-1) for e in es])
        self._firsts.append(first)
        self._chunks.append((np.asarray(flat, np.int64), d, g, arrays))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        c = bisect.bisect_right(self._firsts, i % self.n_imgs) - 1
        if c < 0:
            return None
        flat, d, g, arrays = self._chunks[c]
        j = int(np.searchsorted(flat, i))
        if j == len(flat) or flat[j] != i:
            return None
        k = self.keys
        out = {name: arrays[name][..., d[j]:d[j + 1]] for name in (k["scores"], k["matches"], k["dt_ignore"])}
        out[k["gt_ignore"]] = arrays[k["gt_ignore"]][g[j]:g[j + 1]]
        if "ids" in k:
            out[k["ids"]] = arrays[k["ids"]][d[j]:d[j + 1]]
        return out


class _Chunks:
    """What :class:`CocoChunks` and :class:`LvisChunks` share: the evaluated images in ascending id, chunks of
    them as consecutive runs, the ground truth by image, the merged per-image results."""

    def _start(self, gt: dict, img_ids: Iterable[int], keys: dict[str, str]) -> None:
        self.img_ids = sorted({int(i) for i in img_ids})
        self._pos = {i: n for n, i in enumerate(self.img_ids)}
        self.gt, self.by_img = gt, gt_by_image(gt)
        self.n_dets, self._ev, self._next = 0, None, 0
        self.merged = _EvalImgs(keys, len(self.img_ids))

    def _chunk(self, img_ids: Iterable[int]) -> list[int]:
        """The evaluated images of ``img_ids``, checked to be the next run of them."""
        ids = sorted(i for i in {int(i) for i in img_ids} if i in self._pos)
        if ids and (self._pos[ids[0]] != self._next or self._pos[ids[-1]] != self._next + len(ids) - 1):
            raise LongtailError(f"{type(self).__name__}.add: chunks must be consecutive runs of the image ids, "
                                f"in order")
        return ids

    def _merge(self, ev, eval_imgs: Sequence[dict | None], n: int) -> None:
        self.merged.add(eval_imgs, self._next, n)
        self._next += n
        self._ev = ev

    def _check_complete(self) -> None:
        if self._next != len(self.img_ids):
            raise LongtailError(f"{type(self).__name__}: {self._next} of the {len(self.img_ids)} evaluated images "
                                f"were added; add every chunk before the result")


class CocoChunks(_Chunks):
    """Segm AP (pycocotools) on ``cat_ids`` x ``img_ids``, evaluated chunk by chunk of images (:meth:`add`) and
    accumulated once (:meth:`result`): the same numbers as one ``COCOeval`` over every image (the per-image
    results are independent; ``accumulate`` reads them in image order). Categories without GT in ``img_ids``
    are ignored; chunks must come in ascending image id."""

    def __init__(self, gt: dict, cat_ids: Iterable[int], img_ids: Iterable[int], max_dets: int = 100):
        self._start(gt, img_ids, {"scores": "dtScores", "matches": "dtMatches", "dt_ignore": "dtIgnore",
                                  "gt_ignore": "gtIgnore"})
        img, cat = (annotation_column(gt["annotations"], key) for key in ("image_id", "category_id"))
        gt_ids = set(cat[np.isin(img, np.fromiter(self._pos, np.int64, len(self._pos)))].tolist())
        self.cats = [c for c in sorted({int(c) for c in cat_ids}) if c in gt_ids]
        if not self.cats:
            raise LongtailError("evaluation: none of the evaluated categories has a ground-truth instance in the "
                                "evaluated images; choose other categories (discovery.eval_categories) or images")
        self.max_dets = max_dets

    def add(self, img_ids: Iterable[int], dets: Sequence[dict]) -> None:
        """Evaluate the images ``img_ids`` (those of the evaluated ones) with their detections ``dets``."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        ids = self._chunk(img_ids)
        if not ids:
            return
        cats, keep = set(self.cats), set(ids)
        dets = [dict(d) for d in dets if d["category_id"] in cats and d["image_id"] in keep]
        self.n_dets += len(dets)
        with _quiet():
            cg = COCO()
            cg.dataset = {k: v for k, v in gt_subset(self.gt, self.by_img, ids).items()
                          if k in ("images", "annotations", "categories")}
            cg.dataset.setdefault("info", {})
            cg.createIndex()
            if dets:
                cd = cg.loadRes(dets)
            else:
                cd = COCO()
                cd.dataset = {"images": cg.dataset["images"], "categories": cg.dataset["categories"],
                              "annotations": []}
                cd.createIndex()
            ev = COCOeval(cg, cd, "segm")
            ev.params.catIds = self.cats
            ev.params.imgIds = ids
            ev.params.maxDets = [1, 10, self.max_dets]
            ev.evaluate()
        self._merge(ev, ev.evalImgs, len(ids))
        ev.evalImgs, ev.ious, ev._gts, ev._dts = [], {}, None, None

    def result(self) -> dict:
        self._check_complete()
        if not self.n_dets:
            return {**{k: 0.0 for k in COCO_KEYS}, "categories_evaluated": len(self.cats), "detections": 0}
        ev = self._ev
        ev.params.imgIds = self.img_ids
        ev._paramsEval = copy.deepcopy(ev.params)
        ev.evalImgs = self.merged
        with _quiet():
            ev.accumulate()
            ev.summarize()
        stats = [float(s) for s in ev.stats[:6]]
        # -1 = no GT in that area range: report 0 would be wrong, keep None
        return {**{k: (v if v >= 0 else None) for k, v in zip(COCO_KEYS, stats)},
                "categories_evaluated": len(self.cats), "detections": self.n_dets}


def coco_eval(gt: dict, dets: list[dict], cat_ids: Iterable[int], img_ids: Iterable[int],
              max_dets: int = 100) -> dict:
    """Segm AP (pycocotools) on ``cat_ids`` x ``img_ids``; categories without GT there are ignored. All images
    in one chunk (:class:`CocoChunks`)."""
    ev = CocoChunks(gt, cat_ids, img_ids, max_dets)
    ev.add(ev.img_ids, dets)
    return ev.result()


def _lvis_from_dict(d: dict):
    from lvis import LVIS

    obj = LVIS.__new__(LVIS)
    obj.logger = logging.getLogger("lvis")
    obj.dataset = d
    obj._create_index()
    return obj


def lvis_gt_as_results(gt: dict) -> list[dict]:
    """Ground-truth annotations as detections (score 1, RLE masks): must evaluate to AP = 1."""
    imgs = {im["id"]: im for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        im = imgs[a["image_id"]]
        rle = rle_for_json(to_rle(a["segmentation"], im["height"], im["width"],
                                  source=f"annotation {a.get('id', '?')}"))
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": rle,
                    "score": 1.0})
    return out


def is_lvis(gt: dict) -> bool:
    """True for federated LVIS ground truth (what ``longtail prepare`` writes in the LVIS label space): every
    category has a frequency group, every image its neg_category_ids / not_exhaustive_category_ids."""
    return (bool(gt["categories"]) and all("frequency" in c for c in gt["categories"])
            and all("neg_category_ids" in im and "not_exhaustive_category_ids" in im for im in gt["images"]))


class LvisChunks(_Chunks):
    """LVIS segm AP (the ``lvis`` API) incl. APr/APc/APf, restricted to ``img_ids`` if given, evaluated chunk by
    chunk of images (:meth:`add`, ascending image id) and accumulated once (:meth:`result`): the same numbers as
    one ``LVISEval`` over every image (per-image results, the at most ``max_dets`` detections an image, the
    federated negative / not-exhaustive lists are all per image).

    ``cat_ids`` restricts the averages to those categories (APr/c/f then average over their frequency groups);
    ``subsets`` (name -> category ids, e.g. ``{"novel": [...]}`` for Table 1) adds the same numbers over each
    subset under its name, from the same evaluation (per-category precision does not depend on the other
    categories). The at most ``max_dets`` detections per image are chosen among all categories first, as in a
    full LVIS evaluation.

    Memory: ``LVISEval.evaluate`` makes an entry (key tuple, empty list) per (image, category) pair of its
    images in each of ``_gts``, ``_dts`` and ``ious`` (~700 B a pair: +430 MB for 500 images x 1230 categories,
    measured), so :meth:`add` evaluates a chunk in runs of at most ``max_pairs`` pairs (consecutive images).
    """

    #: (image, category) pairs of one ``LVISEval`` run (runs of 81 images with LVIS's 1230 categories)
    max_pairs = 100_000

    def __init__(self, gt: dict | str, img_ids: Iterable[int] | None = None, max_dets: int = 300,
                 cat_ids: Iterable[int] | None = None, subsets: dict[str, Iterable[int]] | None = None):
        if isinstance(gt, str):
            from longtail.common.io import read_json

            gt = read_json(gt, "LVIS annotation file")
        if img_ids is not None:
            keep = {int(i) for i in img_ids} & {im["id"] for im in gt["images"]}
            if not keep:
                raise LongtailError("LVIS evaluation: no evaluated image is in the LVIS annotation file; "
                                    "set discovery.lvis_json to the LVIS file of these images (or null)")
            anns = gt["annotations"]
            inside = np.flatnonzero(np.isin(annotation_column(anns, "image_id"),
                                            np.fromiter(keep, np.int64, len(keep))))
            gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
                  "annotations": (anns.subset(inside) if isinstance(anns, PackedAnnotations)
                                  else [anns[j] for j in inside.tolist()])}
        self._start(gt, (im["id"] for im in gt["images"]), {
            "scores": "dt_scores", "matches": "dt_matches", "dt_ignore": "dt_ignore", "gt_ignore": "gt_ignore",
            "ids": "dt_ids"})
        all_cats = {c["id"] for c in gt["categories"]}
        groups = {None: all_cats if cat_ids is None else cat_ids, **(subsets or {})}
        self.groups = {name: sorted({int(c) for c in ids} & all_cats) for name, ids in groups.items()}
        for name, ids in self.groups.items():
            if not ids:
                raise LongtailError(f"LVIS evaluation: none of the {name or 'evaluated'} categories is a category "
                                    f"of the LVIS ground truth; check discovery.eval_categories and the categories "
                                    f"of --gt")
        self.cats = sorted(set().union(*self.groups.values()))
        self.with_gt = set(annotation_column(gt["annotations"], "category_id").tolist())
        self.max_dets = max_dets

    def add(self, img_ids: Iterable[int], dets: Sequence[dict]) -> None:
        """Evaluate the images ``img_ids`` (those of the LVIS ground truth) with their detections ``dets``."""
        ids = self._chunk(img_ids)
        by_img = defaultdict(list)                     # each image's detections in their order
        for d in dets:
            by_img[d["image_id"]].append(d)
        step = max(1, self.max_pairs // len(self.cats))
        for s in range(0, len(ids), step):
            run = ids[s:s + step]
            self._add_run(run, [d for i in run for d in by_img.get(i, ())])

    def _add_run(self, ids: list[int], dets: list[dict]) -> None:
        """One ``LVISEval`` over the images ``ids`` (the next run) and their detections ``dets``."""
        from lvis import LVISEval, LVISResults

        dets = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
        for d in dets:  # LVISResults computes area from bytes RLE
            d["segmentation"] = rle_for_pycocotools(d["segmentation"])
        self.n_dets += len(dets)
        logging.getLogger("lvis").setLevel(logging.WARNING)
        lg = _lvis_from_dict(gt_subset(self.gt, self.by_img, ids))
        with _quiet():
            if dets:
                res = LVISResults(lg, dets, max_dets=self.max_dets)
            else:
                res = LVISResults.__new__(LVISResults)
                res.logger, res.dataset = logging.getLogger("lvis"), {**lg.dataset, "annotations": []}
                res._create_index()
            ev = LVISEval(lg, res, "segm")
            ev.params.cat_ids = self.cats
            ev.evaluate()
        self._merge(ev, ev.eval_imgs, len(ids))
        ev.eval_imgs, ev.ious, ev._gts, ev._dts = [], {}, None, None

    def result(self) -> dict:
        self._check_complete()

        def counts(ids):
            return {"detections": self.n_dets, "images": len(self.img_ids),
                    "categories_evaluated": len(self.with_gt & set(ids))}

        if not self.n_dets:
            out = {name: {**{k: 0.0 for k in LVIS_KEYS}, **counts(ids)} for name, ids in self.groups.items()}
            return {**out.pop(None), **out}
        ev = self._ev
        ev.params.img_ids = self.img_ids
        ev.eval_imgs = self.merged
        with _quiet():
            ev.accumulate()
        full, freq_groups = dict(ev.eval), ev.freq_groups
        pos = {c: i for i, c in enumerate(ev.params.cat_ids)}
        out = {}
        for name, ids in self.groups.items():
            idx = [pos[c] for c in ids]
            group_of = {i: g for g, members in enumerate(freq_groups) for i in members}
            ev.eval = {**full, "precision": full["precision"][:, :, idx], "recall": full["recall"][:, idx]}
            ev.freq_groups = [[j for j, i in enumerate(idx) if group_of[i] == g] for g in range(len(freq_groups))]
            ev.results.clear()
            with _quiet():
                ev.summarize()
            r = ev.get_results()
            out[name] = {**{k: (float(r[k]) if r[k] >= 0 else None) for k in LVIS_KEYS}, **counts(ids)}
        return {**out.pop(None), **out}


def lvis_eval(gt: dict | str, dets: list[dict], img_ids: Iterable[int] | None = None,
              max_dets: int = 300, cat_ids: Iterable[int] | None = None,
              subsets: dict[str, Iterable[int]] | None = None) -> dict:
    """LVIS segm AP of :class:`LvisChunks` with every image in one chunk."""
    ev = LvisChunks(gt, img_ids, max_dets, cat_ids, subsets)
    ev.add(ev.img_ids, dets)
    return ev.result()


def protocol(gt: dict, eval_categories: str) -> dict:
    """What an evaluation shows (the report's Tables 1 and 3 print it): label space, base / novel counts, which
    categories the AP averages over and with which API."""
    lvis = is_lvis(gt)
    n_base = sum(c.get("split") == "base" for c in gt["categories"])
    n_novel = sum(c.get("split") == "novel" for c in gt["categories"])
    space = "LVIS" if lvis else "COCO"
    what = {"novel": f"the {n_novel} novel", "base": f"the {n_base} base", "all": "all"}[eval_categories]
    return {"label_space": space.lower(), "base_categories": n_base, "novel_categories": n_novel,
            "eval_categories": eval_categories, "api": "lvis" if lvis else "pycocotools",
            "description": f"{space} label space, proposal network trained on {n_base} base categories; "
                           f"mask AP over {what} categories "
                           f"({'LVIS API, APr/c/f by LVIS frequency' if lvis else 'pycocotools'})"}


def coco_to_lvis_ids(coco_gt: dict, lvis_gt: dict, synsets: dict) -> dict[int, int]:
    """COCO category id -> LVIS category id through the synsets of data/lvis/coco_to_synset.json."""
    from longtail.data.lvis import coco_to_lvis

    return coco_to_lvis(coco_gt["categories"], lvis_gt["categories"], synsets)
