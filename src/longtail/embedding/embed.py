"""Embedding of all proposals and of the ground-truth anchors (Weng et al. 2021, 3.3).

The embedding of an object (proposal or anchor) is its foreground embedding z_fg = f(x_fg): the box crop
with everything outside the mask blanked. Anchors are ``anchors_per_category`` GT masks per category taken
from the TRAIN split's annotations (not crowd, area >= ``anchor_min_area``), chosen at random with the seed;
a category with no eligible annotation has no anchor (listed in the metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from longtail.common.errors import LongtailError
from longtail.common.masks import rle_for_json, to_rle


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
