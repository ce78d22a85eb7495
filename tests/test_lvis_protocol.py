"""The COCO -> LVIS protocol of Weng et al. 2021 (§4, Tables 1 and 3) on an LVIS-v1-format pair built from the sample.

The pair (lvis_v1_train.json / lvis_v1_val.json) is made here from real annotations: the COCO instances of
data/coco-mini mapped into LVIS category ids through data/lvis/coco_to_synset.json, plus the real LVIS
annotations of the six data/lvis/lvis_val_100.json images whose files the sample holds (LVIS-only categories;
image 527220 goes to train: its `taillight` masks are the one novel category with an anchor).
Image records are LVIS v1's (``coco_url``, no ``file_name``); the category list is the real LVIS one of
lvis_val_100.json with frequency groups assigned from the built train split; like LVIS v1 val, the val file
also holds train2017 images (the first N_SHARED of coco-mini train), so disjointness has something to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from longtail import REPO_ROOT
from longtail.cli import main
from longtail.common.errors import LongtailError
from longtail.discovery import evaluate as E

DATA = REPO_ROOT / "data"
COCO_TRAIN = DATA / "coco-mini/annotations/instances_train2017.json"
COCO_VAL = DATA / "coco-mini/annotations/instances_val2017.json"
LVIS_SAMPLE = DATA / "lvis/lvis_val_100.json"
SYNSETS = DATA / "lvis/coco_to_synset.json"
FOLDERS = ["data/coco-mini/train2017", "data/coco-mini/val2017", "data/coco128/images/val2017"]
N_SHARED = 8          # coco-mini train images that LVIS "val" takes (as LVIS v1 val takes train2017 images)
REAL_TRAIN = {527220}  # LVIS sample image put into LVIS "train" (headlight, motor_scooter, taillight)
COCO80 = sorted(json.loads(SYNSETS.read_text()))


def _load(p: Path) -> dict:
    return json.loads(p.read_text())


def _lvis_image(im: dict, split: str, lvis_rec: dict | None = None) -> dict:
    """An LVIS v1 image record: coco_url, no file_name; the federated keys of the real LVIS record if any."""
    name = f"{im['id']:012d}.jpg"
    return {"id": im["id"], "height": im["height"], "width": im["width"],
            "coco_url": f"http://images.cocodataset.org/{split}2017/{name}",
            "neg_category_ids": list((lvis_rec or {}).get("neg_category_ids", [])),
            "not_exhaustive_category_ids": list((lvis_rec or {}).get("not_exhaustive_category_ids", []))}


def frequency(n_images: int) -> str:
    """LVIS's groups (r: 1-10 training images, c: 11-100, f: > 100) scaled to the ~70 training images here."""
    return "r" if n_images <= 1 else "c" if n_images <= 4 else "f"


def build_lvis_pair(out: Path) -> tuple[Path, Path]:
    coco_tr, coco_va, sample, syn = _load(COCO_TRAIN), _load(COCO_VAL), _load(LVIS_SAMPLE), _load(SYNSETS)
    cats = sample["categories"]
    by_syn = {c["synset"]: c["id"] for c in cats}
    to_lvis = {c["id"]: by_syn[syn[c["name"]]["synset"]] for c in coco_tr["categories"]
               if syn[c["name"]]["synset"] in by_syn}

    def mapped(anns, ids):
        return [{"id": a["id"], "image_id": a["image_id"], "category_id": to_lvis[a["category_id"]],
                 "segmentation": a["segmentation"], "area": a["area"], "bbox": a["bbox"]}
                for a in anns if a["image_id"] in ids and not a["iscrowd"] and a["category_id"] in to_lvis]

    on_disk = {p.name for f in FOLDERS for p in (REPO_ROOT / f).glob("*.jpg")}
    real = {im["id"]: im for im in sample["images"] if im["coco_url"].rsplit("/", 1)[-1] in on_disk}
    assert len(real) == 6
    tr_imgs = sorted(coco_tr["images"], key=lambda im: im["id"])
    shared, tr_imgs = tr_imgs[:N_SHARED], tr_imgs[N_SHARED:]
    va_imgs = [im for im in coco_va["images"] if im["id"] not in real]
    real_va = {i: im for i, im in real.items() if i not in REAL_TRAIN}
    train = {"images": ([_lvis_image(im, "train") for im in tr_imgs]
                        + [_lvis_image(real[i], "val", real[i]) for i in REAL_TRAIN]),
             "annotations": (mapped(coco_tr["annotations"], {im["id"] for im in tr_imgs})
                             + [a for a in sample["annotations"] if a["image_id"] in REAL_TRAIN])}
    val_anns = (mapped(coco_va["annotations"], {im["id"] for im in va_imgs})
                + mapped(coco_tr["annotations"], {im["id"] for im in shared})
                + [a for a in sample["annotations"] if a["image_id"] in real_va])
    val = {"images": ([_lvis_image(im, "val") for im in va_imgs] + [_lvis_image(im, "train") for im in shared]
                      + [_lvis_image(im, "val", im) for im in real_va.values()]),
           "annotations": [{**a, "id": i} for i, a in enumerate(val_anns, 1)]}
    n_img = {c["id"]: len({a["image_id"] for a in train["annotations"] if a["category_id"] == c["id"]})
             for c in cats}
    cats = [{**c, "frequency": frequency(n_img[c["id"]]), "image_count": n_img[c["id"]],
             "instance_count": sum(a["category_id"] == c["id"] for a in train["annotations"])} for c in cats]
    paths = []
    for name, d in (("lvis_v1_train.json", train), ("lvis_v1_val.json", val)):
        p = out / name
        p.write_text(json.dumps({"info": {"version": "1.0 (built from the sample)"}, "licenses": [],
                                 **d, "categories": cats}))
        paths.append(p)
    return paths[0], paths[1]


