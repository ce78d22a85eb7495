"""Cluster labelling, purity, COCO/LVIS AP and the `cluster`/`evaluate` CLI on the prepared val set.

Proposals = the GT masks of results/data/val.json (shared proposal format); embeddings = planted clusters in
the Poincaré ball, one per category, so every number below has a hand-computable value.
"""

import json
from pathlib import Path

import geoopt
import numpy as np
import pytest
import torch

from longtail import REPO_ROOT
from longtail.cli import main
from longtail.common.errors import LongtailError
from longtail.common.masks import rle_for_json, to_rle
from longtail.discovery import evaluate as E
from longtail.proposals.format import make_record, read_proposals, write_proposals

LVIS = REPO_ROOT / "data" / "lvis" / "lvis_val_100.json"
BALL = geoopt.PoincareBall()
VAL: Path = None  # type: ignore[assignment]   # the prepared val.json (session fixture `prepared`)


@pytest.fixture(autouse=True)
def _setup(monkeypatch, prepared):
    global VAL
    VAL = prepared / "val.json"
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def gt_proposals(tmp_path: Path, n_images: int = 60, extra_ids=()):
    """Proposal set = non-crowd GT masks of the first n_images val images (+ extra_ids), score 1."""
    gt = json.loads(VAL.read_text())
    ids = [im["id"] for im in gt["images"][:n_images]] + [i for i in extra_ids]
    imgs = [im for im in gt["images"] if im["id"] in set(ids)]
    by_id = {im["id"]: im for im in imgs}
    recs, cats = [], []
    for a in gt["annotations"]:
        if a["image_id"] in by_id and not a.get("iscrowd", 0):
            im = by_id[a["image_id"]]
            rle = rle_for_json(to_rle(a["segmentation"], im["height"], im["width"]))
            recs.append(make_record(a["image_id"], rle, 1.0, gt_category=a["category_id"]))
    out = tmp_path / "proposals"
    write_proposals(out, recs, imgs, method="gt", dataset=str(VAL), topk=100, nms_iou=1.0)
    _, recs = read_proposals(out)   # sorted order = proposal ids
    cats = np.array([r["gt_category"] for r in recs])
    return gt, out, recs, cats


def planted_embeddings(cats, all_cats, seed=0, spread=0.03, anchors_per=3):
    """One tight cluster per category: centres spread over the ball on 3 rings."""
    rng = np.random.default_rng(seed)
    all_cats = sorted(all_cats)
    n = len(all_cats)
    ang = np.arange(n) * 2 * np.pi * 0.618034  # golden-angle spiral
    rad = 1.0 + 3.0 * np.sqrt((np.arange(n) + 0.5) / n)
    cen = BALL.expmap0(torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1) * rad[:, None]))
    pos = {c: i for i, c in enumerate(all_cats)}

    def around(c, m):
        ctr = cen[pos[c]].expand(m, 2)
        return BALL.expmap(ctr, BALL.transp0(ctr, torch.tensor(rng.normal(size=(m, 2)) * spread))).numpy()

    Z = np.concatenate([around(c, 1) for c in cats])
    A = np.concatenate([around(c, anchors_per) for c in all_cats])
    Acat = np.repeat(all_cats, anchors_per)
    return Z.astype(np.float32), A.astype(np.float32), Acat


def write_npz(path, Z, A, Acat, recs, space="poincare"):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, proposal_embeddings=Z, proposal_ids=np.arange(len(Z)),
             proposal_image_ids=np.array([r["image_id"] for r in recs]),
             proposal_scores=np.array([r["score"] for r in recs]), anchor_embeddings=A,
             anchor_category_ids=Acat, anchor_ann_ids=np.arange(len(A)), space=space, curvature=1.0)


# -- hand-computed cases --------------------------------------------------------------------------------------
def test_greedy_labels_hand_computed():
    D = np.array([[1.0, 2.0], [0.5, 3.0], [4.0, 5.0]])
    # (c1, g10)=0.5 first; then (c0, g10) is taken -> (c0, g20)=2.0; c2 stays novel
    assert E.greedy_labels(D, [10, 20]).tolist() == [20, 10, -1]
    D = np.array([[np.inf, np.inf], [0.2, 0.1]])   # empty cluster 0 never labelled
    assert E.greedy_labels(D, [1, 2]).tolist() == [-1, 2]


