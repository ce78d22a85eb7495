"""Free Mask / spectral speed on the CPU (issue 6 target: Free Mask < 2 s per 800-px image).

    python benchmarks/annotation_free_speed.py --images 5 --short-side 800 [--checkpoint results/hierarchy/pixel_embedding.pt]

Times, per image, the backbone forward pass and Free Mask (queries, similarities, maskness, matrix NMS, upsampling)
separately, with the params.yaml settings (annotation_free.*); prints one JSON line with means.
Without --checkpoint the pixel-embedding network has seeded random weights (same cost as a trained one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longtail import REPO_ROOT
from longtail.common.params import load_params
from longtail.proposals.annotation_free.backbone import (
    build_backbone,
    downsample_features,
    load_image,
    resize_short_side,
)
from longtail.proposals.annotation_free.freemask import free_mask
from longtail.proposals.annotation_free.spectral import spectral_masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--short-side", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--spectral", action="store_true", help="also time the spectral masks")
    ap.add_argument("--resnet50-layer3", action="store_true",
                    help="torchvision ResNet-50 up to layer3 (stride 16, 1024-d; DenseCL-like) instead, no pooling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_params()["annotation_free"]
    bcfg = dict(cfg["backbone"])
    fc, sc = dict(cfg["freemask"]), dict(cfg["spectral"])
    if args.resnet50_layer3:
        bcfg = {"type": "torchvision", "arch": "resnet50", "layer": "layer3", "checkpoint": args.checkpoint,
                "stride": 16, "channels": 1024}
        fc["feature_pool"] = sc["feature_pool"] = 1
    elif args.checkpoint:
        bcfg["checkpoint"] = args.checkpoint
    else:
        from longtail.hierarchy.pixel_embedding import PixelEmbeddingNet

        torch.manual_seed(0)
        tmp = Path(tempfile.mkdtemp()) / "pe.pt"
        torch.save({"config": {"dim": bcfg["channels"], "proj": 256}, "state_dict": PixelEmbeddingNet(
            dim=bcfg["channels"]).state_dict()}, tmp)
        bcfg["checkpoint"] = str(tmp)
    bb = build_backbone(bcfg)
    files = sorted((REPO_ROOT / "data/coco-mini/val2017").glob("*.jpg"))[:args.images]
    t_feat, t_fm, t_sp, n_masks = [], [], [], []
    bb.features(resize_short_side(load_image(files[0]), 224, 10000))        # warm-up
    for f in files:
        img = load_image(f)
        small = resize_short_side(img, args.short_side, 100000)
        t = time.perf_counter()
        feat = bb.features(small)
        t_feat.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = free_mask(downsample_features(feat, fc["feature_pool"]), img.shape[:2], scales=fc["scales"],
                      tau=fc["tau"], maskness_thr=fc["maskness_thr"], nms_pre=fc["nms_pre"],
                      nms_kernel=fc["nms_kernel"], nms_sigma=fc["nms_sigma"], max_masks=fc["max_masks"])
        t_fm.append(time.perf_counter() - t)
        n_masks.append(len(r.masks))
        if args.spectral:
            t = time.perf_counter()
            spectral_masks(downsample_features(feat, sc["feature_pool"]), img.shape[:2], ks=sc["ks"],
                           saliency_thr=sc["saliency_thr"], nms_iou=sc["nms_iou"],
                           min_area=int(sc["min_area_frac"] * img.shape[0] * img.shape[1]))
            t_sp.append(time.perf_counter() - t)
    out = {"images": len(files), "short_side": args.short_side, "threads": args.threads,
           "backbone_s": float(np.mean(t_feat)), "freemask_s": float(np.mean(t_fm)),
           "freemask_total_s": float(np.mean(t_feat) + np.mean(t_fm)), "freemask_masks": float(np.mean(n_masks)),
           "feature_map": list(feat.shape), "backbone": bb.name}
    if t_sp:
        out["spectral_s"] = float(np.mean(t_sp))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
