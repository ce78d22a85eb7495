"""``longtail cluster`` (hyperbolic k-means + elbow) and ``longtail evaluate`` (labelling, AP, purity)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.cli import add_params_args
from longtail.common import LongtailError, atomic_path, read_json, write_json
from longtail.common.params import load_params, section
from longtail.common.tracking import stage_run

log = logging.getLogger(__name__)

EMB_KEYS = ["proposal_embeddings", "proposal_ids", "proposal_scores", "anchor_embeddings",
            "anchor_category_ids", "space", "curvature"]


def register(sub):
    p = sub.add_parser("cluster", help="hyperbolic k-means on the proposal embeddings, k by the elbow method "
                                       "(Weng et al. 3.3, 4.3)")
    add_params_args(p)
    p.add_argument("--embeddings", required=True, help="embeddings.npz of `longtail embed`")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=run_cluster)

    p = sub.add_parser("evaluate", help="label clusters with GT anchors; novel-category mAP, LVIS AP, purity "
                                        "(Weng et al. 3.3, Tables 1 and 3)")
    add_params_args(p)
    p.add_argument("--embeddings", required=True, help="embeddings.npz of `longtail embed`")
    p.add_argument("--clusters", required=True, help="clusters.npz of `longtail cluster`")
    p.add_argument("--proposals", required=True, help="proposal set the embeddings index (proposals.json dir)")
    p.add_argument("--gt", required=True, help="COCO ground truth with base/novel split (results/data/val.json)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=run_evaluate)


def load_embeddings(path: str | Path) -> dict:
    from longtail.discovery.spaces import check_embeddings, check_space

    path = Path(path)
    if not path.exists():
        raise LongtailError(f"embeddings not found: {path}; run `longtail embed` first")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in EMB_KEYS if k not in f.files]
            if missing:
                raise LongtailError(f"{path}: missing keys {missing}; re-run `longtail embed` (see "
                                    f"docs/stage-contract.md, Embeddings)")
            d = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise LongtailError(f"{path}: not a readable .npz ({e}); delete it and re-run `longtail embed`") from e
    d["space"] = check_space(str(d["space"]))
    d["curvature"] = float(d["curvature"])
    Z = d["proposal_embeddings"]
    if len(d["proposal_ids"]) != len(Z):
        raise LongtailError(f"{path}: proposal_ids ({len(d['proposal_ids'])}) and proposal_embeddings "
                            f"({len(Z)}) differ in length")
    check_embeddings(Z, d["space"], d["curvature"], f"{path}:proposal_embeddings")
    if len(d["anchor_embeddings"]):
        check_embeddings(d["anchor_embeddings"], d["space"], d["curvature"], f"{path}:anchor_embeddings")
    return d


def choose_k(Z: np.ndarray, space: str, curvature: float, cfg: dict, seed: int) -> tuple[int, dict, object]:
    """k fixed (discovery.k = int) or by the elbow over discovery.k_grid; returns (k, elbow dict, model)."""
    from longtail.discovery.elbow import elbow_curve
    from longtail.discovery.spaces import make_kmeans, total_var

    models: dict[int, object] = {}
    k_cfg = cfg["k"]
    if k_cfg != "elbow" and int(k_cfg) > len(Z):
        raise LongtailError(f"discovery.k = {k_cfg} is larger than the number of proposals ({len(Z)}); "
                            f"lower it or use k: elbow")
    grid = sorted(k for k in cfg["k_grid"] if k <= len(Z))
    if len(grid) < len(cfg["k_grid"]):
        log.warning("discovery.k_grid: dropped k > %d (number of points) from the elbow curve", len(Z))
    if len(grid) < 3:
        raise LongtailError(f"discovery.k_grid: fewer than 3 values of k are <= the number of proposals "
                            f"({len(Z)}); lower the grid")
    bar = tqdm(total=len(grid), desc="elbow", unit="k", leave=False)

    def fit(k):
        m = make_kmeans(space, k, cfg, seed).fit(Z)
        models[k] = m
        bar.update(1)
        return m.inertia_

    elbow = elbow_curve(Z, grid, fit, total_var(Z, space, curvature))
    bar.close()
    k = elbow["k_star"] if k_cfg == "elbow" else int(k_cfg)
    model = models.get(k) or make_kmeans(space, k, cfg, seed).fit(Z)
    elbow["labels"] = {kk: np.asarray(models[kk].labels_, np.int32) for kk in elbow["k"]}
    return k, elbow, model


def run_cluster(args):
    params = load_params(args.params, args.overrides)
    cfg = section(params, "discovery")
    out = Path(args.out_dir)
    emb = load_embeddings(args.embeddings)
    Z, space, curv = emb["proposal_embeddings"].astype(np.float64), emb["space"], emb["curvature"]
    with stage_run("cluster", params=cfg, all_params=params, tags={"embeddings": args.embeddings}) as run:
        k, elbow, model = choose_k(Z, space, curv, cfg, params["seed"])
        for kk, w, ev in zip(elbow["k"], elbow["inertia"], elbow["explained_variation"]):
            run.log_metrics({"elbow_inertia": w, "elbow_explained_variation": ev}, step=kk)
        labels = np.asarray(model.labels_, np.int64)
        grid_labels = elbow.pop("labels")
        with atomic_path(out / "clusters.npz") as tmp:
            # grid_k / grid_labels: the clustering at every k of the elbow grid (purity vs k, Table 3)
            np.savez_compressed(tmp, labels=labels, centers=np.asarray(model.cluster_centers_, np.float64),
                                proposal_ids=emb["proposal_ids"], k=k, space=space, curvature=curv,
                                inertia=float(model.inertia_), grid_k=np.asarray(elbow["k"], np.int64),
                                grid_labels=np.stack([grid_labels[kk] for kk in elbow["k"]]))
        # "curve" first: the records `dvc plots` reads (x = k, y = explained_variation)
        curve = [{"k": int(kk), "inertia": float(w), "explained_variation": float(ev)}
                 for kk, w, ev in zip(elbow["k"], elbow["inertia"], elbow["explained_variation"])]
        write_json(out / "elbow.json", {"curve": curve, **elbow, "k_chosen": k, "space": space})
        sizes = np.bincount(labels, minlength=k)
        metrics = {"k": k, "k_elbow": elbow["k_star"], "num_points": len(Z), "inertia": float(model.inertia_),
                   "n_iter": int(model.n_iter_), "explained_variation": 1 - float(model.inertia_) /
                   elbow["total_variation"], "empty_clusters": int((sizes == 0).sum()),
                   "max_cluster_size": int(sizes.max())}
        run.write_metrics(out / "cluster_metrics.json", metrics)
        run.log_artifact(out / "elbow.json")
    log.info("cluster: k=%d (elbow k*=%d) over %d proposals -> %s", k, elbow["k_star"], len(Z), out)


def _category_groups(gt: dict, lvis: dict | None, to_lvis: dict[int, int]) -> dict[int, str]:
    """Category id -> group: LVIS frequency (r/c/f) when LVIS is configured, else the base/novel split."""
    if lvis is not None:
        freq = {c["id"]: c["frequency"] for c in lvis["categories"]}
        return {cid: freq[lid] for cid, lid in to_lvis.items() if lid in freq}
    return {c["id"]: c.get("split", "all") for c in gt["categories"]}


def evaluate_clusters(emb: dict, labels: np.ndarray, k: int, records: list[dict], gt: dict, cfg: dict,
                      img_ids: list[int], seed: int, lvis: dict | None = None, synsets: dict | None = None,
                      grid: dict[int, np.ndarray] | None = None) -> tuple[dict, list[dict], np.ndarray]:
    """All numbers of `longtail evaluate` for one clustering; returns (metrics, detections, cluster labels)."""
    from longtail.discovery import evaluate as E

    Z, space, curv = emb["proposal_embeddings"].astype(np.float64), emb["space"], emb["curvature"]
    pids = np.asarray(emb["proposal_ids"], np.int64)
    if pids.min() < 0 or pids.max() >= len(records):
        raise LongtailError(f"embeddings index proposals up to {int(pids.max())} but the proposal set has "
                            f"{len(records)}; embeddings and --proposals do not belong together")
    A, Acat = emb["anchor_embeddings"].astype(np.float64), np.asarray(emb["anchor_category_ids"], np.int64)
    gt_cats = {c["id"]: c for c in gt["categories"]}
    if len(A) == 0:
        raise LongtailError("embeddings have no anchors (anchor_embeddings is empty): clusters cannot be "
                            "labelled; re-run `longtail embed` with GT anchors")
    unknown = sorted(set(Acat.tolist()) - set(gt_cats))
    if unknown:
        raise LongtailError(f"anchor_category_ids {unknown[:10]} are not categories of the ground truth JSON")
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
    groups = _category_groups(gt, lvis, to_lvis)
    pur = E.purity(labels, gt_class, cl_label, groups)
    pur_all = E.purity(labels, gt_class)

    m: dict = {"space": space, "k": int(k), "num_proposals": len(Z), "num_images": len(img_ids),
               "num_anchors": len(A), "clusters_matched": int((cl_label != E.NOVEL).sum()),
               "clusters_novel": int((cl_label == E.NOVEL).sum()),
               "proposals_with_gt_class": int((gt_class >= 0).sum()),
               "categories_without_anchor": no_anchor, "num_categories_without_anchor": len(no_anchor),
               "eval_categories": split}
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


def run_evaluate(args):
    from longtail.proposals.format import read_proposals

    params = load_params(args.params, args.overrides)
    cfg = section(params, "discovery")
    out = Path(args.out_dir)
    emb = load_embeddings(args.embeddings)
    cpath = Path(args.clusters)
    if not cpath.exists():
        raise LongtailError(f"clusters not found: {cpath}; run `longtail cluster` first")
    with np.load(cpath, allow_pickle=False) as f:
        labels, k = f["labels"].astype(np.int64), int(f["k"])
        grid = ({int(kk): f["grid_labels"][i] for i, kk in enumerate(f["grid_k"])} if "grid_k" in f.files
                else None)
        if not np.array_equal(f["proposal_ids"], emb["proposal_ids"]):
            raise LongtailError(f"{cpath} was made from other embeddings than {args.embeddings}; re-run "
                                f"`longtail cluster`")
    index, records = read_proposals(args.proposals)
    gt = read_json(args.gt, "ground truth")
    img_ids = [im["id"] for im in index["images"]]
    no_props = [im["id"] for im in index["images"] if im.get("num_proposals", 1) == 0]
    lvis = synsets = None
    if cfg.get("lvis_json"):
        lvis = read_json(cfg["lvis_json"], "LVIS annotation file (discovery.lvis_json)")
        synsets = read_json(cfg["lvis_synsets"], "COCO->LVIS synset map (discovery.lvis_synsets)")
        if not {im["id"] for im in lvis["images"]} & set(img_ids):
            log.warning("no evaluated image is in %s: LVIS AP skipped", cfg["lvis_json"])
            lvis = None
    with stage_run("evaluate", params=cfg, all_params=params, tags={"embeddings": args.embeddings}) as run:
        m, dets, cl_label = evaluate_clusters(emb, labels, k, records, gt, cfg, img_ids, params["seed"],
                                              lvis, synsets, grid)
        for row in m.get("purity_by_k", []):
            run.log_metrics({kk: v for kk, v in row.items() if kk != "k"}, step=row["k"])
        # images without proposals still count: their GT instances are misses (documented)
        m["images_without_proposals"] = len(no_props)
        write_json(out / "detections.json", dets, indent=None)
        write_json(out / "cluster_labels.json", {"k": k, "labels": cl_label.tolist(),
                                                 "categories": {c["id"]: c["name"] for c in gt["categories"]}})
        run.write_metrics(out / "metrics.json", m)
        run.log_artifact(out / "cluster_labels.json")
    log.info("evaluate: %s AP=%s purity=%.3f (random %.3f) -> %s", cfg["eval_categories"],
             m[cfg["eval_categories"]]["AP"], m["purity"]["purity"],
             m.get("baseline_random", {}).get("purity", float("nan")), out)
