"""Where a two-stage proposal network loses recall: box recall (IoU >= 0.5, every non-crowd GT box) of the RPN's
proposals (top 50 and top 300 by RPN score) and of the final detections (top 50), on the first N images of a COCO
set. A network whose RPN finds objects but whose RoI scores rank background first shows RPN >> final.

    .venv/bin/python benchmarks/proposal_stage_recall.py --model-dir W/model --dataset results/data/val.json --images 40

``W/model`` is a ``longtail train-proposals`` work dir (its ``config.py`` and ``model.pth``). Numbers:
docs/benchmarks-proposals.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def stage_recall(model_dir: Path, dataset: Path, images: int, repo: Path) -> dict:
    from mmdet.apis import init_detector, inference_detector
    from mmdet.structures.bbox import bbox_overlaps
    from mmengine.config import Config

    from longtail.proposals.runner import CONFIG_FILE, MODEL_FILE, own_checkpoints

    cfg = Config.fromfile(str(model_dir / CONFIG_FILE))
    with own_checkpoints():
        model = init_detector(cfg, str(model_dir / MODEL_FILE), device="cpu")
    coco = json.loads(dataset.read_text())
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            x, y, w, h = a["bbox"]
            boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    rpn_out = {}
    predict = model.rpn_head.predict

    def keep_rpn(*args, **kwargs):
        rpn_out["r"] = predict(*args, **kwargs)
        return rpn_out["r"]

    model.rpn_head.predict = keep_rpn
    hits = {"rpn_top50": 0, "rpn_top300": 0, "final_top50": 0}
    n_gt = 0
    for im in coco["images"][:images]:
        gt = torch.tensor(boxes.get(im["id"], []), dtype=torch.float32).reshape(-1, 4)
        if not len(gt):
            continue
        det = inference_detector(model, str(repo / im["file_name"]))
        rpn = rpn_out["r"][0]
        sx, sy = det.metainfo["scale_factor"]          # RPN boxes are in the resized input's frame
        rb = rpn.bboxes / rpn.bboxes.new_tensor([sx, sy, sx, sy])
        rb = rb[rpn.scores.argsort(descending=True)]
        for key, b in (("rpn_top50", rb[:50]), ("rpn_top300", rb[:300]),
                       ("final_top50", det.pred_instances.bboxes[det.pred_instances.scores.argsort(descending=True)][:50])):
            if len(b):
                hits[key] += int((bbox_overlaps(gt, b).max(1).values >= 0.5).sum())
        n_gt += len(gt)
    return {"gt_boxes": n_gt, **{k: round(v / max(n_gt, 1), 3) for k, v in hits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="train-proposals work dir")
    ap.add_argument("--dataset", type=Path, required=True, help="COCO JSON (file_name relative to --repo)")
    ap.add_argument("--images", type=int, default=40, help="first N images of the set")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    a = ap.parse_args()
    for f in (a.model_dir / "config.py", a.model_dir / "model.pth", a.dataset):
        if not f.is_file():
            ap.error(f"{f} not found: --model-dir is a `longtail train-proposals` work dir, --dataset a COCO JSON")
    print(json.dumps({"model_dir": str(a.model_dir), **stage_recall(a.model_dir, a.dataset, a.images, a.repo)}))


if __name__ == "__main__":
    main()