def test_cluster_category_distance_is_mean_pairwise():
    Z = np.array([[0.1, 0.0], [0.2, 0.0], [-0.5, 0.1]])
    A = np.array([[0.0, 0.3], [0.0, -0.3], [-0.4, 0.0]])
    D, cats = E.cluster_category_distance(Z, np.array([0, 0, 1]), 3, A, np.array([7, 7, 9]), "poincare")
    from longtail.discovery.kmeans import poincare_dist

    d = lambda a, b: float(poincare_dist(torch.tensor(a), torch.tensor(b)))
    want00 = np.mean([d(Z[i], A[j]) for i in (0, 1) for j in (0, 1)])
    assert cats.tolist() == [7, 9]
    assert D[0, 0] == pytest.approx(want00, rel=1e-12)
    assert D[1, 1] == pytest.approx(d(Z[2], A[2]), rel=1e-12)
    assert np.isinf(D[2]).all()
    De, _ = E.cluster_category_distance(Z, np.array([0, 0, 1]), 3, A, np.array([7, 7, 9]), "euclidean")
    assert De[1, 1] == pytest.approx(np.linalg.norm(Z[2] - A[2]))


def test_purity_hand_computed():
    cl = np.array([0, 0, 0, 1, 1, 2, 2])
    gt = np.array([1, 1, 2, 3, 3, -1, 4])
    # cluster 0: majority 2 of 3, cluster 1: 2 of 2, cluster 2: 1 of 1 (the -1 item has no GT) -> 5/6
    assert E.purity(cl, gt)["purity"] == pytest.approx(5 / 6)
    lab = np.array([1, -1, 4])   # cluster 1 unlabelled -> excluded: (2 + 1) / 4
    r = E.purity(cl, gt, lab, groups={1: "f", 4: "r"})
    assert r["purity"] == pytest.approx(3 / 4) and r["clusters"] == 2
    assert r["purity_f"] == pytest.approx(2 / 3) and r["purity_r"] == pytest.approx(1.0)


def test_lvis_gt_as_results_gives_ap_one():
    gt = json.loads(LVIS.read_text())
    r = E.lvis_eval(gt, E.lvis_gt_as_results(gt))
    for k in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
        assert r[k] == pytest.approx(1.0, abs=1e-6), k
    # dropping every detection of the frequent categories: APf = 0, APr stays 1
    freq = {c["id"]: c["frequency"] for c in gt["categories"]}
    r = E.lvis_eval(gt, [d for d in E.lvis_gt_as_results(gt) if freq[d["category_id"]] != "f"])
    assert r["APf"] == pytest.approx(0.0) and r["APr"] == pytest.approx(1.0, abs=1e-6)


def test_coco_eval_hand_computed(tmp_path):
    gt, _, recs, cats = gt_proposals(tmp_path, n_images=40)
    novel = [c["id"] for c in gt["categories"] if c["split"] == "novel"]
    img_ids = sorted({r["image_id"] for r in recs})
    dets = [{**r, "category_id": int(c)} for r, c in zip(recs, cats)]
    present = sorted({int(c) for c in cats if c in set(novel)})
    r = E.coco_eval(gt, dets, novel, img_ids)
    assert r["AP"] == pytest.approx(1.0) and r["categories_evaluated"] == len(present)
    # remove every detection of one novel category: mean AP over categories = (n - 1) / n
    drop = present[0]
    r = E.coco_eval(gt, [d for d in dets if d["category_id"] != drop], novel, img_ids)
    assert r["AP"] == pytest.approx((len(present) - 1) / len(present))
    assert E.coco_eval(gt, [], novel, img_ids)["AP"] == 0.0


