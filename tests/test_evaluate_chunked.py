"""`longtail evaluate` chunk by chunk of images (issue 15, bounded memory) gives the numbers of one evaluation.

Real sample data: the prepared val split (177 images) with a proposal set of its GT masks (random scores) plus
shifted copies of them (false positives and partial matches), noisy cluster labels, COCO AP on the novel
categories and LVIS AP through `discovery.lvis_json` (data/lvis/lvis_val_100.json). Evaluated with
`discovery.eval_chunk_images` = 7 (26 chunks, the last one short) and with every image in one chunk; both are
checked against pycocotools' and lvis' own single evaluation of the same detections.
"""

import json

import numpy as np
import pytest

from longtail import REPO_ROOT
from longtail.common.masks import decode_mask, encode_mask, to_rle
from longtail.discovery import evaluate as E
from longtail.discovery.labelling import evaluate_clusters, read_gt
from longtail.proposals.format import make_record, read_proposals, write_proposals

LVIS = REPO_ROOT / "data" / "lvis" / "lvis_val_100.json"


@pytest.fixture(scope="module")
def case(prepared, tmp_path_factory):
    gt = json.loads((prepared / "val.json").read_text())
    imgs = {im["id"]: im for im in gt["images"]}
    rng = np.random.default_rng(0)
    recs = []
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            continue
        im = imgs[a["image_id"]]
        m = decode_mask(to_rle(a["segmentation"], im["height"], im["width"]))
        recs.append(make_record(im["id"], m, float(rng.random()), gt_category=a["category_id"]))
        if rng.random() < 0.6:      # a shifted copy: IoU from ~0 to ~0.9, a lower score most of the time
            dy, dx = rng.integers(-12, 13, size=2)
            recs.append(make_record(im["id"], np.roll(m, (int(dy), int(dx)), (0, 1)), float(rng.random()) * 0.8,
                                    gt_category=a["category_id"]))
    out = tmp_path_factory.mktemp("chunked") / "proposals"
    write_proposals(out, recs, gt["images"], method="gt-shifted", dataset="val.json", topk=1000, nms_iou=1.0)
    index, recs = read_proposals(out)
    cats = sorted({c["id"] for c in gt["categories"]})
    pc = np.array([r["gt_category"] for r in recs])
    # one cluster per category, 25% of the proposals in a random other cluster; anchors at the clean centres
    labels = np.searchsorted(cats, pc)
    noisy = rng.random(len(labels)) < 0.25
    labels[noisy] = rng.integers(len(cats), size=int(noisy.sum()))
    ang = np.arange(len(cats)) * 2.39996
    centres = 0.8 * np.stack([np.cos(ang), np.sin(ang)], 1) * np.sqrt((np.arange(len(cats)) + 0.5) / len(cats))[:, None]
    emb = {"proposal_embeddings": centres[labels] + rng.normal(scale=0.01, size=(len(labels), 2)),
           "proposal_ids": np.arange(len(recs)), "anchor_embeddings": centres,
           "anchor_category_ids": np.asarray(cats), "space": "poincare", "curvature": 1.0}
    return gt, out, index, recs, emb, labels, len(cats), prepared / "val.json"


def run(case, params, chunk, path=True):
    from longtail.discovery.labelling import load_lvis

    gt, out, index, recs, emb, labels, k, gt_path = case
    cfg = {**params["discovery"], "eval_chunk_images": chunk, "baseline_seeds": 1, "n_init": 1, "max_iter": 5,
           "lvis_json": str(LVIS), "device": "cpu"}
    img_ids = [im["id"] for im in index["images"]]
    lvis, synsets = load_lvis(cfg, img_ids)
    assert lvis is not None
    # the chunked run reads the GT as `longtail evaluate` does (polygons as float64 arrays), the other as lists
    g = read_gt(gt_path) if path else json.loads(json.dumps(gt))
    m, dets, cl = evaluate_clusters(emb, labels, k, out if path else recs, g, cfg, img_ids, 0, lvis, synsets,
                                    index=index if path else None)
    return m, dets, cl, lvis, synsets


