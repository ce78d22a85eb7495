"""Label clusters with the nearest GT anchors and score them (Weng et al. 3.3, Tables 1 and 3): novel-category
mask AP, LVIS AP, purity overall / per group / per k, and the random-embedding baseline. The building blocks
(distances, greedy labels, purity, COCO / LVIS evaluation) are in :mod:`longtail.discovery.evaluate`."""

from __future__ import annotations

import logging

import numpy as np

from longtail.common import LongtailError

log = logging.getLogger(__name__)


def category_groups(gt: dict, lvis: dict | None, to_lvis: dict[int, int]) -> dict[int, str]:
    """Category id -> group: LVIS frequency (r/c/f) when the ground truth is LVIS's or LVIS is configured, else
    the base/novel split."""
    if all("frequency" in c for c in gt["categories"]):
        return {c["id"]: c["frequency"] for c in gt["categories"]}
    if lvis is not None:
        freq = {c["id"]: c["frequency"] for c in lvis["categories"]}
        return {cid: freq[lid] for cid, lid in to_lvis.items() if lid in freq}
    return {c["id"]: c.get("split", "all") for c in gt["categories"]}


def check_inputs(emb: dict, n_records: int, gt: dict, sources: dict[str, str] | None = None) -> None:
    """Embeddings, proposal set and ground truth belong together: proposal ids index the proposal set, anchors
    exist and are of ground-truth categories. ``sources`` names the files (keys embeddings, proposals, gt)."""
    src = {"embeddings": "the embeddings", "proposals": "the proposal set", "gt": "the ground truth JSON",
           **(sources or {})}
    pids = np.asarray(emb["proposal_ids"], np.int64)
    bad = pids[(pids < 0) | (pids >= n_records)]
    if len(bad):
        raise LongtailError(f"{src['embeddings']}: proposal_ids {sorted(set(bad.tolist()))[:10]} are outside the "
                            f"{n_records} proposals of {src['proposals']} (ids 0..{n_records - 1}); the embeddings "
                            f"were made from another proposal set: re-run `longtail embed` on it")
    A, Acat = emb["anchor_embeddings"], np.asarray(emb["anchor_category_ids"])
    if len(A) == 0:
        raise LongtailError(f"{src['embeddings']}: no anchors (anchor_embeddings is empty), so no cluster can be "
                            f"labelled; re-run `longtail embed` with GT anchors")
    if len(Acat) != len(A):
        raise LongtailError(f"{src['embeddings']}: anchor_category_ids ({len(Acat)}) and anchor_embeddings "
                            f"({len(A)}) differ in length; re-run `longtail embed`")
    unknown = sorted(set(Acat.tolist()) - {c["id"] for c in gt["categories"]})
    if unknown:
        raise LongtailError(f"{src['embeddings']}: anchor_category_ids {unknown[:10]} are not categories of "
                            f"{src['gt']}; evaluate with the ground truth of the label space the anchors were "
                            f"embedded in")


