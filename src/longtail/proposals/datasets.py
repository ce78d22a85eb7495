"""COCO datasets for the proposal stage: loading with clear errors, base/novel subsets, class-agnostic views.
(Ground-truth masks as RLE: :mod:`longtail.common.masks`.)"""

from __future__ import annotations

import copy
from pathlib import Path

from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError
from longtail.common.io import read_json
from longtail.common.masks import to_rle

AGNOSTIC_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
SUBSETS = ("base", "novel", "all")


def load_coco(path: str | Path) -> dict:
    """A COCO instances JSON with the keys this stage needs; LongtailError names the file and key."""
    d = read_json(path, "COCO dataset")
    if not isinstance(d, dict):
        raise LongtailError(f"{path}: a COCO instances JSON must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise LongtailError(f"{path}: key '{key}' missing or not a list; produce the file with "
                                f"`longtail prepare` (COCO instances format)")
    for im in d["images"]:
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise LongtailError(f"{path}: image {im.get('id', '?')} lacks '{key}'; rerun `longtail prepare`")
    for a in d["annotations"]:
        for key in ("image_id", "category_id", "segmentation"):
            if key not in a:
                raise LongtailError(f"{path}: annotation {a.get('id', '?')} lacks '{key}'; rerun `longtail prepare`")
    return d


def category_splits(dataset: dict, source: str = "dataset") -> dict[str, set[int]]:
    """{"base", "novel", "all"} -> category ids, from the ``split`` field every category carries."""
    base, novel = set(), set()
    for c in dataset["categories"]:
        split = c.get("split")
        if split == "base":
            base.add(int(c["id"]))
        elif split == "novel":
            novel.add(int(c["id"]))
        else:
            raise LongtailError(f"{source}: category {c.get('id')} ({c.get('name')}) has split={split!r}, expected "
                                f"'base' or 'novel'; produce the dataset with `longtail prepare`")
    return {"base": base, "novel": novel, "all": base | novel}


def subset(dataset: dict, cat_ids: set[int]) -> dict:
    """The dataset with only annotations of ``cat_ids`` (all images kept)."""
    out = {k: v for k, v in dataset.items() if k != "annotations"}
    out["annotations"] = [a for a in dataset["annotations"] if int(a["category_id"]) in cat_ids]
    return out


def class_agnostic(dataset: dict) -> dict:
    """Every annotation -> the single foreground class 1 ("object"); areas filled in where missing."""
    out = {k: v for k, v in dataset.items() if k not in ("annotations", "categories")}
    out["categories"] = [dict(AGNOSTIC_CATEGORY)]
    ims = {im["id"]: im for im in dataset["images"]}
    anns = []
    for i, a in enumerate(dataset["annotations"]):
        a = copy.copy(a)
        a["category_id"] = 1
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        if "area" not in a or "bbox" not in a:
            im = ims[a["image_id"]]
            rle = to_rle(a["segmentation"], im["height"], im["width"], source=f"annotation {a['id']}")
            a.setdefault("area", float(mask_utils.area(rle)))
            a.setdefault("bbox", mask_utils.toBbox(rle).tolist())
        anns.append(a)
    out["annotations"] = anns
    return out


def images_with_annotations(dataset: dict) -> set[int]:
    return {int(a["image_id"]) for a in dataset["annotations"] if not a.get("iscrowd", 0)}


def image_pseudo_annotations(image: dict, records: list[dict], annotations: list[dict], *, score_thr: float,
                             max_per_image: int, max_overlap: float | None = None) -> list[dict]:
    """Pseudo ground truth for one image: class-agnostic annotations (category 1, no ``id``) made of its
    ``max_per_image`` best-scored proposal ``records`` (:mod:`longtail.proposals.format`) with score >=
    ``score_thr`` and a non-empty mask.

    ``max_overlap``: a record whose mask IoU with one of the image's own ``annotations`` exceeds it is left out
    before the top-k: that object is annotated already, and what is left are the unlabelled objects a
    base-only training would learn as background (the pseudo ground truth of GGN, Wang et al. 2022, "Open-World
    Instance Segmentation: Exploiting Pseudo Ground Truth From Learned Pairwise Affinity"). ``None``: no
    overlap test (FreeSOLO's pseudo-masks).
    """
    from longtail.common.masks import rle_for_pycocotools

    recs = sorted((r for r in records if r["score"] >= score_thr), key=lambda r: -r["score"])
    if not recs or max_per_image <= 0:
        return []
    rles = [rle_for_pycocotools(r["segmentation"]) for r in recs]
    keep = range(len(recs))
    if max_overlap is not None and annotations:
        gt = [to_rle(a["segmentation"], image["height"], image["width"],
                     source=f"annotation {a.get('id', '?')} of image {image['id']}") for a in annotations]
        iou = mask_utils.iou(rles, gt, [0] * len(gt))
        keep = [i for i in keep if float(iou[i].max()) <= max_overlap]
    out = []
    for i in keep:
        area = float(mask_utils.area(rles[i]))
        x, y, w, h = (float(v) for v in recs[i]["bbox"])
        if area < 1 or w < 1 or h < 1:
            continue
        out.append({"image_id": int(image["id"]), "category_id": 1, "segmentation": dict(recs[i]["segmentation"]),
                    "area": area, "bbox": [x, y, w, h], "iscrowd": 0, "score": float(recs[i]["score"])})
        if len(out) == max_per_image:
            break
    return out