def test_gt_class_of_proposals(tmp_path):
    gt, _, recs, cats = gt_proposals(tmp_path, n_images=20)
    assert np.array_equal(E.gt_class_of_proposals(recs, gt, 0.5), cats)
    # sub-masks of one GT mask G (disjoint from the image's other masks), IoU = |P| / |G| by pixel count: the
    # threshold is crossed at exactly 0.5 (>=), one pixel either side, and at 0.51 / 0.49
    from longtail.common.masks import decode_mask

    ims = {im["id"]: im for im in gt["images"]}
    masks = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and a["image_id"] in {r["image_id"] for r in recs}:
            im = ims[a["image_id"]]
            masks.setdefault(a["image_id"], []).append((a, decode_mask(to_rle(a["segmentation"], im["height"],
                                                                               im["width"]))))
    a, g = next((a, m) for anns in masks.values() for a, m in anns
                if m.sum() >= 400 and m.sum() % 100 == 0
                and not any((m & o).any() for b, o in anns if b is not a))
    n = int(g.sum())
    flat = np.flatnonzero(g.ravel())
    sizes = [n // 2, n // 2 + 1, n // 2 - 1, 51 * n // 100, 49 * n // 100]
    probes = []
    for size in sizes:
        p = np.zeros(g.size, bool)
        p[flat[:size]] = True
        probes.append(make_record(a["image_id"], p.reshape(g.shape), 1.0))
    ious = [(decode_mask(to_rle(p["segmentation"], *g.shape)) & g).sum() / n for p in probes]
    assert ious == [0.5, (n // 2 + 1) / n, (n // 2 - 1) / n, 0.51, 0.49]
    c = a["category_id"]
    assert E.gt_class_of_proposals(probes, gt, 0.5).tolist() == [c, c, -1, c, -1]
    # the threshold is the argument's (n >= 400: 0.5 +- 1/n lies within 0.4975 .. 0.5025)
    assert E.gt_class_of_proposals(probes, gt, 0.505).tolist() == [-1, -1, -1, c, -1]
    assert E.gt_class_of_proposals(probes, gt, 0.49).tolist() == [c, c, c, c, c]


# -- the CLI end to end ---------------------------------------------------------------------------------------
def run_cli(tmp_path, gt, props, recs, cats, space="poincare", extra=(), Z=None, anchor_cats=None):
    """cluster + evaluate on planted embeddings; ``anchor_cats``: only these categories get anchors."""
    all_cats = [c["id"] for c in gt["categories"]]
    Zp, A, Acat = planted_embeddings(cats, all_cats)
    if anchor_cats is not None:
        keep = np.isin(Acat, list(anchor_cats))
        A, Acat = A[keep], Acat[keep]
    if Z is not None:
        Zp = Z
    if space == "euclidean":
        Zp = BALL.logmap0(torch.tensor(Zp, dtype=torch.float64)).numpy().astype(np.float32)
        A = BALL.logmap0(torch.tensor(A, dtype=torch.float64)).numpy().astype(np.float32)
    emb = tmp_path / "emb" / space / "embeddings.npz"
    write_npz(emb, Zp, A, Acat, recs, space)
    out = tmp_path / "disc" / space
    k = len(set(cats.tolist()))
    sets = ["--set", f"discovery.k={k}", "--set", "discovery.baseline_seeds=2", *extra]
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(out), *sets]) == 0
    assert main(["evaluate", "--embeddings", str(emb), "--clusters", str(out / "clusters.npz"),
                 "--proposals", str(props), "--gt", str(VAL), "--out-dir", str(out), *sets]) == 0
    return out, json.loads((out / "metrics.json").read_text()), k


@pytest.mark.parametrize("space", ["poincare", "euclidean"])
def test_cli_perfect_embedding_gives_ap_one(tmp_path, space):
    gt, props, recs, cats = gt_proposals(tmp_path)
    out, m, k = run_cli(tmp_path, gt, props, recs, cats, space)
    assert m["space"] == space and m["k"] == k and m["num_proposals"] == len(recs)
    assert m["clusters_matched"] == k and m["clusters_novel"] == 0
    assert m["novel"]["AP"] == pytest.approx(1.0) and m["novel"]["AP50"] == pytest.approx(1.0)
    assert m["purity"]["purity"] == pytest.approx(1.0) and m["purity"]["purity_novel"] == pytest.approx(1.0)
    # a random embedding of the same proposals, same k, is far less pure
    assert m["baseline_random"]["purity"] < 0.5 and m["purity_ratio_vs_random"] >= 2
    cm = json.loads((out / "cluster_metrics.json").read_text())
    assert cm["k"] == k and cm["explained_variation"] > 0.99
    el = json.loads((out / "elbow.json").read_text())
    assert el["k"] == sorted(el["k"]) and len(el["inertia"]) == len(el["k"])
    with np.load(out / "clusters.npz") as f:
        assert f["labels"].shape == (len(recs),) and f["centers"].shape == (k, 2)
        assert f["grid_labels"].shape == (len(el["k"]), len(recs))
    # purity at every k of the grid: pure clusters at every k <= number of categories; matched <= k
    byk = {r["k"]: r for r in m["purity_by_k"]}
    assert sorted(byk) == el["k"]
    assert all(r["clusters_matched"] <= r["k"] for r in byk.values())
    assert byk[max(byk)]["purity"] == pytest.approx(1.0)   # k >= #categories: clusters split pure groups
    # the random baseline at every k of the grid too, and its ratio
    for r in byk.values():
        assert 0 < r["baseline_random_purity"] < 0.6
        assert r["purity_ratio_vs_random"] == pytest.approx(r["purity"] / r["baseline_random_purity"])
    assert byk[max(byk)]["purity_ratio_vs_random"] >= 2
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == len(recs)


def test_cli_swapped_labels_hand_computed(tmp_path):
    """Embed two novel categories at each other's anchors: both lose their AP -> AP = (n - 2) / n."""
    gt, props, recs, cats = gt_proposals(tmp_path)
    novel = {c["id"] for c in gt["categories"] if c["split"] == "novel"}
    present = sorted({int(c) for c in cats if c in novel})
    a, b = present[:2]
    swapped = cats.copy()
    swapped[cats == a], swapped[cats == b] = b, a
    Z, _, _ = planted_embeddings(swapped, [c["id"] for c in gt["categories"]])
    _, m, _ = run_cli(tmp_path, gt, props, recs, cats, Z=Z)
    assert m["novel"]["AP"] == pytest.approx((len(present) - 2) / len(present))
    assert m["purity"]["purity"] == pytest.approx(1.0)   # the clusters are still pure


def test_cli_lvis_metrics_and_missing_anchor(tmp_path):
    """LVIS AP through the synsets, and one novel category without anchors: its cluster stays novel (AP 0)."""
    lv = json.loads(LVIS.read_text())
    val_ids = {im["id"] for im in json.loads(VAL.read_text())["images"]}
    both = sorted({im["id"] for im in lv["images"]} & val_ids)
    gt, props, recs, cats = gt_proposals(tmp_path, n_images=30, extra_ids=both)
    img_ids = {r["image_id"] for r in recs} | set(both)
    # COCO id -> LVIS id through the synsets, written here from the files (COCO name -> synset -> LVIS id)
    syn = json.loads((REPO_ROOT / "data/lvis/coco_to_synset.json").read_text())
    lvis_of_syn = {c["synset"]: c["id"] for c in lv["categories"]}
    to_lvis = {c["id"]: lvis_of_syn[syn[c["name"]]["synset"]] for c in gt["categories"]
               if c["name"] in syn and syn[c["name"]]["synset"] in lvis_of_syn}
    freq = {c["id"]: c["frequency"] for c in lv["categories"]}
    novel = {c["id"] for c in gt["categories"] if c["split"] == "novel"}
    present = sorted(set(cats.tolist()))
    novel_present = [c for c in present if c in novel]
    # the missing category: novel, with an LVIS synset and a proposal on an LVIS image (changes every count below)
    on_lvis = {int(c) for r, c in zip(recs, cats) if r["image_id"] in set(both)}
    c0 = min(c for c in novel_present if c in to_lvis and c in on_lvis)
    _, m, k = run_cli(tmp_path, gt, props, recs, cats, extra=["--set", f"discovery.lvis_json={LVIS}"],
                      anchor_cats=[c for c in present if c != c0])
    assert m["categories_without_anchor"] == [c0] and m["num_categories_without_anchor"] == 1
    assert m["num_anchors"] == 3 * (len(present) - 1)
    # k = #categories, k - 1 of them with anchors: c0's cluster is the one novel cluster, the others keep their label
    assert m["clusters_novel"] == 1 and m["clusters_matched"] == k - 1 == len(present) - 1
    labelled = [c for c in present if c != c0]
    assert m["novel"]["detections"] == int(sum(c in novel and c != c0 for c in cats))
    assert m["novel"]["categories_evaluated"] == len(novel_present)
    assert m["novel"]["AP"] == pytest.approx((len(novel_present) - 1) / len(novel_present))
    # LVIS: the detections on LVIS images of categories with an LVIS synset, minus c0's (novel: no detection)
    lvis_imgs = {im["id"] for im in lv["images"]} & img_ids
    want = sum(1 for r, c in zip(recs, cats) if r["image_id"] in lvis_imgs and c in to_lvis and c != c0)
    assert 0 < want < sum(1 for r, c in zip(recs, cats) if r["image_id"] in lvis_imgs and c in to_lvis)
    assert m["lvis"]["detections"] == want
    assert m["lvis"]["images"] == len(lvis_imgs) == len(both)
    assert m["lvis"]["categories_evaluated"] == len({a["category_id"] for a in lv["annotations"]
                                                     if a["image_id"] in lvis_imgs})
    for key in ("AP", "APr", "APc", "APf"):
        assert m["lvis"][key] is None or 0.0 <= m["lvis"][key] <= 1.0
    # purity per LVIS frequency group (of the COCO categories with a synset) of the cluster labels: pure clusters
    groups = sorted({freq[lid] for lid in to_lvis.values()})
    assert sorted(key[len("purity_"):] for key in m["purity"] if key.startswith("purity_")) == groups
    for g in groups:
        n_g = sum(1 for c in labelled if c in to_lvis and freq[to_lvis[c]] == g)
        assert m["purity"][f"clusters_{g}"] == n_g, g
        assert m["purity"][f"purity_{g}"] == (pytest.approx(1.0) if n_g else None), g
    assert m["purity"]["clusters"] == len(labelled)


def test_cluster_elbow_picks_planted_k(tmp_path, capsys):
    """`cluster` with the default k: elbow on 5 well-separated planted clusters picks k = 5 from a grid around it
    and recovers the clusters; fewer than 3 usable k is an error naming discovery.k_grid."""
    rng = np.random.default_rng(3)
    per, n = 40, 5
    ang = np.arange(n) * 2 * np.pi / n
    cen = BALL.expmap0(torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1) * 2.0))
    Z = torch.cat([BALL.expmap(cen[i].expand(per, 2), BALL.transp0(cen[i].expand(per, 2),
                                                                  torch.tensor(rng.normal(size=(per, 2)) * 0.05)))
                   for i in range(n)]).numpy()
    truth = np.repeat(np.arange(n), per)
    emb = tmp_path / "emb.npz"
    np.savez(emb, proposal_embeddings=Z, proposal_ids=np.arange(len(Z)), proposal_scores=np.ones(len(Z)),
             anchor_embeddings=np.zeros((0, 2)), anchor_category_ids=np.zeros(0, np.int64), space="poincare",
             curvature=1.0)
    from longtail.common.params import load_params

    assert load_params()["discovery"]["k"] == "elbow"   # the default, not set below
    out = tmp_path / "c"
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(out),
                 "--set", "discovery.k_grid=[2, 3, 4, 5, 6, 7, 8, 10, 12]"]) == 0
    cm = json.loads((out / "cluster_metrics.json").read_text())
    el = json.loads((out / "elbow.json").read_text())
    assert cm["k"] == cm["k_elbow"] == el["k_chosen"] == el["k_star"] == n
    with np.load(out / "clusters.npz") as f:
        assert int(f["k"]) == n
        lab = f["labels"]
    # the clustering at k = 5 is the planted one (up to the names of the clusters)
    assert len({(int(a), int(b)) for a, b in zip(lab, truth)}) == n and len(set(lab.tolist())) == n
    assert cm["explained_variation"] > 0.99
    # fewer than 3 values of k: by the schema, and after dropping the k larger than the number of points
    capsys.readouterr()
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(tmp_path / "c2"),
                 "--set", "discovery.k_grid=[2, 3]"]) == 2
    assert "discovery.k_grid" in capsys.readouterr().err
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(tmp_path / "c3"),
                 "--set", f"discovery.k_grid=[2, 3, {len(Z) + 1}]"]) == 2
    err = capsys.readouterr().err
    assert "discovery.k_grid" in err and "fewer than 3" in err and str(len(Z)) in err
    assert not (tmp_path / "c3" / "clusters.npz").exists()