def lvis_params(params: dict, tmp: Path, lvis_train: Path, lvis_val: Path, **data) -> Path:
    """params.yaml with the data sources and base categories of workflow/experiments/coco_lvis.yaml (the paper's
    protocol: COCO train2017 instances, LVIS v1 train, LVIS v1 val; all 80 COCO categories base), each source
    pointed at its stand-in here."""
    exp = yaml.safe_load((REPO_ROOT / "workflow/experiments/coco_lvis.yaml").read_text())["data"]
    local = {("coco", "train", "instances"): (COCO_TRAIN, "data/coco-mini/train2017"),
             ("lvis", "train", "lvis"): (lvis_train, FOLDERS), ("lvis", "val", "lvis"): (lvis_val, FOLDERS)}
    p = json.loads(json.dumps(params))
    p["data"]["sources"] = [{**s, "annotations": str(local[s["name"], s["split"], s["format"]][0]),
                             "images": local[s["name"], s["split"], s["format"]][1]} for s in exp["sources"]]
    assert sorted(exp["base_categories"]) == COCO80
    p["data"]["base_categories"] = exp["base_categories"]
    p["data"].update(data)
    path = tmp / f"params_{len(list(tmp.glob('params_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_lvis_pair(tmp_path_factory.mktemp("lvis"))


@pytest.fixture(scope="module")
def prepared_lvis(tmp_path_factory, pair, params):
    tmp = tmp_path_factory.mktemp("lvis_prepared")
    out = tmp / "data"
    assert main(["prepare", "--params", str(lvis_params(params, tmp, *pair)), "--out-dir", str(out),
                 "--root", str(REPO_ROOT)]) == 0
    return out