def test_chunked_equals_one_evaluation(case, params):
    """7-image chunks (read through the ProposalReader) == every image in one chunk (the record list) ==
    pycocotools' / lvis' own single evaluation, to the bit."""
    gt, out, index, recs, emb, labels, k, gt_path = case
    m7, d7, cl7, lvis, synsets = run(case, params, 7)
    m1, d1, cl1, _, _ = run(case, params, 10 ** 6, path=False)
    assert m7 == m1 and d7 == d1 and cl7.tolist() == cl1.tolist()
    assert len(index["images"]) // 7 > 20 and len(index["images"]) % 7   # many chunks, the last one short
    # the numbers are not degenerate: partial AP, impure clusters, LVIS detections on the LVIS images
    assert 0.05 < m7["novel"]["AP"] < 0.95 and m7["novel"]["APs"] is not None
    assert 0.3 < m7["purity"]["purity"] < 0.95 and m7["proposals_with_gt_class"] < len(recs)
    assert m7["lvis"]["detections"] > 5 and 0 < m7["lvis"]["AP"] < 1
    on_lvis = [n for n, i in enumerate(sorted(im["id"] for im in index["images"]))
               if i in {im["id"] for im in lvis["images"]}]
    assert m7["lvis"]["images"] == len(on_lvis) == 3 and len({n // 7 for n in on_lvis}) >= 2   # in 2+ chunks
    # COCO: one COCOeval over every detection, as before chunking
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    novel = [c["id"] for c in gt["categories"] if c["split"] == "novel"]
    img_ids = sorted(im["id"] for im in index["images"])
    g = json.loads(json.dumps(gt))
    cg = COCO()
    cg.dataset = {**g, "info": {}}
    with E._quiet():
        cg.createIndex()
        evc = [c for c in novel if c in {a["category_id"] for a in g["annotations"]}]
        dets = [dict(d) for d in d7 if d["category_id"] in set(evc)]
        ev = COCOeval(cg, cg.loadRes(dets), "segm")
        ev.params.catIds, ev.params.imgIds, ev.params.maxDets = evc, img_ids, [1, 10, params["discovery"]["max_dets"]]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [m7["novel"][key] for key in E.COCO_KEYS] == [float(s) for s in ev.stats[:6]]
    assert m7["novel"]["detections"] == len(dets)
    # LVIS: one LVISEval over every detection mapped to LVIS ids
    from lvis import LVISEval, LVISResults

    to_lvis = E.coco_to_lvis_ids(gt, lvis, synsets)
    lvis = json.loads(LVIS.read_text())              # as lists (the evaluation read polygons as arrays)
    keep = {im["id"] for im in lvis["images"]} & set(img_ids)
    lg = {**lvis, "images": [im for im in lvis["images"] if im["id"] in keep],
          "annotations": [dict(a) for a in lvis["annotations"] if a["image_id"] in keep]}
    ldets = [{"image_id": d["image_id"], "category_id": to_lvis[d["category_id"]], "score": d["score"],
              "segmentation": {**d["segmentation"], "counts": d["segmentation"]["counts"].encode()}}
             for d in d7 if d["category_id"] in to_lvis and d["image_id"] in keep]
    with E._quiet():
        lv = E._lvis_from_dict(json.loads(json.dumps(lg)))
        lev = LVISEval(lv, LVISResults(lv, ldets, max_dets=300), "segm")
        lev.run()
    r = lev.get_results()
    assert [m7["lvis"][key] for key in E.LVIS_KEYS] == [float(r[key]) if r[key] >= 0 else None for key in E.LVIS_KEYS]


def test_cli_writes_the_same_detections_in_chunks(case, params, tmp_path, monkeypatch):
    """The verb: detections.json streamed chunk by chunk is the file of the one-chunk run, byte for byte."""
    from longtail.cli import main

    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")
    gt, out, index, recs, emb, labels, k, gt_path = case
    e = tmp_path / "emb.npz"
    np.savez(e, proposal_embeddings=emb["proposal_embeddings"].astype(np.float32), proposal_ids=emb["proposal_ids"],
             proposal_image_ids=np.array([r["image_id"] for r in recs]), proposal_scores=np.ones(len(recs)),
             anchor_embeddings=emb["anchor_embeddings"], anchor_category_ids=emb["anchor_category_ids"],
             anchor_ann_ids=np.arange(k), space="poincare", curvature=1.0)
    c = tmp_path / "clusters.npz"
    np.savez(c, labels=labels, k=k, proposal_ids=emb["proposal_ids"])
    res = {}
    for chunk in (5, 1000):
        d = tmp_path / f"c{chunk}"
        assert main(["evaluate", "--embeddings", str(e), "--clusters", str(c), "--proposals", str(out / "index.json"),
                     "--gt", str(gt_path), "--out-dir", str(d), "--set", "discovery.baseline_seeds=0",
                     "--set", f"discovery.eval_chunk_images={chunk}"]) == 0
        res[chunk] = ((d / "detections.json").read_bytes(), json.loads((d / "metrics.json").read_text()))
        assert not [p for p in d.iterdir() if p.name.startswith(".")]          # no temp file left
    assert res[5] == res[1000]
    assert json.loads(res[5][0]) and res[5][1]["novel"]["AP"] > 0.05


@pytest.mark.parametrize("max_pairs", [E.LvisChunks.max_pairs, 5000])
def test_lvis_chunks_with_subsets_equal_one_lvis_eval(max_pairs, monkeypatch):
    """LvisChunks over 9-image chunks of the 100 LVIS images (federated lists, 300 detections an image, a
    category subset) == one LVISEval of the lvis API over the same detections; also with each chunk evaluated
    in runs of 4, 4, 1 images (max_pairs 5000 over 1230 categories)."""
    from lvis import LVISEval, LVISResults

    monkeypatch.setattr(E.LvisChunks, "max_pairs", max_pairs)

    gt = json.loads(LVIS.read_text())
    rng = np.random.default_rng(1)
    cats = sorted(c["id"] for c in gt["categories"])
    dets = E.lvis_gt_as_results(gt)
    for d in dets:
        d["score"] = float(rng.random())
        if rng.random() < 0.3:                     # a wrong category: a false positive (or ignored)
            d["category_id"] = int(rng.choice(cats))
    sub = sorted({d["category_id"] for d in dets})[::3]
    ids = sorted(im["id"] for im in gt["images"])
    ev = E.LvisChunks(json.loads(json.dumps(gt)), ids, subsets={"sub": sub})
    for s in range(0, len(ids), 9):
        ev.add(ids[s:s + 9], [d for d in dets if d["image_id"] in set(ids[s:s + 9])])
    got = ev.result()
    with E._quiet():
        lv = E._lvis_from_dict(json.loads(json.dumps(gt)))
        res = [{**d, "segmentation": {**d["segmentation"], "counts": d["segmentation"]["counts"].encode()}}
               for d in dets]
        ref = LVISEval(lv, LVISResults(lv, res, max_dets=300), "segm")
        ref.run()
    r = ref.get_results()
    assert [got[key] for key in E.LVIS_KEYS] == [float(r[key]) if r[key] >= 0 else None for key in E.LVIS_KEYS]
    assert 0.2 < got["AP"] < 0.9 and got["sub"]["AP"] != got["AP"]


def _same(x, y) -> bool:
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    return type(x) is type(y) and x == y


@pytest.mark.parametrize("indent", [None, 2])
def test_read_gt_packs_the_annotations_of_json_load(prepared, tmp_path, indent):
    """read_gt keeps the annotations as text (parsed when read, issue 15): every annotation, image and category
    is what json.load (with compact_polygons) gives, whatever the layout; the per-image index and columns agree;
    (annotations shuffled: an image's are not consecutive); a non-ASCII name elsewhere in the file does not
    widen the kept text; bad files are clear errors."""
    from longtail.common.errors import LongtailError
    from longtail.discovery.groundtruth import PackedAnnotations, annotation_column, compact_polygons

    gt = json.loads((prepared / "val.json").read_text())
    gt["categories"][0]["name"] = "caf\u00e9 \u2603"            # non-ASCII outside the annotations
    gt["annotations"][0]["iscrowd"] = 1
    gt["annotations"] = [gt["annotations"][i] for i in np.random.default_rng(1).permutation(len(gt["annotations"]))]
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt, indent=indent, ensure_ascii=False))
    ref = json.loads(p.read_text(), object_hook=compact_polygons)
    g = read_gt(p)
    anns = g["annotations"]
    assert isinstance(anns, PackedAnnotations) and len(anns) == len(ref["annotations"]) > 1000
    assert g.keys() == ref.keys() and all(_same(g[k], ref[k]) for k in ref if k != "annotations")
    assert _same(list(anns), ref["annotations"]) and _same(anns[-1], ref["annotations"][-1])
    assert anns[0] is not anns[0]                                       # a new dict at every read
    for key in ("image_id", "category_id"):
        assert annotation_column(anns, key).tolist() == [a[key] for a in ref["annotations"]]
    assert len(anns._text) < len(p.read_text()) and anns._text.isascii()
    by_img = E.gt_by_image(g)
    ids = [im["id"] for im in gt["images"]]
    for chunk in (ids[:1], ids[5:12], ids):   # ascending image id, each image's annotations in file order
        want = [a for i in sorted(chunk) for a in ref["annotations"] if a["image_id"] == i]
        assert _same(E.gt_subset(g, by_img, chunk)["annotations"], want) and len(want) >= len(chunk)
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": [ ], "categories": []}')
    assert len(read_gt(empty)["annotations"]) == 0
    for bad in ('{"images": [], "annotations": [{"image_id": 1, "category_id": 2}', '{"annotations": [1]}',
                '{"annotations": []} x'):
        empty.write_text(bad)
        with pytest.raises(LongtailError, match="empty.json"):
            read_gt(empty)
