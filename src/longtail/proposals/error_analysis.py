"""Segmentation error analysis (Chen et al. 2022, section 3), class-agnostic.

Each prediction D_i is matched to the GT mask G_i* of largest mask IoU; below ``match_iou`` (0.1) it is
unmatched and left out of the analysis. The error pixels of a matched prediction split into (eq. 1)
    fFP = D_i & (G - G_i*)     over-segmented foreground of other instances
    bFP = D_i & ~G             over-segmented background
    FN  = G_i* - D_i           under-segmented pixels
with G the union of all GT masks of the image. Correcting one type in every matched prediction
(D - fFP, D - bFP, D | FN) and re-evaluating gives AP_o; dAP_o = AP_o - AP (eq. 2), mask AP@[.5:.95].
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from tqdm import tqdm

from longtail.common.masks import decode_mask, encode_mask, to_rle
from longtail.proposals.datasets import class_agnostic
from longtail.proposals.evaluation import coco_eval
from longtail.proposals.format import mask_iou_matrix

ERROR_TYPES = ("fFP", "bFP", "FN")


def image_errors(gt_rles: list[dict], pred_rles: list[dict], match_iou: float = 0.1):
    """Per prediction: (matched GT index or -1, {type: bool mask}) and the corrected masks per type."""
    out = []
    if not pred_rles:
        return out
    iou = mask_iou_matrix(pred_rles, gt_rles) if gt_rles else np.zeros((len(pred_rles), 0))
    gts = [decode_mask(r) for r in gt_rles]
    union = np.logical_or.reduce(gts) if gts else None
    for i, rle in enumerate(pred_rles):
        if iou.shape[1] == 0 or iou[i].max() < match_iou:
            out.append((-1, None))
            continue
        j = int(iou[i].argmax())
        d = decode_mask(rle)
        g_star = gts[j]
        errs = {"fFP": d & union & ~g_star, "bFP": d & ~union, "FN": g_star & ~d}
        out.append((j, errs))
    return out


def error_analysis(dataset: dict, records: list[dict], match_iou: float = 0.1, progress: bool = True) -> dict:
    """{"AP", "AP_fFP", "dAP_fFP", ..., "pixels": {type: count}, "pixel_fraction": {...}, "matched", ...}."""
    gt_set = class_agnostic(dataset)  # all categories, one class
    ims = {im["id"]: im for im in dataset["images"]}
    gt_by_img: dict[int, list[dict]] = defaultdict(list)
    for a in gt_set["annotations"]:
        if not a.get("iscrowd", 0):
            im = ims[a["image_id"]]
            gt_by_img[a["image_id"]].append(to_rle(a["segmentation"], im["height"], im["width"],
                                                  source=f"annotation {a['id']}"))
    pred_by_img: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        pred_by_img[int(r["image_id"])].append(r)

    corrected = {t: [] for t in ERROR_TYPES}
    pixels = {t: 0 for t in ERROR_TYPES}
    matched = unmatched = 0
    for image_id in tqdm(sorted(pred_by_img), desc="error analysis", unit="img", disable=not progress):
        recs = pred_by_img[image_id]
        res = image_errors(gt_by_img.get(image_id, []), [r["segmentation"] for r in recs], match_iou)
        for r, (j, errs) in zip(recs, res):
            if j < 0:
                unmatched += 1
                for t in ERROR_TYPES:
                    corrected[t].append(r)
                continue
            matched += 1
            d = decode_mask(r["segmentation"])
            for t in ERROR_TYPES:
                pixels[t] += int(errs[t].sum())
                fixed = d | errs[t] if t == "FN" else d & ~errs[t]
                corrected[t].append({**r, "segmentation": encode_mask(fixed)})

    base = coco_eval(gt_set, records)
    out: dict = {"AP": base["AP"], "matched": matched, "unmatched": unmatched, "match_iou": match_iou}
    for t in ERROR_TYPES:
        ap = coco_eval(gt_set, corrected[t])["AP"]
        out[f"AP_{t}"] = ap
        out[f"dAP_{t}"] = ap - base["AP"]
    total = sum(pixels.values())
    out["pixels"] = pixels
    out["pixel_fraction"] = {t: (pixels[t] / total if total else 0.0) for t in ERROR_TYPES}
    return out
