"""longtail prepare on the real sample: counts, split, panoptic conversion, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from longtail.cli import main

VOC_IN_COCO = {"person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "boat", "bird", "cat", "dog",
               "horse", "sheep", "cow", "bottle", "chair", "couch", "potted plant", "dining table", "tv"}


def test_counts_and_split(prepared, repo_root):
    m = json.loads((prepared / "metrics.json").read_text())
    # coco-mini train (80 images, 739 anns) + coco128 panoptic train (100 images): disjoint ids
    assert m["train"]["images"] == 180
    assert m["train"]["duplicate_images"] == 0
    # coco-mini val (79) + coco128 val (100) share 2 image ids -> 177
    assert m["val"]["images"] == 177
    assert m["val"]["duplicate_images"] == 2
    assert m["num_base_categories"] == 20 and m["num_novel_categories"] == 60
    assert m["label_space"] == "coco"
    # COCO 2017 train and val share no image: disjointness (on by default) drops nothing from the sample
    d = m["disjoint_images"]
    assert d["enabled"] and d["eval_images"] == 177
    assert d["train"] == d["train_base"] == {"overlap_images": 0, "removed_images": 0, "removed_annotations": 0}
    for split in ("train", "val"):
        s = m[split]
        assert s["base_instances"] + s["novel_instances"] == s["instances"]
        assert s["skipped_images"] == 0 and s["skipped_annotations"] == 0
    cats = json.loads((prepared / "categories.json").read_text())
    names = {c["id"]: c["name"] for c in cats["categories"]}
    assert {names[i] for i in cats["base"]} == VOC_IN_COCO
    assert len(cats["novel"]) == 60 and not set(cats["base"]) & set(cats["novel"])
    assert cats["label_space"] == "coco" and cats["counts"]["base"] == 20 and cats["counts"]["novel"] == 60
    assert cats["counts"]["without_train_masks"] == 0


def test_instances_kept_verbatim_and_files_resolve(prepared, repo_root):
    val = json.loads((prepared / "val.json").read_text())
    raw = json.loads((repo_root / "data/coco-mini/annotations/instances_val2017.json").read_text())
    raw_ids = {im["id"] for im in raw["images"]}
    n_raw = sum(1 for a in raw["annotations"])
    n_ours = sum(1 for a in val["annotations"] if a["image_id"] in raw_ids)
    assert n_ours == n_raw  # first source wins: coco-mini's instances for shared images
    for im in val["images"]:
        assert (repo_root / im["file_name"]).exists()
    assert len({a["id"] for a in val["annotations"]}) == len(val["annotations"])


def test_panoptic_conversion_matches_segment_areas(prepared, repo_root):
    """Converted masks have exactly the pixel areas the panoptic JSON declares for each thing segment."""
    pan = json.loads((repo_root / "data/coco128/panoptic/panoptic_train2017.json").read_text())
    things = {c["id"] for c in pan["categories"] if c["isthing"]}
    train = json.loads((prepared / "train.json").read_text())
    by_img: dict[int, list] = {}
    for a in train["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    checked = 0
    for pa in pan["annotations"][:20]:
        want = sorted((s["category_id"], s["area"]) for s in pa["segments_info"] if s["category_id"] in things)
        got = sorted((a["category_id"], int(mask_utils.area({**a["segmentation"],
                                                             "counts": a["segmentation"]["counts"].encode()})))
                     for a in by_img.get(pa["image_id"], []))
        assert got == want
        checked += len(want)
    assert checked > 50


def test_train_base_has_only_base_and_pycocotools_loads(prepared):
    cats = json.loads((prepared / "categories.json").read_text())
    tb = COCO(str(prepared / "train_base.json"))
    assert {a["category_id"] for a in tb.dataset["annotations"]} <= set(cats["base"])
    tr = COCO(str(prepared / "train.json"))
    assert len(tb.getImgIds()) == len(tr.getImgIds())
    novel = sum(1 for a in tr.dataset["annotations"] if a["category_id"] in cats["novel"])
    assert len(tr.dataset["annotations"]) - novel == len(tb.dataset["annotations"])


# ---- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture()
def bad_sample(tmp_path, repo_root, params):
    """A 4-image instances source: one corrupt JPEG, one missing image, one empty segmentation."""
    raw = json.loads((repo_root / "data/coco-mini/annotations/instances_val2017.json").read_text())
    imgs = raw["images"][:4]
    ids = {im["id"] for im in imgs}
    anns = [a for a in raw["annotations"] if a["image_id"] in ids]
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for im in imgs[:3]:
        shutil.copy(repo_root / "data/coco-mini/val2017" / im["file_name"], img_dir / im["file_name"])
    (img_dir / imgs[0]["file_name"]).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    # imgs[3] is missing on disk
    empty = next(a for a in anns if a["image_id"] == imgs[1]["id"])
    empty["segmentation"] = []
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps({**raw, "images": imgs, "annotations": anns}))
    p = json.loads(json.dumps(params))
    p["data"]["sources"] = [{"name": "bad", "split": s, "format": "instances", "annotations": str(ann_path),
                             "images": str(img_dir)} for s in ("train", "val")]
    p["data"]["disjoint_images"] = False   # one file is both splits here (tests/test_lvis_protocol.py: disjointness)
    return tmp_path, p, imgs, anns


def _write_params(tmp_path, p, policy):
    p["data"]["on_bad_input"] = policy
    path = tmp_path / f"params_{policy}.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def test_bad_input_skip_counts(bad_sample, capsys):
    tmp_path, p, imgs, anns = bad_sample
    out = tmp_path / "out"
    rc = main(["prepare", "--params", str(_write_params(tmp_path, p, "skip")), "--out-dir", str(out),
               "--root", str(tmp_path)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["val"]["skipped_images"] == 2  # corrupt + missing
    assert m["val"]["skipped_annotations"] == 1  # empty segmentation
    assert m["val"]["images"] == 2
    n_good = sum(1 for a in anns if a["image_id"] in {imgs[1]["id"], imgs[2]["id"]})
    assert m["val"]["instances"] == n_good - 1
    assert any(imgs[0]["file_name"] in s and "decode" in s for s in m["skipped"]["images"])


def test_bad_input_fail_names_file_and_leaves_nothing(bad_sample, capsys):
    tmp_path, p, imgs, _ = bad_sample
    out = tmp_path / "out"
    rc = main(["prepare", "--params", str(_write_params(tmp_path, p, "fail")), "--out-dir", str(out),
               "--root", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert imgs[0]["file_name"] in err and "on_bad_input" in err
    assert not out.exists()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".out")]  # no temp dir left behind


def test_bad_params_value_is_named(tmp_path, params, capsys):
    p = json.loads(json.dumps(params))
    p["data"]["on_bad_input"] = "ignore"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    assert main(["prepare", "--params", str(path), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "data.on_bad_input" in err and "ignore" in err


def test_unknown_base_category_is_named(tmp_path, capsys):
    assert main(["prepare", "--set", "data.base_categories=[person, aeroplane]", "--out-dir",
                 str(tmp_path / "o")]) == 2
    assert "aeroplane" in capsys.readouterr().err


def test_missing_source_file_says_make_data(tmp_path, capsys):
    assert main(["prepare", "--set", "data.sources=[{name: x, split: train, format: instances, "
                 "annotations: nope.json, images: nope}]", "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "make data" in err
