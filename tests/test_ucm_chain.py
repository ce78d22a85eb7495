"""The pipeline's UCM-proposal chain on real sample images, verb after verb as rules/hierarchy.smk and
rules/annotation_free.smk / rules/proposals.smk call them: `edges --source <COCO JSON>` -> `ucm --edges` ->
`propose --method ucm --shard 1-of-1` -> `gather-proposals` -> `eval-proposals` (no hand-written tree files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from longtail.cli import main

REPO = Path(__file__).resolve().parents[1]
COCO_VAL = REPO / "data/coco-mini/annotations/instances_val2017.json"


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def _dataset(tmp_path: Path, n: int) -> Path:
    """The first ``n`` annotated coco-mini val images as a `longtail prepare`-style dataset (file_name relative to
    the repo root, categories with their split)."""
    d = json.loads(COCO_VAL.read_text())
    ids = sorted({a["image_id"] for a in d["annotations"]})[:n]
    images = [dict(im, file_name=f"data/coco-mini/val2017/{im['file_name']}") for im in d["images"] if im["id"] in ids]
    cats = [dict(c, split="base" if c["id"] <= 20 else "novel") for c in d["categories"]]
    out = tmp_path / "data" / "val.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"images": images, "categories": cats,
                               "annotations": [a for a in d["annotations"] if a["image_id"] in ids]}))
    return out


def test_edges_ucm_propose_chain_on_sample_images(tmp_path):
    from longtail.common.masks import decode_mask
    from longtail.hierarchy import load_region_tree, region_trees
    from longtail.proposals.evaluation import coco_eval
    from longtail.proposals.format import mask_iou_matrix, read_proposals

    ds = _dataset(tmp_path, 2)
    d = json.loads(ds.read_text())
    images = {im["id"]: im for im in d["images"]}
    hier, prop = tmp_path / "hierarchy", tmp_path / "proposals"
    # rules/hierarchy.smk: hierarchy_edges, hierarchy_ucm (imgset val)
    assert main(["edges", "--source", str(ds), "--out-dir", str(hier / "edges" / "val"),
                 "--metrics", str(hier / "metrics" / "edges_val.json")]) == 0
    assert main(["ucm", "--edges", str(hier / "edges" / "val"), "--out-dir", str(hier / "ucm" / "val"),
                 "--metrics", str(hier / "metrics" / "ucm_val.json"),
                 "--figure", str(hier / "figures" / "hierarchy_val.png")]) == 0
    assert json.loads((hier / "metrics" / "edges_val.json").read_text())["n_images"] == 2
    assert json.loads((hier / "metrics" / "ucm_val.json").read_text())["n_images"] == 2
    # one tree per image, at the image's size
    paths = region_trees(hier / "ucm" / "val")
    for im in d["images"]:
        tree = load_region_tree(paths[im["id"]])
        assert tree.leaf_labels.shape == (im["height"], im["width"]) and tree.n_leaves > 1
    # rules/annotation_free.smk propose_ucm (tree_dir = <hierarchy>/ucm, the split's folder under it), then
    # rules/proposals.smk gather_proposals and eval_proposals
    out = prop / "ucm" / "val"
    sets = ["--set", f"annotation_free.ucm.tree_dir={hier / 'ucm'}"]
    assert main(["propose", "--method", "ucm", "--dataset", str(ds), "--out-dir", str(out), "--shard", "1-of-1",
                 *sets]) == 0
    assert (out / "shards" / "1-of-1.jsonl").exists()
    assert main(["gather-proposals", "--proposals", str(out)]) == 0
    metrics = prop / "ucm" / "metrics_val.json"
    assert main(["eval-proposals", "--proposals", str(out), "--dataset", str(ds), "--out", str(metrics),
                 "--figure", str(prop / "ucm" / "metrics_val.png")]) == 0

    from longtail.common.params import load_params, section

    af = section(load_params(), "annotation_free")
    index, recs = read_proposals(out)
    # every image covered, none skipped; each mask at its image's size; top-K and mask NMS per image
    assert sorted(im["id"] for im in index["images"]) == sorted(images)
    assert not index.get("images_skipped")
    assert {r["image_id"] for r in recs} == set(images)
    nms = section(load_params(), "proposals")["nms_iou"]
    for i, im in images.items():
        mine = [r for r in recs if r["image_id"] == i]
        assert 10 < len(mine) <= af["topk"]
        for r in mine:
            assert r["segmentation"]["size"] == [im["height"], im["width"]]
            assert decode_mask(r["segmentation"]).any()
        scores = [r["score"] for r in mine]
        assert scores == sorted(scores, reverse=True)
        iou = mask_iou_matrix([r["segmentation"] for r in mine], [r["segmentation"] for r in mine])
        np.fill_diagonal(iou, 0)
        assert iou.max() <= nms + 1e-6
    # eval-proposals' AR is COCOeval's on the proposals read back; real recall from HED trees
    m = json.loads(metrics.read_text())
    ref = coco_eval(d, recs)
    assert m["images_evaluated"] == 2 and m["segm"]["all"]["AR100"] == pytest.approx(ref["AR100"])
    assert m["segm"]["num_gt"]["all"] == sum(1 for a in d["annotations"] if not a.get("iscrowd", 0))
    print(f"UCM chain: {len(recs)} proposals on 2 images, AR@100 {ref['AR100']:.3f}")
    assert ref["AR100"] > 0.15, ref