def test_bad_inputs(tmp_path):
    gt, props, recs, cats = gt_proposals(tmp_path, n_images=10)
    Z, A, Acat = planted_embeddings(cats, [c["id"] for c in gt["categories"]])
    emb = tmp_path / "e.npz"
    write_npz(emb, Z, A, Acat, recs)
    # k larger than the number of points
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(tmp_path / "o"),
                 "--set", f"discovery.k={len(Z) + 1}"]) == 2
    # NaN features
    Zn = Z.copy()
    Zn[0, 1] = np.nan
    write_npz(emb, Zn, A, Acat, recs)
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(tmp_path / "o")]) == 2
    # a category with GT but no anchor: fail when asked to
    keep = Acat != int(cats[0])
    write_npz(emb, Z, A[keep], Acat[keep], recs)
    k = str(len(set(cats.tolist())))
    assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(tmp_path / "o"),
                 "--set", f"discovery.k={k}"]) == 0
    ev = ["evaluate", "--embeddings", str(emb), "--clusters", str(tmp_path / "o" / "clusters.npz"),
          "--proposals", str(props), "--gt", str(VAL), "--out-dir", str(tmp_path / "o"),
          "--set", "discovery.baseline_seeds=0", "--set", "discovery.eval_categories=all"]
    assert main(ev + ["--set", "discovery.on_missing_anchor=fail"]) == 2
    assert main(ev) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["categories_without_anchor"] == [int(cats[0])]
    # missing keys in the npz
    np.savez(emb, proposal_embeddings=Z)
    with pytest.raises(LongtailError, match="missing keys"):
        from longtail.discovery.embeddings import load_embeddings

        load_embeddings(emb)


