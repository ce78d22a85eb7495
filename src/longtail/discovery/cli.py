"""``longtail cluster`` (hyperbolic k-means + elbow) and ``longtail evaluate`` (labelling, AP, purity).

The verbs parse, call :mod:`longtail.discovery.clustering` / :mod:`longtail.discovery.labelling` and write; the
worked example of docs/stage-contract.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from longtail.cli import add_params_args
from longtail.common import atomic_path, read_json, write_json
from longtail.common.verb import stage_verb

log = logging.getLogger(__name__)


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
    p.add_argument("--proposals", required=True, help="proposal set the embeddings index (its folder or index.json)")
    p.add_argument("--gt", required=True, help="ground truth with base/novel split (results/data/val.json): COCO "
                   "(pycocotools AP) or, in the LVIS label space of `prepare`, LVIS (LVIS API AP incl. APr/c/f)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=run_evaluate)


@stage_verb("cluster", "discovery", tags=lambda args, cfg: {"embeddings": args.embeddings})
def run_cluster(args, params, cfg, run):
    from longtail.common.runtime import select_device
    from longtail.discovery.clustering import choose_k
    from longtail.discovery.embeddings import load_embeddings

    out = Path(args.out_dir)
    emb = load_embeddings(args.embeddings)
    Z, space, curv = emb.pop("proposal_embeddings").astype(np.float64), emb["space"], emb["curvature"]
    for key in ("proposal_scores", "proposal_image_ids"):   # not needed here: O(N) bytes less
        emb.pop(key, None)
    kcfg = {**cfg, "device": str(select_device(cfg["device"], "cluster"))}
    k, elbow, model = choose_k(Z, space, curv, kcfg, params["seed"])
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


@stage_verb("evaluate", "discovery", tags=lambda args, cfg: {"embeddings": args.embeddings})
def run_evaluate(args, params, cfg, run):
    from longtail.common.runtime import select_device
    from longtail.discovery.clustering import load_clusters
    from longtail.discovery.embeddings import load_embeddings
    from longtail.discovery.labelling import evaluate_clusters, load_lvis, read_gt
    from longtail.proposals.format import read_index

    out = Path(args.out_dir)
    emb = load_embeddings(args.embeddings)
    labels, k, grid = load_clusters(args.clusters, emb, args.embeddings)
    index = read_index(args.proposals)
    gt = read_gt(args.gt, "ground truth")        # annotations packed: parsed per chunk of images
    img_ids = [im["id"] for im in index["images"]]
    no_props = [im["id"] for im in index["images"] if im.get("num_proposals", 1) == 0]
    lvis, synsets = load_lvis(cfg, img_ids)
    kcfg = {**cfg, "device": str(select_device(cfg["device"], "evaluate"))}
    # proposals read per chunk of images; detections.json written chunk by chunk (bounded memory, issue 15)
    m, _, cl_label = evaluate_clusters(emb, labels, k, args.proposals, gt, kcfg, img_ids, params["seed"],
                                       lvis, synsets, grid, sources={"embeddings": args.embeddings,
                                                                    "proposals": args.proposals, "gt": args.gt},
                                       detections_out=out / "detections.json", index=index)
    for row in m.get("purity_by_k", []):
        run.log_metrics({kk: v for kk, v in row.items() if kk != "k"}, step=row["k"])
    # images without proposals still count: their GT instances are misses (documented)
    m["images_without_proposals"] = len(no_props)
    write_json(out / "cluster_labels.json", {"k": k, "labels": cl_label.tolist(),
                                             "categories": {c["id"]: c["name"] for c in gt["categories"]}})
    run.write_metrics(out / "metrics.json", m)
    run.log_artifact(out / "cluster_labels.json")
    log.info("evaluate: %s AP=%s purity=%.3f (random %.3f) -> %s", cfg["eval_categories"],
             m[cfg["eval_categories"]]["AP"], m["purity"]["purity"],
             m.get("baseline_random", {}).get("purity", float("nan")), out)
