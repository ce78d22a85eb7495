"""Proposal stage without networks: oracle (gt) proposals, top-K mask NMS, class-agnostic evaluation, error
analysis on constructed cases with known answers, bad input. Real sample data: data/coco-mini val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from longtail import REPO_ROOT
from longtail.cli import main
from longtail.common.masks import decode_mask, encode_mask, to_rle
from longtail.proposals.error_analysis import error_analysis
from longtail.proposals.evaluation import coco_eval, evaluate_proposals
from longtail.proposals.format import make_record, read_proposals, write_proposals
from longtail.proposals.postprocess import gt_records, topk_mask_nms


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def coco_mini_val(n_images: int = 25) -> dict:
    """First ``n_images`` annotated coco-mini val images, file_name relative to the repo, base/novel split from
    params.yaml (data.base_categories)."""
    d = json.loads((REPO_ROOT / "data/coco-mini/annotations/instances_val2017.json").read_text())
    base = set(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["data"]["base_categories"])
    with_anns = sorted({a["image_id"] for a in d["annotations"]})[:n_images]
    keep = set(with_anns)
    images = [dict(im, file_name=f"data/coco-mini/val2017/{im['file_name']}") for im in d["images"]
              if im["id"] in keep]
    cats = [dict(c, split="base" if c["name"] in base else "novel") for c in d["categories"]]
    anns = [a for a in d["annotations"] if a["image_id"] in keep]
    return {"images": images, "annotations": anns, "categories": cats}


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> tuple[dict, Path]:
    d = coco_mini_val()
    p = tmp_path_factory.mktemp("data") / "val.json"
    p.write_text(json.dumps(d))
    return d, p


def test_gt_proposals_cli_and_eval(val_set, tmp_path):
    d, path = val_set
    out = tmp_path / "gt" / "val"
    assert main(["propose", "--method", "gt", "--dataset", str(path), "--out-dir", str(out)]) == 0
    index, recs = read_proposals(out)
    n_gt = sum(1 for a in d["annotations"] if not a.get("iscrowd", 0))
    per_image = {}
    for a in d["annotations"]:
        if not a.get("iscrowd", 0):
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    expected = sum(min(v, 50) for v in per_image.values())
    assert index["method"] == "gt" and index["topk"] == 50 and index["nms_iou"] == 0.75
    assert len(index["images"]) == len(d["images"])
    # every GT mask is a proposal unless capped at K=50 or suppressed as a near-duplicate (IoU > 0.75)
    assert expected - 3 <= len(recs) <= expected <= n_gt
    assert all(r["score"] == 1.0 and r["category_id"] == 1 for r in recs)

    metrics_file = tmp_path / "metrics.json"
    fig = tmp_path / "overlay.png"
    assert main(["eval-proposals", "--proposals", str(out), "--dataset", str(path), "--out", str(metrics_file),
                 "--figure", str(fig)]) == 0
    m = json.loads(metrics_file.read_text())
    assert fig.stat().st_size > 1000
    for sub in ("base", "novel", "all"):
        assert m["segm"][sub]["AR100"] > 0.97, sub
    assert m["segm"]["all"]["AP"] > 0.95
    # AP on one subset counts the other subset's masks as false positives
    assert m["segm"]["base"]["AP"] < m["segm"]["all"]["AP"]
    assert m["segm"]["num_gt"]["all"] == m["segm"]["num_gt"]["base"] + m["segm"]["num_gt"]["novel"]
    # with one proposal per image, recall cannot exceed images / instances
    assert m["segm"]["all"]["AR1"] <= len(d["images"]) / n_gt + 1e-6


def instances_per_image(d: dict, cat_ids: set[int]) -> tuple[dict[int, int], dict[int, int]]:
    """Non-crowd GT instances per image: of ``cat_ids``, and of all categories (every image with an instance)."""
    n_sub, n_all = {}, {}
    for a in d["annotations"]:
        if not a.get("iscrowd", 0):
            n_all[a["image_id"]] = n_all.get(a["image_id"], 0) + 1
            n_sub[a["image_id"]] = n_sub.get(a["image_id"], 0) + (a["category_id"] in cat_ids)
    return n_sub, n_all


def test_eval_base_only_oracle_has_zero_novel_recall(val_set):
    d, _ = val_set
    base = {c["id"] for c in d["categories"] if c["split"] == "base"}
    recs = gt_records({**d, "annotations": [a for a in d["annotations"] if a["category_id"] in base]})
    m = evaluate_proposals(d, recs)
    # counted from the GT: non-crowd instances per image, base and all
    n_base, n_all = instances_per_image(d, base)
    NB, NA = sum(n_base.values()), sum(n_all.values())
    assert m["num_gt"] == {"base": NB, "novel": NA - NB, "all": NA} and 0 < NB < NA
    # every base object has its exact mask: recall 1 at every IoU, precision 1 -> AP 1; at most K per image
    assert m["base"]["AP"] == m["base"]["AR100"] == 1.0
    assert max(n_base.values()) > 10   # so AR10 < 1: K caps the recall
    for key, K in (("AR1", 1), ("AR10", 10)):
        assert m["base"][key] == pytest.approx(sum(min(v, K) for v in n_base.values()) / NB, abs=1e-12), key
        assert m["all"][key] == pytest.approx(sum(min(v, K) for v in n_base.values()) / NA, abs=1e-12), key
    # on all objects: each base proposal matches its own mask (IoU 1), so the recall is the base share of the GT
    # at every IoU threshold; precision is 1 up to that recall, 0 beyond: AP = share of the 101 recall points
    share = NB / NA
    assert m["all"]["AR100"] == pytest.approx(share, abs=1e-12)
    ap = float((np.linspace(0, 1, 101) <= share).sum() / 101)
    for key in ("AP", "AP50", "AP75"):
        assert m["all"][key] == pytest.approx(ap, abs=1e-12), key
    # novel objects are found only where a base mask happens to overlap one (IoU >= 0.5): rare
    assert m["novel"]["AR100"] < 0.02
    assert coco_eval(d, []) == {k: 0.0 for k in m["all"]}


def test_topk_mask_nms_known_case():
    h = w = 40
    a = np.zeros((h, w), bool); a[0:20, 0:20] = True
    b = np.zeros((h, w), bool); b[0:20, 0:18] = True      # IoU(a, b) = 0.9
    c = np.zeros((h, w), bool); c[20:40, 20:40] = True    # disjoint
    e = np.zeros((h, w), bool); e[0:20, 0:12] = True      # IoU(b, e) = 0.67 < 0.75
    recs = [make_record(1, a, 0.5), make_record(1, b, 0.9), make_record(1, c, 0.1), make_record(1, e, 0.3),
            make_record(2, c, 0.2)]
    kept = topk_mask_nms(recs, topk=50, nms_iou=0.75, progress=False)
    assert [(r["image_id"], r["score"]) for r in kept] == [(1, 0.9), (1, 0.3), (1, 0.1), (2, 0.2)]
    kept = topk_mask_nms(recs, topk=2, nms_iou=0.75, progress=False)
    assert [(r["image_id"], r["score"]) for r in kept] == [(1, 0.9), (1, 0.3), (2, 0.2)]


def _square_dataset(boxes: list[tuple[int, int, int, int]], h: int = 64, w: int = 64) -> tuple[dict, list]:
    masks = []
    anns = []
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": encode_mask(m), "area": float(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    d = {"images": [{"id": 1, "file_name": "none.jpg", "height": h, "width": w}], "annotations": anns,
         "categories": [{"id": 1, "name": "thing", "split": "base"}]}
    return d, masks


def test_error_analysis_only_false_negatives():
    d, masks = _square_dataset([(5, 25, 5, 25), (35, 60, 35, 60)])
    preds = []
    for m, s in zip(masks, (0.9, 0.8)):
        p = m.copy()
        ys = np.nonzero(m.any(1))[0]
        p[ys.min():ys.min() + 8, :] = False   # remove the top 8 rows of each object
        preds.append(make_record(1, p, s))
    r = error_analysis(d, preds, 0.1, progress=False)
    assert r["pixels"]["fFP"] == 0 and r["pixels"]["bFP"] == 0
    assert r["pixels"]["FN"] == 8 * 20 + 8 * 25
    assert r["dAP_fFP"] == pytest.approx(0.0) and r["dAP_bFP"] == pytest.approx(0.0)
    assert r["AP_FN"] == pytest.approx(1.0) and r["dAP_FN"] > 0.3
    assert r["matched"] == 2 and r["unmatched"] == 0


def test_error_analysis_background_and_foreground_false_positives():
    # bFP: prediction = object grown by 3 px into the background
    d, masks = _square_dataset([(10, 30, 10, 30)])
    p = np.zeros_like(masks[0]); p[7:33, 7:33] = True
    r = error_analysis(d, [make_record(1, p, 0.9)], 0.1, progress=False)
    assert r["pixels"] == {"fFP": 0, "bFP": 26 * 26 - 400, "FN": 0}
    assert r["dAP_bFP"] > 0.3 and r["dAP_fFP"] == 0 and r["dAP_FN"] == 0 and r["AP_bFP"] == pytest.approx(1.0)
    # fFP: two touching objects, one prediction covering both (matched to the larger one)
    d, masks = _square_dataset([(10, 30, 10, 40), (30, 40, 10, 40)])
    p = masks[0] | masks[1]
    r = error_analysis(d, [make_record(1, p, 0.9), make_record(1, masks[1], 0.8)], 0.1, progress=False)
    assert r["pixels"] == {"fFP": 300, "bFP": 0, "FN": 0}
    assert r["dAP_fFP"] > 0.3 and r["dAP_bFP"] == 0 and r["dAP_FN"] == 0
    # an unmatched prediction (IoU < 0.1 with every GT) is left out
    far = np.zeros_like(p); far[50:60, 50:60] = True
    r = error_analysis(d, [make_record(1, far, 0.5)], 0.1, progress=False)
    assert r["matched"] == 0 and r["unmatched"] == 1 and sum(r["pixels"].values()) == 0


def eroded_gt_records(d: dict, cat_ids=None, erode=True, frac=0.0) -> tuple[list[dict], list[float], int]:
    """Proposals = the non-crowd GT masks (of ``cat_ids``, default all); with ``erode`` those that touch no other
    GT mask of their image lose their bottom row of pixels (their bottom ``frac`` of rows, at least one). Each
    proposal lies inside its own mask and overlaps no other mask unless it is an exact copy, so it is matched to
    its own mask at IoU = its pixels / the mask's.
    Returns (records, that IoU per record, pixels removed)."""
    ims = {im["id"]: im for im in d["images"]}
    gts = {}
    for a in d["annotations"]:
        if not a.get("iscrowd", 0):
            im = ims[a["image_id"]]
            keep = cat_ids is None or a["category_id"] in cat_ids
            gts.setdefault(a["image_id"], []).append((keep, decode_mask(to_rle(a["segmentation"], im["height"],
                                                                              im["width"]))))
    recs, ious, removed = [], [], 0
    for img_id, masks in gts.items():
        cover = np.sum([g for _, g in masks], axis=0)   # how many GT masks cover each pixel
        for keep, g in masks:
            if not keep:
                continue
            m = g.copy()
            ys = np.nonzero(m.any(1))[0]
            if erode and len(ys) > 1 and (cover[g] == 1).all():
                n = min(len(ys) - 1, max(1, int(frac * (ys.max() - ys.min() + 1))))
                m[ys.max() - n + 1:] = False
                removed += int(g.sum() - m.sum())
            recs.append(make_record(img_id, m, 1.0))
            ious.append(int(m.sum()) / int(g.sum()))
    return recs, ious, removed


def test_error_analysis_cli(val_set, tmp_path):
    d, path = val_set
    # proposals inside their own GT mask, disjoint from the others: fFP = bFP = 0, FN = the removed pixels
    recs, ious, removed = eroded_gt_records(d)
    assert 0 < sum(i < 1 for i in ious) < len(recs)
    write_proposals(tmp_path / "p", recs, d["images"], method="eroded", dataset=str(path), topk=50, nms_iou=0.75)
    out = tmp_path / "errors.json"
    assert main(["error-analysis", "--proposals", str(tmp_path / "p"), "--dataset", str(path), "--out",
                 str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["method"] == "eroded" and r["matched"] == len(recs) and r["unmatched"] == 0
    assert r["pixels"] == {"fFP": 0, "bFP": 0, "FN": removed}
    assert r["pixel_fraction"] == {"fFP": 0.0, "bFP": 0.0, "FN": 1.0}
    # correcting FN gives back every GT mask exactly: AP 1; correcting the absent types changes nothing
    assert r["AP_FN"] == pytest.approx(1.0) and r["dAP_FN"] == pytest.approx(1.0 - r["AP"]) and r["AP"] < 1.0
    assert r["dAP_fFP"] == 0.0 and r["dAP_bFP"] == 0.0 and r["AP_fFP"] == r["AP_bFP"] == r["AP"]


def test_compare_proposals_cli(val_set, tmp_path):
    """The ablation table of two real proposal sets, as the dcl_ablation rule lays them out: baseline = every GT
    mask, variant = the base masks only, their bottom 10 % eroded as above. Expected numbers from the GT counts
    and the IoUs."""
    d, path = val_set
    base = {c["id"] for c in d["categories"] if c["split"] == "base"}
    n_base, n_all = instances_per_image(d, base)
    NB, NA = sum(n_base.values()), sum(n_all.values())
    sets = {"gt": eroded_gt_records(d, erode=False), "gt_base_eroded": eroded_gt_records(d, base, frac=0.1)}
    for method, (recs, _, _) in sets.items():
        folder = tmp_path / method
        write_proposals(folder / "val", recs, d["images"], method=method, dataset=str(path), topk=100,
                        nms_iou=1.0)
        for verb, name in (("eval-proposals", "metrics_val.json"), ("error-analysis", "errors_val.json")):
            assert main([verb, "--proposals", str(folder / "val"), "--dataset", str(path), "--out",
                         str(folder / name)]) == 0
    out = tmp_path / "dcl_ablation.json"
    assert main(["compare-proposals", "--baseline", str(tmp_path / "gt"), "--variant",
                 str(tmp_path / "gt_base_eroded"), "--split", "val", "--out", str(out)]) == 0
    t = json.loads(out.read_text())
    b, v = t["baseline"], t["variant"]
    assert (b["method"], v["method"]) == ("gt", "gt_base_eroded")
    cols = [f"{s}/{k}" for s in ("base", "novel", "all") for k in ("AP", "AP50", "AR10", "AR100")]
    assert set(b) == set(v) == {"method", *cols, "dAP_fFP", "dAP_bFP", "dAP_FN"}
    # baseline: every object has its exact mask
    for key in ("all/AP", "all/AP50", "all/AR100", "base/AR100", "novel/AR100"):
        assert b[key] == pytest.approx(1.0, abs=1e-12), key
    assert b["all/AR10"] == pytest.approx(sum(min(n, 10) for n in n_all.values()) / NA, abs=1e-12)
    assert b["dAP_fFP"] == b["dAP_bFP"] == b["dAP_FN"] == 0.0
    # variant: base object g is found at IoU threshold t iff its proposal's IoU >= t (the 10 COCO thresholds)
    _, ious, removed = sets["gt_base_eroded"]
    assert removed > 0 and 0 < sum(i < 0.95 for i in ious) < len(ious) and min(ious) >= 0.5
    thr = np.linspace(0.5, 0.95, 10)
    found = sum(sum(i >= t for i in ious) for t in thr) / len(thr)
    assert v["base/AR100"] == pytest.approx(found / NB, abs=1e-12) and v["base/AR100"] < 1
    assert v["all/AR100"] == pytest.approx(found / NA, abs=1e-12)
    assert v["all/AR10"] <= sum(min(n, 10) for n in n_base.values()) / NA
    assert v["novel/AR100"] < 0.02
    # only FN errors; correcting them gives the exact base masks, whose AP on all objects is the share of the 101
    # recall points up to the base share of the GT (see test_eval_base_only_oracle)
    ap_fixed = float((np.linspace(0, 1, 101) <= NB / NA).sum() / 101)
    assert v["dAP_fFP"] == v["dAP_bFP"] == 0.0
    assert v["dAP_FN"] == pytest.approx(ap_fixed - v["all/AP"], abs=1e-12) and v["dAP_FN"] > 0
    # the delta row is variant - baseline, column by column
    assert t["delta"] == pytest.approx({k: v[k] - b[k] for k in cols + ["dAP_fFP", "dAP_bFP", "dAP_FN"]},
                                       abs=1e-12)
    assert t["delta"]["all/AR100"] == pytest.approx(found / NA - 1, abs=1e-12)


def test_bad_input(tmp_path, capsys, val_set):
    _, path = val_set
    assert main(["propose", "--method", "gt", "--dataset", str(tmp_path / "missing.json"),
                 "--out-dir", str(tmp_path / "o")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main(["propose", "--method", "nosuch", "--dataset", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["propose", "--method", "maskrcnn", "--dataset", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "--model-dir" in capsys.readouterr().err
    assert main(["propose", "--method", "maskrcnn", "--model-dir", str(tmp_path / "nomodel"), "--dataset", str(path),
                 "--out-dir", str(tmp_path / "o")]) in (2,)
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["propose", "--method", "gt", "--set", "proposals.topk=many", "--dataset", str(path),
                 "--out-dir", str(tmp_path / "o")]) == 2
    assert "proposals.topk" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": {}}))
    assert main(["eval-proposals", "--proposals", str(tmp_path / "o"), "--dataset", str(bad), "--out",
                 str(tmp_path / "m.json")]) == 2
    assert "annotations" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
