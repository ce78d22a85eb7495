"""Embedding of all proposals and of the ground-truth anchors (Weng et al. 2021, 3.3).

The embedding of an object (proposal or anchor) is its foreground embedding z_fg = f(x_fg): the box crop
with everything outside the mask blanked. Anchors are ``anchors_per_category`` GT masks per category taken
from the TRAIN split's annotations (not crowd, area >= ``anchor_min_area``), chosen at random with the seed;
a category with no eligible annotation has no anchor (listed in the metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError


def select_anchors(gt: dict, per_category: int, seed: int, min_area: float = 0.0,
                   source: str = "ground truth") -> tuple[list[dict], list[int]]:
    """(annotations chosen as anchors sorted by category then id, category ids without any anchor)."""
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
    return chosen, missing


def annotation_rle(ann: dict, height: int, width: int) -> dict:
    """COCO annotation segmentation (polygons, RLE or uncompressed RLE) -> compressed RLE (str counts)."""
    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        raise LongtailError(f"annotation {ann.get('id')}: no segmentation; anchors need masks.")
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return rle


def anchor_records(gt: dict, anns: Sequence[dict]) -> list[dict]:
    """Anchors as proposal-like records ({"image_id", "segmentation"}) for the crop extraction."""
    images = {im["id"]: im for im in gt["images"]}
    out = []
    for a in anns:
        im = images[a["image_id"]]
        out.append({"image_id": a["image_id"], "segmentation": annotation_rle(a, im["height"], im["width"]),
                    "ann_id": a["id"], "category_id": a["category_id"]})
    return out
