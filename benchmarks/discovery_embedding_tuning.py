"""Tune the embedding on the TRAIN split: train the embedding network with several settings and score the
discovery of each (elbow k, purity over matched clusters vs the random-embedding baseline, novel AP), on the
training masks themselves (their category labels are never used by the training) or, for chosen settings,
on val.

    python benchmarks/discovery_embedding_tuning.py --results /work/scratchE/results --method gt \
        --configs '{"name": "d32", "dim": 32}' '{"name": "pca_d32", "dim": 32, "head_init": "pca"}' \
        [--eval-split train|val] [--out rows.json]

Each config is a JSON object of `embedding` overrides (plus "name"; "epochs": 0 = the network as initialised,
no training); the special config '{"name": "features"}' scores the backbone's own pooled features
(L2-normalised, Euclidean k-means) of the same crops, the ceiling the embedding has to keep.

The training is the stage's own (`longtail.embedding.train.train`, `head_init`, the losses, sampling, Riemannian
Adam) on the in-RAM training set (the same steps as the streaming path, tests/test_embedding_streaming.py);
the frozen backbone's features are shared between the configs of one crop size (the network's own memo), so a
config costs its FC-layer training and the clustering. Clustering and scoring are the discovery stage's
(`choose_k`, `evaluate_clusters`: anchors from the train split, the random baseline with
`discovery.baseline_seeds` seeds) with `params.yaml`'s `discovery` section.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def load_set(results: Path, method: str, split: str, cfg: dict):
    from longtail.proposals.format import read_proposals
    from longtail.embedding.sampling import top_per_image

    index, records = read_proposals(results / "proposals" / method / split)
    images = {int(im["id"]): im for im in index["images"]}
    sel = top_per_image(records, cfg["proposals_per_image"] or None)
    return records, images, np.asarray(sel, np.int64)


def main():
    from longtail.common.params import load_params, section
    from longtail.discovery.clustering import choose_k
    from longtail.discovery.labelling import evaluate_clusters
    from longtail.embedding.crops import crops_for_records, to_input
    from longtail.embedding.embed import anchor_records, select_anchors
    from longtail.embedding.train import (InMemoryImages, build_model, embed_crops, init_head,
                                          make_training_set, train)
    from longtail.embedding.variants import variant_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="results dir with data/ and proposals/<method>/{train,val}")
    ap.add_argument("--method", default="gt")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--configs", nargs="+", required=True, help="JSON objects of embedding overrides + name")
    ap.add_argument("--eval-split", default="train", choices=["train", "val"])
    ap.add_argument("--out", default=None, help="append the rows (JSON lines) here")
    ap.add_argument("--ap-by-k", action="store_true", help="also the novel AP at every k of discovery.k_grid")
    a = ap.parse_args()

    torch.set_num_threads(1)
    params = load_params(a.params)
    seed = int(params["seed"])
    base = variant_config(section(params, "embedding"), "poincare")
    dcfg = section(params, "discovery")
    res = Path(a.results)
    gt_train = json.loads((res / "data" / "train.json").read_text())
    gt_eval = gt_train if a.eval_split == "train" else json.loads((res / "data" / "val.json").read_text())
    train_set: dict = {}
    anchor_set: dict = {}
    caches: dict = {}
    for spec in a.configs:
        over = json.loads(spec)
        name = over.pop("name")
        cfg = {**base, **over}
        S = int(cfg["crop_size"])
        t0 = time.time()
        if S not in train_set:
            recs, images, sel = load_set(res, a.method, "train", cfg)
            ts = make_training_set([recs[i] for i in sel], sel, images, cfg, source=a.method, progress=False)
            if a.eval_split == "train":
                ev = (recs, sel, ts.crops[:, 1], images)
            else:
                vrecs, vimages, vsel = load_set(res, a.method, "val", cfg)
                vc, valid = crops_for_records([vrecs[i] for i in vsel], vimages, S, kinds=("fg",), progress=False)
                vsel = vsel[valid]
                ev = (vrecs, vsel, vc[valid][:, 0], vimages)
            train_set[S] = (ts, ev)
        ts, (erecs, esel, ecrops, eimages) = train_set[S]
        akey = (S, int(cfg["anchors_per_category"]), float(cfg["anchor_min_area"]))
        if akey not in anchor_set:
            anns, _ = select_anchors(gt_train, akey[1], seed, akey[2])
            arecs = anchor_records(gt_train, anns)
            ac, _ = crops_for_records(arecs, {int(im["id"]): im for im in gt_train["images"]}, S, kinds=("fg",),
                                      progress=False)
            anchor_set[akey] = (arecs, ac[:, 0])
        arecs, acrops = anchor_set[akey]
        torch.manual_seed(seed)
        model = build_model(cfg)
        model._feature_cache = caches.setdefault((str(cfg["backbone"]), S), {})
        info: dict = {}
        if name == "features":
            def embed(c):
                with torch.no_grad():
                    f = torch.cat([model.features(to_input(c[s:s + 256])) for s in range(0, len(c), 256)])
                return torch.nn.functional.normalize(f.double(), dim=-1).numpy()
            Z, A, space, curv = embed(ecrops), embed(acrops), "euclidean", 0.0
        else:
            if int(cfg["epochs"]) == 0:
                info = init_head(model, InMemoryImages(ts), cfg, seed)
            else:
                info = train(model, ts, cfg, seed=seed, progress=False)
            Z = embed_crops(model, ecrops, progress=False).astype(np.float64)
            A = embed_crops(model, acrops, progress=False).astype(np.float64)
            space, curv = model.space.name, model.space.curvature
        t_train = time.time() - t0
        emb = {"proposal_embeddings": Z, "proposal_ids": esel, "anchor_embeddings": A,
               "anchor_category_ids": np.asarray([r["category_id"] for r in arecs], np.int64),
               "space": space, "curvature": curv}
        k, elbow, km = choose_k(Z, space, curv, dcfg, seed)
        img_ids = sorted({int(erecs[i]["image_id"]) for i in esel})
        m, _, _ = evaluate_clusters(emb, np.asarray(km.labels_, np.int64), k, erecs, gt_eval, dcfg, img_ids, seed,
                                    grid=elbow["labels"])
        by_k = {r["k"]: r for r in m["purity_by_k"]}
        ap_by_k = {}
        if a.ap_by_k:   # the same clusterings of the elbow grid, labelled and scored (no random baseline)
            for kk, lab in elbow["labels"].items():
                mk, _, _ = evaluate_clusters(emb, np.asarray(lab, np.int64), kk, erecs, gt_eval,
                                             {**dcfg, "baseline_seeds": 0}, img_ids, seed)
                ap_by_k[kk] = round(mk["novel"]["AP"], 4)
        row = {"name": name, "split": a.eval_split, "overrides": over, "k": k, "purity": m["purity"]["purity"],
               "random": m["baseline_random"]["purity"], "ratio": m["purity_ratio_vs_random"],
               "novel_AP": m["novel"]["AP"], "novel_AP50": m["novel"]["AP50"],
               "ratio_by_k": {kk: round(r["purity_ratio_vs_random"], 3) for kk, r in by_k.items()},
               **({"novel_AP_by_k": ap_by_k} if ap_by_k else {}),
               "norm_median": float(np.median(np.linalg.norm(Z, axis=1))),
               "seconds_train": round(t_train, 1), "seconds_total": round(time.time() - t0, 1),
               **{k2: v for k2, v in info.items() if k2.startswith(("last_epoch_loss_total", "head_init"))}}
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