def test_evaluate_input_errors_name_the_files(tmp_path, capsys):
    """No anchors, anchors of categories absent from the GT, proposal ids outside the proposal set: each a
    LongtailError (rc 2) naming the file, the offending key and values; nothing written."""
    gt, props, recs, cats = gt_proposals(tmp_path, n_images=10)
    Z, A, Acat = planted_embeddings(cats, [c["id"] for c in gt["categories"]])
    sets = ["--set", "discovery.k=4", "--set", "discovery.baseline_seeds=0", "--set", "discovery.k_grid=[2, 3, 4]"]

    def evaluate(name, Zx=Z, Ax=A, Acx=Acat, ids=None):
        emb = tmp_path / f"{name}.npz"
        write_npz(emb, Zx, Ax, Acx, recs)
        if ids is not None:   # the same file with other proposal ids
            with np.load(emb) as f:
                d = dict(f)
            np.savez(emb, **{**d, "proposal_ids": ids})
        out = tmp_path / name
        assert main(["cluster", "--embeddings", str(emb), "--out-dir", str(out), *sets]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--embeddings", str(emb), "--clusters", str(out / "clusters.npz"),
                     "--proposals", str(props), "--gt", str(VAL), "--out-dir", str(out), *sets]) == 2
        assert not (out / "metrics.json").exists() and not (out / "detections.json").exists()
        return emb, capsys.readouterr().err

    emb, err = evaluate("no_anchors", Ax=np.zeros((0, 2), np.float32), Acx=np.zeros(0, np.int64))
    assert str(emb) in err and "no anchors" in err and "anchor_embeddings" in err and "longtail embed" in err
    absent = max(c["id"] for c in gt["categories"]) + 1000
    emb, err = evaluate("absent_category", Acx=np.where(Acat == Acat[0], absent, Acat))
    assert str(emb) in err and str(VAL) in err and f"anchor_category_ids [{absent}]" in err
    ids = np.arange(len(Z))
    ids[3] = len(recs) + 7
    emb, err = evaluate("ids_out_of_range", ids=ids)
    assert str(emb) in err and str(props) in err and f"proposal_ids [{len(recs) + 7}]" in err
    assert f"{len(recs)} proposals" in err
    ids[3] = -1
    _, err = evaluate("ids_negative", ids=ids)
    assert "proposal_ids [-1]" in err


@pytest.mark.slow
def test_numbers_go_to_mlflow(tmp_path, monkeypatch):
    """With tracking on, the cluster/evaluate runs hold the metrics of their metrics files."""
    import mlflow

    monkeypatch.setenv("LONGTAIL_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("LONGTAIL_PARENT_RUN_ID", raising=False)
    gt, props, recs, cats = gt_proposals(tmp_path, n_images=15)
    _out, m, k = run_cli(tmp_path, gt, props, recs, cats)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    ev = runs[runs["tags.longtail.stage"] == "evaluate"].iloc[0]
    assert ev["metrics.novel.AP"] == pytest.approx(m["novel"]["AP"])
    assert ev["metrics.purity.purity"] == pytest.approx(m["purity"]["purity"])
    assert ev["metrics.baseline_random.purity"] == pytest.approx(m["baseline_random"]["purity"])
    cl = runs[runs["tags.longtail.stage"] == "cluster"].iloc[0]
    assert cl["metrics.k"] == k and cl["params.k"] == str(k)
