"""Pseudo ground truth for the proposal networks (proposals.train.pseudo): an annotation-free proposal set's
unannotated objects as extra targets (mode target) or as never-background regions (mode ignore,
PseudoIgnoreAssigner). Real sample data: the prepared train split and its oracle (gt) proposal set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.cli import main
from longtail.common.errors import LongtailError
from longtail.common.masks import to_rle
from longtail.proposals.datasets import category_splits, image_pseudo_annotations
from longtail.proposals.format import make_record
from longtail.proposals.runner import load_config

from conftest import require_mmcv_ops  # noqa: E402

require_mmcv_ops()

PSEUDO_CONFIG = "workflow/mmdet/maskrcnn_effl0_adamw_pseudo_fpn_cpu.py"
PSEUDO = {"method": None, "max_per_image": 1000, "score_thr": 0.0, "max_overlap": 0.5, "mode": "target"}


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


@pytest.fixture(scope="module")
def oracle_train(prepared, tmp_path_factory):
    """The oracle proposal set of the prepared train split: every annotation, base and novel, as a proposal."""
    out = tmp_path_factory.mktemp("pseudo") / "gt" / "train"
    assert main(["propose", "--method", "gt", "--dataset", str(prepared / "train.json"), "--out-dir", str(out),
                 "--set", "proposals.topk=1000", "--set", "proposals.nms_iou=1.0"]) == 0
    return out


def _box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_overlap_test_then_score_then_top_k():
    im = {"id": 7, "height": 20, "width": 20}
    a = _box_mask(20, 20, 0, 10, 0, 10)
    ann = {"id": 1, "image_id": 7, "segmentation": make_record(7, a, 1.0)["segmentation"]}   # compressed RLE
    recs = [make_record(7, a, 0.9),                                   # the annotated object itself
            make_record(7, _box_mask(20, 20, 0, 10, 0, 8), 0.85),     # IoU 0.8 with it
            make_record(7, _box_mask(20, 20, 12, 20, 12, 20), 0.8),
            make_record(7, _box_mask(20, 20, 12, 20, 0, 6), 0.7),
            make_record(7, _box_mask(20, 20, 0, 4, 14, 20), 0.1),     # under score_thr
            make_record(7, np.zeros((20, 20), bool), 0.95)]           # empty mask: never a target
    kw = dict(score_thr=0.2, max_per_image=2)
    got = image_pseudo_annotations(im, recs, [ann], max_overlap=0.5, **kw)
    assert [g["score"] for g in got] == [0.8, 0.7]
    assert got[0]["bbox"] == [12.0, 12.0, 8.0, 8.0] and got[0]["area"] == 64.0
    assert all(g["category_id"] == 1 and g["image_id"] == 7 and g["iscrowd"] == 0 for g in got)
    # no overlap test (FreeSOLO's pseudo-masks): the best two non-empty ones
    assert [g["score"] for g in image_pseudo_annotations(im, recs, [ann], max_overlap=None, **kw)] == [0.9, 0.85]
    # a looser overlap test keeps the near-duplicate (IoU 0.8), not the object itself (IoU 1)
    assert [g["score"] for g in image_pseudo_annotations(im, recs, [ann], max_overlap=0.9, **kw)] == [0.85, 0.8]
    assert image_pseudo_annotations(im, recs, [ann], max_overlap=0.5, score_thr=0.2, max_per_image=0) == []


@pytest.mark.parametrize("mode", ["target", "ignore"])
def test_pseudo_ground_truth_of_the_oracle_set_is_the_novel_annotations(prepared, oracle_train, tmp_path, mode):
    """Base-only training set + the oracle proposals of train.json as pseudo ground truth: the base annotations
    are filtered out as 'already annotated', what is added are exactly the novel annotations."""
    from pycocotools import mask as mask_utils

    from longtail.proposals.training import write_agnostic_json

    train = json.loads((prepared / "train.json").read_text())
    splits = category_splits(train)
    ims = {im["id"]: im for im in train["images"]}
    stats = write_agnostic_json(prepared / "train.json", tmp_path / "agn.json", base_only=True, pseudo=oracle_train,
                                pseudo_cfg=dict(PSEUDO, mode=mode))
    agn = json.loads((tmp_path / "agn.json").read_text())
    n_base = sum(1 for a in train["annotations"] if a["category_id"] in splits["base"] and not a.get("iscrowd", 0))
    novel = [a for a in train["annotations"] if a["category_id"] in splits["novel"] and not a.get("iscrowd", 0)]
    base_all = [a for a in train["annotations"] if a["category_id"] in splits["base"]]   # crowd ones included
    pseudo = agn["annotations"][len(base_all):]
    assert stats["annotations"] == n_base and stats["pseudo_annotations"] == len(pseudo)
    assert len({a["id"] for a in agn["annotations"]}) == len(agn["annotations"])      # unique ids
    assert all(a["iscrowd"] == (mode == "ignore") for a in pseudo)
    assert [a["iscrowd"] for a in agn["annotations"][:len(base_all)]] == [a.get("iscrowd", 0) for a in base_all]
    # every pseudo mask is one novel annotation of its image; (almost) every novel annotation is there
    by_image: dict[int, list] = {}
    for a in novel:
        im = ims[a["image_id"]]
        by_image.setdefault(a["image_id"], []).append(to_rle(a["segmentation"], im["height"], im["width"]))
    matched = 0
    for p in pseudo:
        gt = by_image.get(p["image_id"], [])
        iou = mask_utils.iou([to_rle(p["segmentation"], 0, 0)], gt, [0] * len(gt)) if gt else np.zeros((1, 1))
        matched += float(iou.max()) > 0.99
    assert matched == len(pseudo) and len(pseudo) >= 0.95 * len(novel) and len(novel) > 100
    assert stats["pseudo_images"] == len({p["image_id"] for p in pseudo})


def test_pseudo_set_of_other_images_is_a_clear_error(prepared, oracle_train, tmp_path):
    from longtail.proposals.training import write_agnostic_json

    val = prepared / "val.json"
    with pytest.raises(LongtailError, match="none of its images"):
        write_agnostic_json(val, tmp_path / "agn.json", base_only=True, pseudo=oracle_train, pseudo_cfg=PSEUDO)


def _assign(assigner, priors, gt, ignore):
    from mmengine.structures import InstanceData

    pred = InstanceData(priors=torch.tensor(priors, dtype=torch.float32))
    g = InstanceData(bboxes=torch.tensor(gt, dtype=torch.float32), labels=torch.zeros(len(gt), dtype=torch.long))
    ig = InstanceData(bboxes=torch.tensor(ignore, dtype=torch.float32))
    return assigner.assign(pred, g, ig).gt_inds.tolist()


def test_pseudo_ignore_assigner_only_takes_the_background_label_away():
    from mmdet.models.task_modules.assigners import MaxIoUAssigner

    from longtail.proposals.assigners import PseudoIgnoreAssigner

    kw = dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3, match_low_quality=True)
    gt = [[10, 10, 30, 30]]
    # an unannotated object, a large region around everything, a region on the annotated object (box IoU 0.82)
    ignore = [[50, 50, 70, 70], [0, 0, 100, 100], [12, 10, 32, 30]]
    priors = [[10, 10, 30, 31],                          # the annotated object: positive
              [50, 50, 70, 71],                          # the unannotated object: would be background
              [52, 48, 70, 70],                          # IoU 0.8 with it: would be background
              [80, 0, 100, 20],                          # background, IoU 0.04 with the large region
              [0, 0, 100, 99]]                           # the large region itself: would be background
    plain = _assign(MaxIoUAssigner(**kw), priors, gt, ignore)
    assert plain == [1, 0, 0, 0, 0]
    ours = _assign(PseudoIgnoreAssigner(ignore_iou_thr=0.5, **kw), priors, gt, ignore)
    assert ours == [1, -1, -1, 0, -1]
    # mmdet's own ignoring (IoF of a candidate inside an ignored box) also drops the annotated object's positive
    assert _assign(MaxIoUAssigner(ignore_iof_thr=0.5, **kw), priors, gt, ignore)[0] != 1
    assert _assign(PseudoIgnoreAssigner(ignore_iou_thr=0.5, **kw), priors, gt, []) == plain
    with pytest.raises(ValueError, match="ignore_iou_thr"):
        PseudoIgnoreAssigner(ignore_iof_thr=0.5, **kw)


def test_pseudo_method_without_a_pseudo_set_is_a_clear_error(prepared, tmp_path, capsys):
    rc = main(["train-proposals", "--model", "maskrcnn", "--train-json", str(prepared / "train_base.json"),
               "--work-dir", str(tmp_path / "w"), "--set", "proposals.train.pseudo.method=ucm"])
    assert rc != 0
    err = capsys.readouterr().err
    assert "proposals.train.pseudo.method='ucm' but train-proposals got no --pseudo" in err
    assert "results/proposals/ucm/train" in err and not (tmp_path / "w" / "model.pth").exists()


def test_ignore_mode_needs_assigners_that_read_ignored_instances():
    from longtail.proposals.training import check_ignore_assigners

    check_ignore_assigners(load_config(PSEUDO_CONFIG), PSEUDO_CONFIG)
    cfg = "workflow/mmdet/maskrcnn_effl0_adamw_fpn_cpu.py"
    with pytest.raises(LongtailError, match=r"train_cfg\.rpn, rcnn in .*adamw_fpn_cpu\.py ignores no instance"):
        check_ignore_assigners(load_config(cfg), cfg)


@pytest.mark.slow
def test_training_with_ignored_pseudo_ground_truth_reaches_the_assigners(prepared, oracle_train, tmp_path,
                                                                         monkeypatch):
    """train-proposals --pseudo with mode ignore: the pseudo masks go through mmdet's dataset and packing as
    ignored instances and reach both assigners, which ignore candidates on them (2 iterations, 4 images)."""
    from longtail.proposals.assigners import PseudoIgnoreAssigner

    train = json.loads((prepared / "train.json").read_text())
    splits = category_splits(train)
    # 4 images with both base and novel annotations
    cats: dict[int, set] = {}
    for a in train["annotations"]:
        cats.setdefault(a["image_id"], set()).add("base" if a["category_id"] in splits["base"] else "novel")
    keep = [i for i, s in sorted(cats.items()) if s == {"base", "novel"}][:4]
    small = dict(train, images=[im for im in train["images"] if im["id"] in keep],
                 annotations=[a for a in train["annotations"] if a["image_id"] in keep])
    (tmp_path / "train.json").write_text(json.dumps(small))
    seen = {"calls": 0, "with_ignore": 0, "ignored": 0}
    orig = PseudoIgnoreAssigner.assign

    def spy(self, pred, gt, gt_ignore=None, **kw):
        r = orig(self, pred, gt, gt_ignore, **kw)
        seen["calls"] += 1
        seen["with_ignore"] += gt_ignore is not None and len(gt_ignore) > 0
        seen["ignored"] += int((r.gt_inds == -1).sum())
        return r

    monkeypatch.setattr(PseudoIgnoreAssigner, "assign", spy)
    work = tmp_path / "work"
    assert main(["train-proposals", "--model", "maskrcnn", "--train-json", str(tmp_path / "train.json"),
                 "--work-dir", str(work), "--pseudo", str(oracle_train),
                 "--set", f"proposals.models.maskrcnn={PSEUDO_CONFIG}", "--set", "proposals.train.pseudo.mode=ignore",
                 "--set", "proposals.train.max_iters=2", "--set", "proposals.train.batch_size=2",
                 "--set", "proposals.train.scale=[160,160]", "--set", "proposals.train.checkpoint_interval=2",
                 "--set", "proposals.train.log_interval=1", "--set", "proposals.train.warmup_iters=1",
                 "--set", "proposals.train.lr=0.0003"]) == 0
    m = json.loads((work / "metrics.json").read_text())
    n_novel = sum(1 for a in small["annotations"] if a["category_id"] in splits["novel"])
    assert m["iterations"] == 2 and 0 < m["pseudo_annotations"] <= n_novel and m["pseudo_images"] == 4
    # 2 iterations x 2 images x (RPN + RoI head): every call had ignored instances, and some were ignored
    assert seen["calls"] == 8 and seen["with_ignore"] == 8 and seen["ignored"] > 0
