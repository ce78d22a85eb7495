"""The proposal format every proposal method writes and every downstream stage reads.

``<out>/proposals.json``  COCO results list, one entry per proposal:
    {"image_id", "category_id": 1, "bbox": [x, y, w, h], "segmentation": RLE (counts as str), "score"}
``<out>/index.json``      {"method", "dataset": COCO GT json it was run on, "topk", "nms_iou",
                           "images": [{"id", "file_name", "height", "width", "num_proposals"}], ...}

Proposals are sorted by image then by descending score. The directory is written atomically.
Mask encoding and decoding: :mod:`longtail.common.masks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_dir, read_json, write_json
from longtail.common.masks import encode_mask, rle_for_pycocotools

PROPOSALS_FILE = "proposals.json"
INDEX_FILE = "index.json"


def mask_iou_matrix(a: Sequence[dict], b: Sequence[dict]) -> np.ndarray:
    """Mask IoU between two lists of RLEs (pycocotools)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = [rle_for_pycocotools(r) for r in a], [rle_for_pycocotools(r) for r in b]
    return np.asarray(mask_utils.iou(a, b, [0] * len(b)))


def mask_nms(rles: Sequence[dict], scores: Sequence[float], iou_thr: float, topk: int | None = None) -> list[int]:
    """Greedy mask NMS: indices kept, by descending score, at most ``topk``."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    if len(order) == 0:
        return []
    iou = mask_iou_matrix([rles[i] for i in order], [rles[i] for i in order])
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for pos in range(len(order)):
        if suppressed[pos]:
            continue
        keep.append(int(order[pos]))
        if topk is not None and len(keep) >= topk:
            break
        suppressed |= iou[pos] > iou_thr
    return keep


def make_record(image_id: int, mask: np.ndarray | dict, score: float, **extra) -> dict:
    rle = mask if isinstance(mask, dict) else encode_mask(mask)
    bbox = mask_utils.toBbox(rle_for_pycocotools(rle)).tolist()
    return {"image_id": int(image_id), "category_id": 1, "bbox": [float(v) for v in bbox],
            "segmentation": rle, "score": float(score), **extra}


def write_proposals(out_dir: str | Path, records: Iterable[dict], images: Sequence[dict], *, method: str,
                    dataset: str, topk: int, nms_iou: float, **meta) -> Path:
    """Write proposals.json + index.json into ``out_dir`` atomically."""
    records = sorted(records, key=lambda r: (r["image_id"], -r["score"]))
    counts: dict[int, int] = {}
    for r in records:
        counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
    index = {
        "method": method, "dataset": str(dataset), "topk": topk, "nms_iou": nms_iou,
        "num_proposals": len(records),
        "images": [{"id": int(im["id"]), "file_name": im["file_name"], "height": int(im["height"]),
                    "width": int(im["width"]), "num_proposals": counts.get(int(im["id"]), 0)} for im in images],
        **meta,
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / PROPOSALS_FILE, records, indent=None)
        write_json(tmp / INDEX_FILE, index)
    return Path(out_dir)


def read_proposals(out_dir: str | Path) -> tuple[dict, list[dict]]:
    """Return (index, records); clear error if the directory is not a proposal set."""
    out_dir = Path(out_dir)
    index = read_json(out_dir / INDEX_FILE, "proposal index")
    records = read_json(out_dir / PROPOSALS_FILE, "proposal file")
    if not isinstance(records, list):
        raise LongtailError(f"{out_dir / PROPOSALS_FILE} must be a COCO results list")
    return index, records
