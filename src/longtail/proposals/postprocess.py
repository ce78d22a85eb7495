"""Per-image top-K after mask NMS (Weng et al. 4.1: 50 proposals, NMS IoU 0.75) and the oracle proposals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from tqdm import tqdm

from longtail.common.masks import rle_for_json, to_rle
from longtail.proposals.format import make_record, mask_nms


def topk_mask_nms(records: Iterable[dict], topk: int, nms_iou: float, progress: bool = True) -> list[dict]:
    """Group records by image; keep at most ``topk`` per image by greedy mask NMS at ``nms_iou``."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_image[int(r["image_id"])].append(r)
    out: list[dict] = []
    for image_id in tqdm(sorted(by_image), desc="mask NMS", unit="img", disable=not progress):
        recs = by_image[image_id]
        keep = mask_nms([r["segmentation"] for r in recs], [r["score"] for r in recs], nms_iou, topk)
        out.extend(recs[i] for i in keep)
    return out


def gt_records(dataset: dict) -> list[dict]:
    """Oracle proposals: every non-crowd GT mask (all categories) with score 1."""
    ims = {im["id"]: im for im in dataset["images"]}
    recs = []
    for a in dataset["annotations"]:
        if a.get("iscrowd", 0):
            continue
        im = ims[a["image_id"]]
        rle = to_rle(a["segmentation"], im["height"], im["width"], source=f"annotation {a.get('id', '?')}")
        recs.append(make_record(a["image_id"], rle_for_json(rle), 1.0, gt_ann_id=int(a.get("id", -1))))
    return recs
