"""Speed of the proposal stage on the sample data (results in docs/benchmarks-proposals.md).

    python benchmarks/proposals_bench.py [--dataset results/data/val.json] [--model-dir results/proposals/models/maskrcnn]

Measures: top-K mask NMS and class-agnostic COCO evaluation on the oracle (gt) proposals, and, when a trained
model dir is given, network inference seconds per image (CPU).
"""

from __future__ import annotations

import argparse
import json
import time

from longtail.proposals.datasets import load_coco
from longtail.proposals.evaluation import evaluate_proposals
from longtail.proposals.postprocess import gt_records, topk_mask_nms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="results/data/val.json")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--images", type=int, default=20, help="images for the inference timing")
    args = ap.parse_args()
    d = load_coco(args.dataset)
    out = {"images": len(d["images"])}
    t = time.perf_counter()
    recs = gt_records(d)
    out["gt_records_s"] = time.perf_counter() - t
    # duplicate each mask 4x with jittered scores: a realistic NMS load (many overlapping candidates)
    load = [dict(r, score=r["score"] - 0.01 * i) for r in recs for i in range(4)]
    t = time.perf_counter()
    kept = topk_mask_nms(load, 50, 0.75, progress=False)
    out["mask_nms_s"] = time.perf_counter() - t
    out["mask_nms_candidates"] = len(load)
    out["mask_nms_kept"] = len(kept)
    t = time.perf_counter()
    evaluate_proposals(d, kept)
    out["eval_segm_s"] = time.perf_counter() - t
    if args.model_dir:
        from longtail.proposals.inference import load_model, predict_image

        model = load_model(args.model_dir, "cpu")
        ims = d["images"][: args.images]
        predict_image(model, ims[0])  # warm-up
        t = time.perf_counter()
        for im in ims:
            predict_image(model, im)
        out["inference_s_per_image"] = (time.perf_counter() - t) / len(ims)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
