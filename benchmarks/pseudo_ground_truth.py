"""What the pseudo ground truth of ``train-proposals --pseudo`` is (proposals.train.pseudo): for K pseudo masks per
image (the best-scored proposals of an annotation-free set that match no base annotation, as training builds
them), the share that is a novel object (mask IoU >= 0.5 with a novel annotation), a base object, or neither,
and the share of the novel annotations they cover. Needs a COCO set with the novel annotations (train.json).

    .venv/bin/python benchmarks/pseudo_ground_truth.py --proposals results/proposals/ucm/train \
        --dataset results/data/train.json --k 5 10 20 30

Numbers: docs/benchmarks-proposals.md ("Pseudo ground truth").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pseudo_quality(proposals: Path, dataset: Path, ks: list[int], max_overlap: float, iou: float) -> list[dict]:
    from pycocotools import mask as mask_utils

    from longtail.common.masks import to_rle
    from longtail.proposals.datasets import category_splits, image_pseudo_annotations, load_coco
    from longtail.proposals.format import ProposalReader

    d = load_coco(dataset)
    splits = category_splits(d, str(dataset))
    base: dict[int, list] = {}
    novel: dict[int, list] = {}
    for a in d["annotations"]:
        if not a.get("iscrowd", 0):
            (base if a["category_id"] in splits["base"] else novel).setdefault(a["image_id"], []).append(a)
    counts = {k: {"kept": 0, "on_novel": 0, "on_base": 0, "covered": set()} for k in ks}
    with ProposalReader(proposals) as reader:
        images = [im for im in d["images"] if im["id"] in reader]
        n_novel = sum(len(novel.get(im["id"], [])) for im in images)
        for im in images:                                   # one image's proposals in memory at a time
            recs = reader.read(im["id"])
            gts = {which: (anns, [to_rle(a["segmentation"], im["height"], im["width"]) for a in anns])
                   for which, anns in (("novel", novel.get(im["id"], [])), ("base", base.get(im["id"], [])))}
            for k in ks:
                c = counts[k]
                anns = image_pseudo_annotations(im, recs, base.get(im["id"], []), score_thr=float("-inf"),
                                                max_per_image=k, max_overlap=max_overlap)
                c["kept"] += len(anns)
                if not anns:
                    continue
                rles = [to_rle(a["segmentation"], im["height"], im["width"]) for a in anns]
                for which, (gt_anns, g) in gts.items():
                    if not g:
                        continue
                    m = mask_utils.iou(rles, g, [0] * len(g))
                    c[f"on_{which}"] += int((m.max(1) >= iou).sum())
                    if which == "novel":
                        c["covered"] |= {gt_anns[j]["id"] for j in range(len(g)) if m[:, j].max() >= iou}
    rows = []
    for k in ks:
        c = counts[k]
        rows.append({"k": k, "images": len(images), "pseudo_masks": c["kept"],
                     "novel_objects": c["on_novel"], "base_objects": c["on_base"],
                     "share_novel": round(c["on_novel"] / max(c["kept"], 1), 3),
                     "novel_annotations_covered": len(c["covered"]), "novel_annotations": n_novel,
                     "novel_recall": round(len(c["covered"]) / max(n_novel, 1), 3)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proposals", type=Path, required=True, help="annotation-free proposal set on the images")
    p.add_argument("--dataset", type=Path, required=True, help="COCO set with base and novel annotations")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20, 30], help="pseudo masks per image")
    p.add_argument("--max-overlap", type=float, default=0.5, help="proposals.train.pseudo.max_overlap")
    p.add_argument("--iou", type=float, default=0.5, help="mask IoU at which a pseudo mask is an annotated object")
    a = p.parse_args()
    for path in (a.proposals, a.dataset):
        if not path.exists():
            p.error(f"{path} does not exist")
    for row in pseudo_quality(a.proposals, a.dataset, a.k, a.max_overlap, a.iou):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
