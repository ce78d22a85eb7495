"""Class-agnostic proposal evaluation with pycocotools (``useCats=0``) on base, novel and all categories.

For a subset, the GT is that subset's (non-crowd and crowd) annotations on *every* image of the dataset; all
proposals are scored against it. AR is therefore the recall of that subset's objects, and AP counts proposals
on objects of the other subset as false positives (the usual open-world protocol).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from longtail.proposals.datasets import SUBSETS, category_splits, class_agnostic, subset

#: names of COCOeval.stats in order
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _coco_from_dict(d: dict) -> COCO:
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_eval(gt: dict, records: list[dict], iou_type: str = "segm", max_dets=(1, 10, 100)) -> dict[str, float]:
    """COCOeval with useCats=0 -> {AP, AP50, ..., AR100, ...}; -1 where the GT has no instance (COCO convention)."""
    gt = class_agnostic(gt)
    if not any(not a.get("iscrowd", 0) for a in gt["annotations"]):
        return {k: -1.0 for k in STAT_NAMES}
    if not records:
        return {k: 0.0 for k in STAT_NAMES}
    coco_gt = _coco_from_dict(gt)
    img_ids = {im["id"] for im in gt["images"]}
    dets = [dict(r, category_id=1) for r in records if r["image_id"] in img_ids]
    if not dets:
        return {k: 0.0 for k in STAT_NAMES}
    if iou_type == "bbox":
        dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.imgIds = sorted(img_ids)
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, np.asarray(ev.stats).tolist())}


def evaluate_proposals(dataset: dict, records: list[dict], iou_type: str = "segm") -> dict[str, dict]:
    """{"base": stats, "novel": stats, "all": stats, "num_gt": {...}}."""
    splits = category_splits(dataset)
    out: dict[str, dict] = {}
    num_gt = {}
    for name in SUBSETS:
        sub = subset(dataset, splits[name])
        num_gt[name] = sum(1 for a in sub["annotations"] if not a.get("iscrowd", 0))
        out[name] = coco_eval(sub, records, iou_type)
    out["num_gt"] = num_gt
    return out