def evaluate_clusters(emb: dict, labels: np.ndarray, k: int, records: list[dict], gt: dict, cfg: dict,
                      img_ids: list[int], seed: int, lvis: dict | None = None, synsets: dict | None = None,
                      grid: dict[int, np.ndarray] | None = None, sources: dict[str, str] | None = None
                      ) -> tuple[dict, list[dict], np.ndarray]:
    """All numbers of `longtail evaluate` for one clustering; returns (metrics, detections, cluster labels).
    ``sources``: the input files by name, for the errors of :func:`check_inputs`."""
    from longtail.discovery import evaluate as E

    check_inputs(emb, len(records), gt, sources)
    Z, space, curv = emb["proposal_embeddings"].astype(np.float64), emb["space"], emb["curvature"]
    pids = np.asarray(emb["proposal_ids"], np.int64)
    A, Acat = emb["anchor_embeddings"].astype(np.float64), np.asarray(emb["anchor_category_ids"], np.int64)
    gt_cats = {c["id"]: c for c in gt["categories"]}
    lvis_gt = E.is_lvis(gt)   # the LVIS label space of `longtail prepare` (COCO -> LVIS, Table 1)
    if lvis_gt and lvis is not None:
        raise LongtailError("--gt is already LVIS ground truth (the LVIS label space of `longtail prepare`): "
                            "set discovery.lvis_json: null")
    split = cfg["eval_categories"]
    eval_cats = [c for c in gt_cats if split == "all" or gt_cats[c].get("split") == split]
    present = {a["category_id"] for a in gt["annotations"] if a["image_id"] in set(img_ids)}
    no_anchor = sorted(c for c in eval_cats if c in present and c not in set(Acat.tolist()))
    if no_anchor and cfg["on_missing_anchor"] == "fail":
        raise LongtailError(f"categories {no_anchor} have ground truth but no anchor embedding, so no cluster "
                            f"can take their label; embed anchors for them or set "
                            f"discovery.on_missing_anchor: warn (their AP then counts as 0)")
    if no_anchor:
        log.warning("%d evaluated categories have no anchor (their AP counts as 0): %s", len(no_anchor),
                    no_anchor)

    D, cats = E.cluster_category_distance(Z, labels, k, A, Acat, space, curv)
    cl_label = E.greedy_labels(D, cats)
    dets = E.detections(records, pids, labels, cl_label)
    gt_class = E.gt_class_of_proposals([records[i] for i in pids], gt, cfg["purity_iou"])
    to_lvis = E.coco_to_lvis_ids(gt, lvis, synsets or {}) if lvis is not None else {}
    groups = category_groups(gt, lvis, to_lvis)
    pur = E.purity(labels, gt_class, cl_label, groups)
    pur_all = E.purity(labels, gt_class)

    m: dict = {"space": space, "k": int(k), "num_proposals": len(Z), "num_images": len(img_ids),
               "num_anchors": len(A), "clusters_matched": int((cl_label != E.NOVEL).sum()),
               "clusters_novel": int((cl_label == E.NOVEL).sum()),
               "proposals_with_gt_class": int((gt_class >= 0).sum()),
               "categories_without_anchor": no_anchor, "num_categories_without_anchor": len(no_anchor),
               "eval_categories": split, "protocol": E.protocol(gt, split)}
    if lvis_gt:   # Table 1: LVIS AP over the evaluated (novel) categories, and over every LVIS category
        m["lvis"] = E.lvis_eval(gt, dets, img_ids, subsets={split: eval_cats})
        m[split] = m["lvis"].pop(split)
    else:
        m[split] = E.coco_eval(gt, dets, eval_cats, img_ids, cfg["max_dets"])
    m["purity"] = pur
    m["purity_all_clusters"] = pur_all["purity"]
    if lvis is not None:
        ldets = [{**d, "category_id": to_lvis[d["category_id"]]} for d in dets if d["category_id"] in to_lvis]
        m["lvis"] = E.lvis_eval(lvis, ldets, img_ids)

    # purity and matched clusters at every k of the elbow grid (Table 3)
    if grid:
        rows = []
        for kk, lab in sorted(grid.items()):
            lab = np.asarray(lab, np.int64)
            Dk, ck = E.cluster_category_distance(Z, lab, kk, A, Acat, space, curv)
            clk = E.greedy_labels(Dk, ck)
            pk = E.purity(lab, gt_class, clk, groups)
            row = {"k": int(kk), "clusters_matched": int((clk != E.NOVEL).sum()),
                   **{key: v for key, v in pk.items() if key.startswith("purity")}}
            bk = random_baseline_purity(Z, A, Acat, gt_class, kk, space, curv, cfg, seed)
            if bk is not None:
                row["baseline_random_purity"] = bk
                row["purity_ratio_vs_random"] = pk["purity"] / bk if bk > 0 else None
            rows.append(row)
        m["purity_by_k"] = rows

    # random-embedding baseline on the same proposals and the same k
    base = random_baseline_purity(Z, A, Acat, gt_class, k, space, curv, cfg, seed)
    if base is not None:
        m["baseline_random"] = {"purity": base, "seeds": int(cfg["baseline_seeds"])}
        m["purity_ratio_vs_random"] = pur["purity"] / base if base > 0 else None
    return m, dets, cl_label


def random_baseline_purity(Z: np.ndarray, A: np.ndarray, Acat: np.ndarray, gt_class: np.ndarray, k: int,
                           space: str, curv: float, cfg: dict, seed: int) -> float | None:
    """Mean purity over `discovery.baseline_seeds` random embeddings with the spread of Z (and of the anchors),
    clustered and labelled exactly as the real ones; None when baseline_seeds is 0."""
    from longtail.discovery import evaluate as E
    from longtail.discovery.spaces import make_kmeans, random_like

    base = []
    for s in range(int(cfg["baseline_seeds"])):
        Zr = random_like(Z, space, seed + 1000 + s, curv)
        Ar = random_like(A, space, seed + 2000 + s, curv)
        lr = np.asarray(make_kmeans(space, k, {**cfg, "n_init": 1}, seed + s).fit(Zr).labels_, np.int64)
        Dr, cr = E.cluster_category_distance(Zr, lr, k, Ar, Acat, space, curv)
        base.append(E.purity(lr, gt_class, E.greedy_labels(Dr, cr))["purity"])
    return float(np.mean(base)) if base else None


def load_lvis(cfg: dict, img_ids: list[int]) -> tuple[dict | None, dict | None]:
    """(LVIS annotations, COCO->LVIS synsets) of ``discovery.lvis_json`` / ``lvis_synsets``; (None, None) when
    LVIS is not configured or covers none of ``img_ids`` (LVIS AP is then skipped, with a warning)."""
    from longtail.common import read_json

    if not cfg["lvis_json"]:
        return None, None
    lvis = read_json(cfg["lvis_json"], "LVIS annotation file (discovery.lvis_json)")
    synsets = read_json(cfg["lvis_synsets"], "COCO->LVIS synset map (discovery.lvis_synsets)")
    if not {im["id"] for im in lvis["images"]} & set(img_ids):
        log.warning("no evaluated image is in %s: LVIS AP skipped", cfg["lvis_json"])
        return None, synsets
    return lvis, synsets
