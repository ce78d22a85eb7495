"""How much category signal is there to find on the sample? Purity of k-means clusters of the val GT masks
under several annotation-free features, beside the random baselines (issue #7's "2x random" target).

    python benchmarks/discovery_purity_ceiling.py                       # random, hand-crafted, HED VGG16 rows
    python benchmarks/discovery_purity_ceiling.py --embeddings results/embedding/gt/poincare/embeddings.npz

Rows: random cluster labels; the pipeline's random-embedding baseline (`spaces.random_like`); hand-crafted
mask features (log area, aspect ratio, 8x8 mask shape, mean colour); mask-pooled activations of HED's VGG16
trunk (conv3/4/5, the only pretrained network available offline: ImageNet VGG16 fine-tuned on BSDS edges);
optionally `longtail embed` outputs of the `gt` proposal set (each record names its `gt_ann_id`). Purity over
all clusters (`purity_all_clusters` of `longtail evaluate`); k-means (HyperbolicKMeans for Poincaré embeddings) in
Euclidean space on L2-normalised (HED) or standardised (hand-crafted) features, mean of `--seeds` runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.cluster import KMeans
from tqdm import tqdm

from longtail.common.masks import decode_mask, to_rle
from longtail.common.params import load_params, section
from longtail.discovery.evaluate import purity
from longtail.discovery.spaces import make_kmeans, random_like
from longtail.proposals.format import read_proposals


def features(gt: dict, short_side: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(annotation ids, category ids, {name: (N, D) features}) of every val GT mask."""
    from longtail.hierarchy.hed import load_hed, preprocess

    torch.set_num_threads(max(1, torch.get_num_threads()))
    hed = load_hed()
    images = {im["id"]: im for im in gt["images"]}
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    ids, cats, feats = [], [], {"hand-crafted": [], "HED conv3": [], "HED conv4": [], "HED conv5": []}
    for iid, anns in tqdm(sorted(by_image.items()), desc="features", unit="img"):
        im = images[iid]
        h, w = im["height"], im["width"]
        rgb = Image.open(im["file_name"]).convert("RGB")
        arr = np.asarray(rgb)
        s = short_side / min(h, w)
        x = preprocess(np.asarray(rgb.resize((round(w * s), round(h * s)), Image.BILINEAR)))[None]
        maps = {}
        with torch.no_grad():
            for k, convs in enumerate(hed.blocks):
                if k > 0:
                    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                for conv in convs:
                    x = F.relu(conv(x))
                if k >= 2:
                    maps[f"HED conv{k + 1}"] = x[0]
        for a in anns:
            m = decode_mask(to_rle(a["segmentation"], h, w, source=f"annotation {a['id']}"))
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            shape = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((8, 8), Image.BILINEAR),
                               np.float32).ravel() / 255
            feats["hand-crafted"].append(np.r_[np.log(m.sum()), np.log(crop.shape[1] / crop.shape[0]), shape,
                                               arr[m].mean(0) / 255])
            mt = torch.from_numpy(m.astype(np.float32))[None, None]
            for name, fm in maps.items():
                mm = F.interpolate(mt, size=fm.shape[-2:], mode="area")[0, 0]
                mm = mm if mm.sum() > 1e-6 else torch.ones_like(mm)
                feats[name].append(((fm * mm).sum((1, 2)) / mm.sum()).numpy())
            ids.append(a["id"])
            cats.append(a["category_id"])
    return np.asarray(ids), np.asarray(cats), {k: np.asarray(v, np.float64) for k, v in feats.items()}


def kmeans_purity(X: np.ndarray, y: np.ndarray, k: int, seeds: int) -> float:
    return float(np.mean([purity(KMeans(k, n_init=1, random_state=s).fit_predict(X), y)["purity"]
                          for s in range(seeds)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", default="results/data/val.json")
    ap.add_argument("--ks", type=int, nargs="+", default=[24, 96])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=320, help="HED input short side (px)")
    ap.add_argument("--embeddings", nargs="*", default=[], help="embeddings.npz of `longtail embed` on --proposals")
    ap.add_argument("--proposals", default="results/proposals/gt/val", help="the gt proposal set embedded")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = ap.parse_args()

    gt = json.loads(Path(a.gt).read_text())
    ids, y, feats = features(gt, a.short_side)
    rows = []

    def row(name, fn):
        vals = {k: fn(k) for k in a.ks}
        rows.append({"features": name, **{f"k={k}": v for k, v in vals.items()}})

    n = len(y)
    row("random cluster labels", lambda k: float(np.mean(
        [purity(np.random.default_rng(s).integers(0, k, n), y)["purity"] for s in range(a.seeds)])))
    for name, X in feats.items():
        Xn = (X - X.mean(0)) / (X.std(0) + 1e-8) if name == "hand-crafted" else \
            X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-8)
        row(name, lambda k, Xn=Xn: kmeans_purity(Xn, y, k, a.seeds))
    cat_of = dict(zip(ids.tolist(), y.tolist()))
    records = read_proposals(a.proposals)[1] if a.embeddings else []
    disc = section(load_params(), "discovery")   # k-means settings of the pipeline (one run per seed)
    for path in a.embeddings:
        with np.load(path, allow_pickle=True) as z:
            Z = z["proposal_embeddings"].astype(np.float64)
            pids = np.asarray(z["proposal_ids"], np.int64)
            space, curv = str(z["space"]), float(z["curvature"])
        yz = np.asarray([cat_of.get(records[i].get("gt_ann_id"), -1) for i in pids])
        for label, emb in ((f"{path} ({space})", Z), (f"random-embedding baseline of {Path(path).parent.name}",
                                                      random_like(Z, space, 1000, curv))):
            row(label, lambda k, emb=emb: float(np.mean(
                [purity(np.asarray(make_kmeans(space, k, {**disc, "n_init": 1}, s).fit(emb).labels_), yz)["purity"]
                 for s in range(a.seeds)])))

    print(f"{n} val GT masks, {len(set(y.tolist()))} categories, largest class share "
          f"{np.bincount(y).max() / n:.3f}\n")
    print("| features | " + " | ".join(f"purity k={k}" for k in a.ks) + " |")
    print("|---|" + "---|" * len(a.ks))
    for r in rows:
        print(f"| {r['features']} | " + " | ".join(f"{r[f'k={k}']:.3f}" for k in a.ks) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
