"""Anchor coverage of a COCO-style set: the fraction of its (non-crowd) GT boxes, resized as the CPU Mask R-CNN
configs resize (keep ratio, longer side = --size), whose best mmdet anchor (FPN strides 4-64, ratios 0.5/1/2) reaches
an IoU. The RPN only learns from GT boxes some anchor overlaps by >= 0.3 (`min_pos_iou`).

    .venv/bin/python benchmarks/anchor_coverage.py --dataset results/data/val.json --sizes 256 384 \
        --scales 8 --scales 4 --scales 2 4

Reported in docs/benchmarks-proposals.md ("What limits the box recall").
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.structures.bbox import bbox_overlaps

STRIDES = (4, 8, 16, 32, 64)


def best_anchor_iou(dataset: dict, size: int, scales: list[int]) -> torch.Tensor:
    gen = AnchorGenerator(strides=list(STRIDES), ratios=[0.5, 1.0, 2.0], scales=scales)
    boxes = defaultdict(list)
    for a in dataset["annotations"]:
        if not a.get("iscrowd", 0):
            boxes[a["image_id"]].append(a["bbox"])
    best = []
    for im in dataset["images"]:
        if not boxes[im["id"]]:
            continue
        f = size / max(im["width"], im["height"])
        h, w = round(im["height"] * f), round(im["width"] * f)
        gt = torch.tensor([[x * f, y * f, (x + bw) * f, (y + bh) * f] for x, y, bw, bh in boxes[im["id"]]])
        anchors = torch.cat(gen.grid_priors([(int(np.ceil(h / s)), int(np.ceil(w / s))) for s in STRIDES],
                                            device="cpu"))
        best.append(bbox_overlaps(gt, anchors).max(1).values)
    return torch.cat(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="COCO-style JSON (e.g. results/data/val.json)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--scales", type=int, nargs="+", action="append", help="anchor scales (repeatable)")
    ap.add_argument("--ious", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = ap.parse_args()
    with open(args.dataset) as f:
        dataset = json.load(f)
    for size in args.sizes:
        for scales in args.scales or [[8]]:
            b = best_anchor_iou(dataset, size, scales)
            cover = " ".join(f"IoU>={t}: {(b >= t).float().mean():.3f}" for t in args.ious)
            print(f"{size} px scales {scales} ({len(b)} boxes) {cover}")


if __name__ == "__main__":
    main()
