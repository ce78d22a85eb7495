"""FreeSOLO: weak mask losses (projection Dice, BoxInst pairwise term), pseudo-mask sets, training (slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.proposals.annotation_free.weak_losses import (
    box_bitmasks,
    color_similarity,
    pairwise_log_same,
    projection_losses,
    rgb_to_lab,
    unfold_wo_center,
)

REPO = Path(__file__).resolve().parents[1]
COCO_VAL = REPO / "data/coco-mini/annotations/instances_val2017.json"

os.environ.setdefault("LONGTAIL_MLFLOW", "0")


def test_unfold_wo_center_dilation():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    nb = unfold_wo_center(x, 3, 2)
    assert nb.shape == (1, 1, 8, 5, 5)
    # neighbours of the centre pixel (2, 2) at dilation 2
    assert nb[0, 0, :, 2, 2].tolist() == [0.0, 2.0, 4.0, 10.0, 14.0, 20.0, 22.0, 24.0]
    assert nb[0, 0, :, 0, 0].tolist()[:4] == [0.0, 0.0, 0.0, 0.0]      # zero padding outside the image


def test_projection_losses_box_vs_shape():
    """Max projections only see the box (Eq. 5); average projections also see the shape (Eq. 6)."""
    t = torch.zeros(1, 20, 20)
    idx = torch.arange(4, 16)
    t[0, idx, idx] = 1                               # a diagonal line: its box is 4..15 x 4..15
    box = box_bitmasks(t)
    assert box.sum() == 144
    l_max, l_avg = projection_losses(box, t)
    assert l_max.item() == pytest.approx(0.0, abs=1e-4)
    assert l_avg.item() > 0.5
    l_max_same, l_avg_same = projection_losses(t, t)
    assert l_max_same.item() == pytest.approx(0, abs=1e-3) and l_avg_same.item() == pytest.approx(0, abs=1e-3)
    empty_max, _ = projection_losses(torch.zeros(1, 20, 20), t)
    assert empty_max.item() == pytest.approx(2.0, abs=1e-3)      # two Dice terms of 1 each


def test_pairwise_term_on_real_image():
    """Colour-similar neighbours must agree: a mask following the image's colour edges pays less than one
    cutting across homogeneous regions."""
    from PIL import Image

    d = json.loads(COCO_VAL.read_text())
    im = d["images"][0]
    rgb = np.asarray(Image.open(REPO / "data/coco-mini/val2017" / im["file_name"]).convert("RGB").resize((160, 107)))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    sim = color_similarity(rgb_to_lab(x), 3, 2)
    assert sim.shape == (1, 8, 107, 160) and float(sim.max()) <= 1.0 and float(sim.min()) >= 0.0
    w = (sim >= 0.3).float()
    assert 0.05 < w.mean() < 0.95                                  # real images: some edges, some flat regions
    lab = rgb_to_lab(x)[0, 0]
    aligned = (lab > lab.median()).float() * 20 - 10                # logits following the lightness edges
    gen = torch.Generator().manual_seed(0)
    blocks = (torch.rand(1, 1, 11, 16, generator=gen) > 0.5).float()
    across = torch.nn.functional.interpolate(blocks, size=(107, 160), mode="nearest")[0, 0] * 20 - 10
    loss = lambda logits: float((pairwise_log_same(logits[None], 3, 2) * w[0]).sum() / w.sum())
    assert loss(torch.full((107, 160), 10.0)) < 1e-3                # uniform confident mask: no cost
    assert loss(aligned) < loss(across)


def test_pseudo_coco_and_empty_set():
    from longtail.proposals.annotation_free.freesolo import pseudo_coco
    from longtail.proposals.format import make_record

    ds = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
                     {"id": 2, "file_name": "b.jpg", "height": 10, "width": 10}]}
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    recs = [make_record(1, m, 0.9), make_record(1, m, 0.2), make_record(2, m, 0.1)]
    p = pseudo_coco(ds, recs, score_thr=0.3, max_per_image=5)
    assert [im["id"] for im in p["images"]] == [1] and len(p["annotations"]) == 1
    a = p["annotations"][0]
    assert a["area"] == 15 and a["bbox"] == [3.0, 2.0, 5.0, 3.0] and a["category_id"] == 1
    assert pseudo_coco(ds, recs, score_thr=0.95, max_per_image=5)["annotations"] == []


def test_pairwise_loss_matches_unfolded_definition():
    from longtail.proposals.annotation_free.weak_losses import pairwise_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, 16, generator=gen) * 3
    weights = (torch.rand(5, 8, 12, 16, generator=gen) > 0.4).float()
    ref = (pairwise_log_same(logits, 3, 2) * weights).sum() / weights.sum()
    assert float(pairwise_loss(logits, weights, 3, 2)) == pytest.approx(float(ref), rel=1e-5)


def _gt_pseudo_masks(tmp_path: Path, n_images: int = 2) -> tuple[Path, Path, list[int]]:
    """A training set of ``n_images`` real val images and their annotation masks as a pseudo-mask proposal set
    (to test the training mechanics); returns (dataset json, pseudo dir, image ids)."""
    from pycocotools import mask as mask_utils

    from longtail.proposals.format import make_record, write_proposals

    d = json.loads(COCO_VAL.read_text())
    ids = sorted({a["image_id"] for a in d["annotations"]})[:n_images]
    images = [dict(im, file_name=f"data/coco-mini/val2017/{im['file_name']}") for im in d["images"] if im["id"] in ids]
    cats = [dict(c, split="base") for c in d["categories"]]
    anns = [a for a in d["annotations"] if a["image_id"] in ids and not a.get("iscrowd")]
    ds = tmp_path / "train.json"
    ds.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    recs = []
    for a in anns:
        im = next(i for i in images if i["id"] == a["image_id"])
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"]))
        recs.append(make_record(a["image_id"], mask_utils.decode(rle).astype(bool), 0.9))
    write_proposals(tmp_path / "pseudo" / "train", recs, images, method="gt-masks", dataset=str(ds), topk=100,
                    nms_iou=1.0)
    return ds, tmp_path / "pseudo" / "train", ids


def _rle(seg: dict) -> dict:
    c = seg["counts"]
    return {"size": list(seg["size"]), "counts": c.encode("ascii") if isinstance(c, str) else c}


def _kept_pseudo(records: list[dict], thr: float, per_image: int) -> dict[int, list[str]]:
    """image id -> RLE counts of the pseudo-masks a round trains on: score >= thr, the per_image best per image,
    non-empty (area and box side >= 1 pixel)."""
    from pycocotools import mask as mask_utils

    out: dict[int, list[str]] = {}
    for img in sorted({r["image_id"] for r in records}):
        best = sorted((r for r in records if r["image_id"] == img and r["score"] >= thr), key=lambda r: -r["score"])
        for r in best[:per_image]:
            rle = _rle(r["segmentation"])
            if mask_utils.area(rle) >= 1 and min(mask_utils.toBbox(rle)[2:]) >= 1:
                out.setdefault(img, []).append(rle["counts"].decode())
    return out


def _pseudo_json(path: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for a in json.loads(path.read_text())["annotations"]:
        out.setdefault(a["image_id"], []).append(a["segmentation"]["counts"])
    return out


@pytest.mark.slow
def test_train_freesolo_then_propose(tmp_path, pixel_embedding_ckpt):
    """A whole FreeSOLO run on 2 real images: round 0 on the given pseudo-masks (capped per image) from the
    pixel-embedding backbone (init: hierarchy), one self-training round on round 0's own predictions (initialised
    from round 0's model), the last round's model as the final one; then `propose --method solov2-free` with it:
    valid RLEs, top-K, sorted scores, mask NMS, per image."""
    from pycocotools import mask as mask_utils

    from longtail.cli import main
    from longtail.proposals.format import read_proposals
    from longtail.proposals.inference import predict_dataset

    ds, pseudo_dir, ids = _gt_pseudo_masks(tmp_path)
    work = tmp_path / "fs"
    per_image, pre_nms, topk, nms_iou = 4, 12, 6, 0.5
    sets = ["annotation_free.freesolo.train.max_iters=1", "annotation_free.freesolo.train.scale=[160,160]",
            "annotation_free.freesolo.train.batch_size=1", "annotation_free.freesolo.train.checkpoint_interval=1",
            "annotation_free.freesolo.train.warmup_iters=1", "annotation_free.freesolo.weak_loss.pairwise_warmup_iters=1",
            "annotation_free.freesolo.init=hierarchy",
            f"annotation_free.freesolo.hierarchy_checkpoint={pixel_embedding_ckpt}",
            "annotation_free.freesolo.self_training_rounds=1",
            "annotation_free.freesolo.self_training_score_thr=0.0", f"annotation_free.freesolo.pre_nms={pre_nms}",
            f"annotation_free.freesolo.max_pseudo_per_image={per_image}"]
    argv = ["train-freesolo", "--dataset", str(ds), "--pseudo", str(pseudo_dir), "--work-dir", str(work)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    # round 0 trains on the given pseudo-masks, the best `per_image` of each image
    _, given = read_proposals(pseudo_dir)
    round0 = _pseudo_json(work / "round0" / "data" / "pseudo_masks.json")
    assert round0 == _kept_pseudo(given, 0.0, per_image) and set(round0) == set(ids)
    assert max(len(v) for v in round0.values()) == per_image < max(sum(r["image_id"] == i for r in given) for i in ids)
    # round 1 trains on round 0's model's predictions on the training images, starting from round 0's weights
    dataset = json.loads(ds.read_text())
    preds = predict_dataset(work / "round0", dataset, score_thr=0.0, pre_nms=pre_nms)
    round1 = _pseudo_json(work / "round1" / "data" / "pseudo_masks.json")
    assert round1 and round1 == _kept_pseudo(preds, 0.0, per_image)
    log1 = "".join(p.read_text() for p in (work / "round1").glob("*/*.log"))
    assert f"Load checkpoint from {work / 'round0' / 'model.pth'}" in log1, log1[-2000:]
    m = json.loads((work / "metrics.json").read_text())
    assert [(r["round"], r["iterations"], r["pseudo_masks"]) for r in m["rounds"]] == [
        (0, 1, sum(map(len, round0.values()))), (1, 1, sum(map(len, round1.values())))]
    assert m["final_pseudo_masks"] == m["rounds"][1]["pseudo_masks"] and m["pseudo_method"] == "gt-masks"
    # the final model is the last round's, which trained on from round 0's
    final, r0, r1 = (torch.load(p, map_location="cpu", weights_only=False)["state_dict"]
                     for p in (work / "model.pth", work / "round0" / "model.pth", work / "round1" / "model.pth"))
    assert final.keys() == r1.keys() == r0.keys()
    assert all(torch.equal(final[k], r1[k]) for k in final)
    assert any(not torch.equal(r0[k], r1[k]) for k in r0)
    # init: hierarchy: round 0's backbone started from the pixel embedding's ResNet-50 (round 1 from round 0)
    from longtail.hierarchy.pixel_embedding import load_pixel_embedding

    pe = load_pixel_embedding(pixel_embedding_ckpt).backbone.state_dict()
    moved = torch.load(work / "round0" / "hierarchy_backbone.pth", weights_only=False)["state_dict"]
    assert m["rounds"][0]["backbone_init_tensors"] == len(moved) > 300 and m["rounds"][1]["backbone_init_tensors"] == 0
    assert all(torch.equal(moved[k], pe[k]) for k in moved) and "layer4.2.conv3.weight" in moved
    for k in ("conv1.weight", "layer3.5.conv2.weight"):     # one SGD step away from the pixel embedding's weights
        cos = torch.nn.functional.cosine_similarity(r0[f"backbone.{k}"].flatten(), pe[k].flatten(), dim=0)
        assert cos > 0.99, (k, float(cos))
    assert (work / "config.py").read_text() == (work / "round1" / "config.py").read_text()
    from mmengine.config import Config

    head = Config.fromfile(str(work / "config.py")).model.mask_head
    assert head.type == "FreeSOLOv2Head" and head.weak_loss.alpha == 0.1 and head.weak_loss.dilation == 2
    # the final model as the solov2-free proposal network
    out = tmp_path / "solov2-free" / "train"
    assert main(["propose", "--method", "solov2-free", "--dataset", str(ds), "--out-dir", str(out),
                 "--model-dir", str(work), "--set", f"annotation_free.topk={topk}",
                 "--set", f"proposals.nms_iou={nms_iou}", "--set", "annotation_free.freesolo.score_thr=0.0",
                 "--set", f"annotation_free.freesolo.pre_nms={pre_nms}"]) == 0
    index, props = read_proposals(out)
    assert index["method"] == "solov2-free" and index["topk"] == topk
    sizes = {im["id"]: [im["height"], im["width"]] for im in dataset["images"]}
    assert sorted(im["id"] for im in index["images"]) == sorted(ids)
    assert props                          # (a 1-iteration model may find nothing on an image)
    for im in index["images"]:
        mine = [r for r in props if r["image_id"] == im["id"]]
        assert len(mine) == im["num_proposals"] <= topk
        if not mine:
            continue
        assert [r["score"] for r in mine] == sorted((r["score"] for r in mine), reverse=True)
        rles = [_rle(r["segmentation"]) for r in mine]
        for r, rle in zip(mine, rles):
            mask = mask_utils.decode(rle)
            assert list(mask.shape) == sizes[im["id"]] and mask.any()
            assert r["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())
        iou = mask_utils.iou(rles, rles, [0] * len(rles))
        assert (iou[~np.eye(len(rles), dtype=bool)] <= nms_iou + 1e-9).all()


@pytest.mark.slow
def test_freesolo_round_resumes_from_its_checkpoint(tmp_path):
    """Round 0 and the self-training round 1 (initialised from round 0's model.pth) train 2 iterations; rerun
    with 3, each round resumes from its own iteration-2 checkpoint (mmengine's checkpoints unpickled in full under
    torch >= 2.6, the shared runner's own_checkpoints), not from round 0's weights."""
    from longtail.cli import main

    ds, pseudo, _ = _gt_pseudo_masks(tmp_path)
    work = tmp_path / "fs"
    sets = ["annotation_free.freesolo.train.scale=[160,160]", "annotation_free.freesolo.train.batch_size=1",
            "annotation_free.freesolo.train.checkpoint_interval=1", "annotation_free.freesolo.train.warmup_iters=1",
            "annotation_free.freesolo.weak_loss.pairwise_warmup_iters=1", "annotation_free.freesolo.init=random",
            "annotation_free.freesolo.self_training_rounds=1", "annotation_free.freesolo.self_training_score_thr=0.0",
            "annotation_free.freesolo.pre_nms=20"]

    def train(max_iters):
        argv = ["train-freesolo", "--dataset", str(ds), "--pseudo", str(pseudo), "--work-dir", str(work)]
        for s in [*sets, f"annotation_free.freesolo.train.max_iters={max_iters}"]:
            argv += ["--set", s]
        return main(argv)

    assert train(2) == 0
    first = json.loads((work / "metrics.json").read_text())["rounds"]
    assert [(r["start_iter"], r["iterations"]) for r in first] == [(0, 2), (0, 2)]
    for r in ("round0", "round1"):
        assert (work / r / "last_checkpoint").read_text().strip().endswith("iter_2.pth")
    assert train(3) == 0                                    # same work dir, one more iteration per round
    again = json.loads((work / "metrics.json").read_text())["rounds"]
    assert [(r["start_iter"], r["iterations"]) for r in again] == [(2, 3), (2, 3)]
    assert (work / "round0" / "iter_3.pth").exists() and (work / "round1" / "iter_3.pth").exists()


def test_freesolo_init_auto_hierarchy_random(tmp_path, pixel_embedding_ckpt, monkeypatch, capsys):
    """annotation_free.freesolo.init (params.yaml: auto = the hierarchy backbone if present, else random): round 0
    up to the mmengine Runner (not run). hierarchy and auto with the file point the backbone's init_cfg at the
    pixel embedding's ResNet-50 tensors; auto without it and random leave a random init; hierarchy without it is
    an error naming the file and the key, before anything is trained."""
    from longtail.cli import main
    from longtail.hierarchy.pixel_embedding import load_pixel_embedding
    from longtail.proposals import runner

    ds, pseudo, _ = _gt_pseudo_masks(tmp_path)
    seen = []

    class Stop(Exception):
        pass

    def stop(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(runner, "run_mmengine", stop)

    def round0(init: str, ckpt: Path, work: Path):
        argv = ["train-freesolo", "--dataset", str(ds), "--pseudo", str(pseudo), "--work-dir", str(work)]
        for s in (f"annotation_free.freesolo.init={init}", f"annotation_free.freesolo.hierarchy_checkpoint={ckpt}"):
            argv += ["--set", s]
        try:
            return main(argv)
        except Stop:
            return seen[-1].model.backbone.init_cfg

    pe = load_pixel_embedding(pixel_embedding_ckpt).backbone.state_dict()
    for init in ("hierarchy", "auto"):
        work = tmp_path / init
        dst = work / "round0" / "hierarchy_backbone.pth"
        assert round0(init, pixel_embedding_ckpt, work) == {"type": "Pretrained", "checkpoint": str(dst)}
        moved = torch.load(dst, weights_only=False)["state_dict"]
        assert len(moved) > 300 and all(torch.equal(v, pe[k]) for k, v in moved.items())
    missing = tmp_path / "no_such_pe.pt"
    assert round0("auto", missing, tmp_path / "auto_missing") is None
    assert round0("random", pixel_embedding_ckpt, tmp_path / "random") is None
    assert not (tmp_path / "random" / "round0" / "hierarchy_backbone.pth").exists()
    capsys.readouterr()
    assert round0("hierarchy", missing, tmp_path / "h_missing") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "annotation_free.freesolo.init=hierarchy" in err, err
    assert not (tmp_path / "h_missing" / "round0" / "model.pth").exists()