def _read(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


def test_label_space_is_lvis_with_coco80_base(prepared_lvis, pair):
    cats = _read(prepared_lvis, "categories.json")
    lv = _load(pair[1])["categories"]
    syn = {v["synset"] for v in _load(SYNSETS).values()}
    assert cats["label_space"] == "lvis" and len(cats["categories"]) == len(lv)
    # base = the LVIS categories with a COCO synset, novel = all the others (Table 1's "not in COCO")
    want_base = {c["id"] for c in lv if c["synset"] in syn}
    assert set(cats["base"]) == want_base and set(cats["novel"]) == {c["id"] for c in lv} - want_base
    n = cats["counts"]
    assert n["base"] == len(want_base) and n["novel"] == len(lv) - len(want_base)
    assert n["novel_without_coco_synset"] == n["novel"]
    assert sum(n["novel_by_frequency"].values()) == n["novel"]
    assert all(c["frequency"] in "rcf" and "synset" in c for c in cats["categories"])
    # categories without any train mask cannot get an anchor: counted, with their ids
    tr = _read(prepared_lvis, "train.json")
    with_masks = {a["category_id"] for a in tr["annotations"]}
    assert n["without_train_masks"] == len(lv) - len(with_masks) == len(n["without_train_masks_ids"])


def test_lvis_images_resolved_and_federated_keys_kept(prepared_lvis, pair):
    val = _read(prepared_lvis, "val.json")
    raw = {im["id"]: im for im in _load(pair[1])["images"]}
    assert {im["id"] for im in val["images"]} == set(raw)
    for im in val["images"]:
        # coco_url .../train2017/x.jpg or .../val2017/x.jpg -> the folder that holds x.jpg
        assert (REPO_ROOT / im["file_name"]).name == raw[im["id"]]["coco_url"].rsplit("/", 1)[-1]
        assert (REPO_ROOT / im["file_name"]).exists()
        assert im["neg_category_ids"] == raw[im["id"]]["neg_category_ids"]
        assert im["not_exhaustive_category_ids"] == raw[im["id"]]["not_exhaustive_category_ids"]
    assert {Path(im["file_name"]).parent.name for im in val["images"]} == {"train2017", "val2017"}
    assert len(val["annotations"]) == len(_load(pair[1])["annotations"])


def test_disjoint_images_counted(prepared_lvis):
    m = _read(prepared_lvis, "metrics.json")
    d = m["disjoint_images"]
    val_ids = {im["id"] for im in _read(prepared_lvis, "val.json")["images"]}
    tb = _read(prepared_lvis, "train_base.json")
    # the proposal network's COCO train2017 source held the N_SHARED images LVIS val took: dropped, counted
    assert d["enabled"] and d["eval_images"] == len(val_ids)
    assert d["train_base"]["overlap_images"] == d["train_base"]["removed_images"] == N_SHARED
    assert d["train_base"]["removed_annotations"] > 0
    assert d["train"]["overlap_images"] == 0
    assert not {im["id"] for im in tb["images"]} & val_ids
    assert m["train_base"]["images"] == len(_load(COCO_TRAIN)["images"]) - N_SHARED
    # train_base: the COCO instances in LVIS ids, base categories only
    base = set(_read(prepared_lvis, "categories.json")["base"])
    assert tb["annotations"] and {a["category_id"] for a in tb["annotations"]} <= base


def test_disjointness_off_keeps_and_counts(tmp_path, pair, params):
    out = tmp_path / "o"
    assert main(["prepare", "--params", str(lvis_params(params, tmp_path, *pair, disjoint_images=False)),
                 "--out-dir", str(out), "--root", str(REPO_ROOT)]) == 0
    d = _read(out, "metrics.json")["disjoint_images"]
    assert not d["enabled"] and d["train_base"]["overlap_images"] == N_SHARED
    assert d["train_base"]["removed_images"] == 0
    assert _read(out, "metrics.json")["train_base"]["images"] == len(_load(COCO_TRAIN)["images"])


def test_ground_truth_as_results_gives_ap_one(prepared_lvis):
    val = _read(prepared_lvis, "val.json")
    cats = _read(prepared_lvis, "categories.json")
    res = E.lvis_gt_as_results(val)
    every = E.lvis_eval(val, res, subsets={"novel": cats["novel"]})
    novel = every.pop("novel")
    for m in (novel, every):
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    present = sorted({a["category_id"] for a in val["annotations"]})
    novel_present = sorted(set(present) & set(cats["novel"]))
    assert novel["categories_evaluated"] == len(novel_present) and every["categories_evaluated"] == len(present)
    # drop the detections of one novel category with ground truth: AP = (n - 1) / n over novel and over all
    m = E.lvis_eval(val, [d for d in res if d["category_id"] != novel_present[0]], subsets={"novel": cats["novel"]})
    assert m["novel"]["AP"] == pytest.approx((len(novel_present) - 1) / len(novel_present))
    assert m["AP"] == pytest.approx((len(present) - 1) / len(present))


def test_subset_ap_equals_its_own_lvis_run(prepared_lvis):
    """The novel-category numbers cut from one LVISEval run = a run with LVISEval.params.cat_ids = novel."""
    val = _read(prepared_lvis, "val.json")
    novel = _read(prepared_lvis, "categories.json")["novel"]
    rng = np.random.default_rng(0)
    present = sorted({a["category_id"] for a in val["annotations"]})
    dets = [{**d, "score": float(rng.random()),
             "category_id": int(rng.choice(present)) if rng.random() < 0.1 else d["category_id"]}
            for d in E.lvis_gt_as_results(val) if rng.random() > 0.3]
    cut = E.lvis_eval(val, dets, subsets={"novel": novel})["novel"]
    own = E.lvis_eval(val, dets, cat_ids=novel)
    assert 0.2 < cut["AP"] < 0.95
    assert cut == pytest.approx(own)


def test_anchors_from_lvis_train_then_evaluate(prepared_lvis, tmp_path):
    """prepare -> anchors (LVIS train, seeded) -> evaluate: every category with an anchor gets its AP."""
    from longtail.embedding.embed import select_anchors
    from test_discovery_eval import planted_embeddings, write_npz

    tr, val = _read(prepared_lvis, "train.json"), _read(prepared_lvis, "val.json")
    cats = _read(prepared_lvis, "categories.json")
    anns, missing = select_anchors(tr, 5, seed=0, source="train.json")
    assert anns == select_anchors(tr, 5, seed=0)[0]                # seeded
    assert len(missing) == cats["counts"]["without_train_masks"]     # counted, not dropped silently
    anchored = {a["category_id"] for a in anns}
    assert all(a["image_id"] in {im["id"] for im in tr["images"]} for a in anns)
    # proposals = the GT masks of val; a planted embedding, one cluster per category; anchors only where LVIS
    # train has masks (categories of val without train masks keep an unlabelled cluster)
    from longtail.common.masks import rle_for_json, to_rle
    from longtail.proposals.format import make_record, read_proposals, write_proposals

    imgs = {im["id"]: im for im in val["images"]}
    recs = [make_record(a["image_id"], rle_for_json(to_rle(a["segmentation"], imgs[a["image_id"]]["height"],
                                                           imgs[a["image_id"]]["width"])), 1.0,
                        gt_category=a["category_id"]) for a in val["annotations"]]
    props = tmp_path / "proposals"
    write_proposals(props, recs, val["images"], method="gt", dataset="val.json", topk=1000, nms_iou=1.0)
    _, recs = read_proposals(props)
    pc = np.array([r["gt_category"] for r in recs])
    present = sorted(set(pc.tolist()))
    Z, A, Acat = planted_embeddings(pc, present)
    keep = np.isin(Acat, sorted(anchored))
    emb = tmp_path / "emb.npz"
    write_npz(emb, Z, A[keep], Acat[keep], recs)
    out = tmp_path / "disc" / "gt" / "poincare"
    sets = ["--set", f"discovery.k={len(present)}", "--set", "discovery.baseline_seeds=0",
            "--set", f"discovery.k_grid=[{len(present) - 2}, {len(present) - 1}, {len(present)}]"]
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(out), *sets]) == 0
    assert main(["evaluate", "--embeddings", str(emb), "--clusters", str(out / "clusters.npz"),
                 "--proposals", str(props), "--gt", str(prepared_lvis / "val.json"), "--out-dir", str(out),
                 *sets]) == 0
    m = _read(out, "metrics.json")
    novel_present = [c for c in present if c in set(cats["novel"])]
    hit = [c for c in novel_present if c in anchored]
    names = {c["id"]: c["name"] for c in cats["categories"]}
    assert [names[c] for c in hit] == ["taillight"] and len(novel_present) == 9   # LVIS-only, anchored in train
    # Table 1: LVIS AP over the novel categories; each category with GT is 1 (anchored) or 0 (not)
    assert m["novel"]["AP"] == pytest.approx(len(hit) / len(novel_present))
    assert m["lvis"]["AP"] == pytest.approx(len([c for c in present if c in anchored]) / len(present))
    for key in E.LVIS_KEYS:
        assert key in m["novel"] and key in m["lvis"]
    # Table 3: purity per LVIS frequency group, clusters matched to LVIS categories
    assert m["purity"]["purity"] == pytest.approx(1.0)
    assert {"purity_r", "purity_c", "purity_f"} & set(m["purity"])
    assert m["clusters_matched"] == len([c for c in present if c in anchored])
    assert m["protocol"]["label_space"] == "lvis" and m["protocol"]["api"] == "lvis"
    # the report's Tables 1 and 3 name the protocol and show the novel-category APr of the LVIS API
    from longtail.report.runs import find_runs, table1, table3

    runs = find_runs(tmp_path / "disc", ["poincare"])
    t1, t3 = table1(runs), table3(runs)
    assert "LVIS label space" in t1 and f"the {len(cats['novel'])} novel" in t1 and "LVIS label space" in t3
    import re

    cells = re.findall(r"<td>(.*?)</td>", t1)       # one row: method, variant, mAP, mAP50, mAP75, mAPr, ...
    assert cells[2] == f"{m['novel']['AP']:.3f}" and cells[5] == f"{m['novel']['APr']:.3f}"


def test_lvis_only_category_gets_a_cluster_label_and_a_detection(prepared_lvis):
    """Hand-built: 3 proposals on an LVIS-only category, 3 on a COCO one, anchors of both: the LVIS-only
    cluster takes the LVIS-only label and its proposals become detections of that category."""
    val = _read(prepared_lvis, "val.json")
    cats = {c["id"]: c for c in val["categories"]}
    lvis_only = next(a for a in val["annotations"] if cats[a["category_id"]]["coco_name"] is None)
    coco = next(a for a in val["annotations"] if cats[a["category_id"]]["coco_name"] is not None)
    Z = np.array([[0.5, 0.0], [0.51, 0.0], [0.5, 0.01], [-0.5, 0.0], [-0.51, 0.0], [-0.5, 0.01]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    A = np.array([[0.49, 0.0], [-0.49, 0.0]])
    Acat = np.array([lvis_only["category_id"], coco["category_id"]])
    D, cs = E.cluster_category_distance(Z, labels, 2, A, Acat, "poincare")
    cl = E.greedy_labels(D, cs)
    assert cl.tolist() == [lvis_only["category_id"], coco["category_id"]]
    recs = [{"image_id": a["image_id"], "segmentation": a["segmentation"], "score": 1.0}
            for a in [lvis_only] * 3 + [coco] * 3]
    dets = E.detections(recs, np.arange(6), labels, cl)
    assert sum(d["category_id"] == lvis_only["category_id"] for d in dets) == 3


# ---- bad input -----------------------------------------------------------------------------------------------

def test_lvis_images_not_in_folders(tmp_path, pair, params, capsys):
    # no configured folder holds them: an error naming the file and the key, whatever on_bad_input says
    p = json.loads(json.dumps(params))
    path = lvis_params(p, tmp_path, *pair)
    q = yaml.safe_load(path.read_text())
    q["data"]["sources"][2]["images"] = ["data/coco-mini/train2017"]   # val2017 images missing
    q["data"]["sources"][1]["images"] = ["data/bsds500"]
    path.write_text(yaml.safe_dump(q))
    assert main(["prepare", "--params", str(path), "--out-dir", str(tmp_path / "o"), "--root", str(REPO_ROOT)]) == 2
    err = capsys.readouterr().err
    assert str(pair[0]) in err and "coco_url" in err and "images" in err
    # some images missing: counted skip with on_bad_input: skip, naming file and key
    q["data"]["sources"][1]["images"] = FOLDERS
    path.write_text(yaml.safe_dump(q))
    assert main(["prepare", "--params", str(path), "--out-dir", str(tmp_path / "o"), "--root", str(REPO_ROOT)]) == 0
    m = _read(tmp_path / "o", "metrics.json")
    n_val2017 = sum("/val2017/" in im["coco_url"] for im in _load(pair[1])["images"])
    assert m["val"]["skipped_images"] == n_val2017
    assert all(str(pair[1]) in s and "coco_url" in s for s in m["skipped"]["images"])
    q["data"]["on_bad_input"] = "fail"
    path.write_text(yaml.safe_dump(q))
    assert main(["prepare", "--params", str(path), "--out-dir", str(tmp_path / "o2"), "--root",
                 str(REPO_ROOT)]) == 2
    err = capsys.readouterr().err
    assert str(pair[1]) in err and "coco_url" in err and "on_bad_input" in err


def test_eval_overlapping_training_split_fails_when_asked(tmp_path, pair, params, capsys):
    path = lvis_params(params, tmp_path, *pair, on_bad_input="fail")
    assert main(["prepare", "--params", str(path), "--out-dir", str(tmp_path / "o"), "--root", str(REPO_ROOT)]) == 2
    err = capsys.readouterr().err
    assert str(COCO_TRAIN) in err and str(pair[1]) in err and "data.disjoint_images" in err
    assert not (tmp_path / "o").exists()


def test_anchors_for_category_without_train_masks(prepared_lvis):
    from longtail.embedding.embed import select_anchors

    tr = _read(prepared_lvis, "train.json")
    no_masks = _read(prepared_lvis, "categories.json")["counts"]["without_train_masks_ids"]
    _, missing = select_anchors(tr, 5, 0, source="train.json", on_missing="skip")
    assert missing == no_masks
    with pytest.raises(LongtailError, match=r"train\.json.*embedding\.on_missing_anchor"):
        select_anchors(tr, 5, 0, source="train.json", on_missing="fail")


def test_lvis_file_with_other_categories_is_named(tmp_path, pair, params, capsys):
    bad = _load(pair[1])
    bad["categories"] = bad["categories"][:-1]
    p = tmp_path / "lvis_other.json"
    p.write_text(json.dumps(bad))
    assert main(["prepare", "--params", str(lvis_params(params, tmp_path, pair[0], p)), "--out-dir",
                 str(tmp_path / "o"), "--root", str(REPO_ROOT)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "LVIS version" in err
