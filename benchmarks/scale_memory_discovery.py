"""Peak memory of `longtail cluster` at 1x, 10x and 100x points (issue 15), next to benchmarks/scale_memory.py.

`cluster` needs no proposal set, only an embeddings file: synthetic Poincaré-ball embeddings (``--base`` points
at 1x, float32 as `longtail embed` writes them, planted around ``--centres`` centres in the tangent space at 0)
are clustered by the real verb in its own process; its peak RSS is that child's ``ru_maxrss``
(:func:`scale_memory.peak_rss`). k-means holds the points (N x dim float64), their labels at every k of the
elbow grid, k-means++'s hyperboloid points and distances, and row chunks of everything else
(``kmeans.CHUNK_ROWS``, ``discovery.max_chunk_mb``): the report gives the bytes per point above the 1x run.

    nice -n 10 .venv/bin/python benchmarks/scale_memory_discovery.py --scales 1 10 100 --base 10000
    nice -n 10 .venv/bin/python benchmarks/scale_memory_discovery.py --evaluate --scales 1 10 100 --centres 16

``--evaluate``: `longtail evaluate` on a replicated val proposal set (benchmarks/scale_memory.py's writer) with
its replicated ground truth, synthetic embeddings and cluster labels (one planted centre per point). `evaluate`
reads the set `discovery.eval_chunk_images` images at a time (``--chunk`` sets it; default: params.yaml's);
the report gives the bytes per proposal above the 1x run (the O(N) arrays, the per-image COCO results, the
ground truth's text).

``--evaluate --lvis``: the same with the paper's Table 1 protocol (`discovery.lvis_json`: APr/APc/APf through
``LvisChunks``) on the LVIS v0.5 sample (data/lvis/lvis_val_100.json, 100 val images, 1230 categories) replicated
``scale`` times (200x = 20,000 images, LVIS v1 val's count): the proposal set is built over the LVIS images from
their width / height and GT polygons only (no pixels), the LVIS file replicated with the same image ids is
`discovery.lvis_json`, and `--gt` (the COCO side `evaluate` also needs: base / novel split, purity) is the LVIS
annotations of categories with a COCO synset in COCO's categories (:func:`lvis_as_coco`), replicated alike.

    nice -n 19 .venv/bin/python benchmarks/scale_memory_discovery.py --evaluate --lvis --scales 1 10 100 200 \
        --per-image 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_memory import REPO, longtail, peak_rss, synthetic_set  # noqa: E402


def synthetic_embeddings(path: Path, n: int, dim: int, centres: int, seed: int = 0) -> None:
    import geoopt
    import torch

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    ball = geoopt.PoincareBall()
    mu = rng.normal(scale=1.0, size=(centres, dim))
    z = np.empty((n, dim), np.float32)
    for s in range(0, n, 200_000):                     # in chunks: the generator itself stays small
        m = min(n - s, 200_000)
        v = mu[rng.integers(centres, size=m)] + rng.normal(scale=0.15, size=(m, dim))
        z[s:s + m] = ball.projx(ball.expmap0(torch.as_tensor(v))).numpy()
    a = ball.projx(ball.expmap0(torch.as_tensor(mu))).numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, proposal_embeddings=z, proposal_ids=np.arange(n), proposal_image_ids=np.arange(n) // 50,
             proposal_scores=np.ones(n, np.float32), anchor_embeddings=a, anchor_category_ids=np.arange(centres),
             anchor_ann_ids=np.arange(centres), space="poincare", curvature=1.0)


# --- evaluate: a replicated proposal set + its replicated ground truth -------------------------------------

def replicated_gt(prepared: Path, split: str, scale: int, out: Path) -> Path:
    """The split's ground truth x ``scale`` with the image ids of :func:`scale_memory.synthetic_set` (id +
    k x offset) and new annotation ids: every synthetic image has its GT."""
    if out.exists():
        return out
    coco = json.loads((prepared / f"{split}.json").read_text())
    offset = 10 ** (len(str(max(im["id"] for im in coco["images"]))) + 1)
    a_off = 10 ** (len(str(max(a["id"] for a in coco["annotations"]))) + 1)
    images = [{**im, "id": im["id"] + k * offset} for k in range(scale) for im in coco["images"]]
    anns = [{**a, "id": a["id"] + k * a_off, "image_id": a["image_id"] + k * offset}
            for k in range(scale) for a in coco["annotations"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**coco, "images": images, "annotations": anns}))
    return out


def lvis_as_coco(prepared: Path, lvis_json: Path, synsets: Path, out: Path) -> Path:
    """COCO ground truth of the LVIS file's images, as ``out/val.json``: its annotations of the LVIS categories
    that have a COCO synset (``longtail.data.lvis.coco_to_lvis``), in the prepared val's categories (base / novel
    split); the other annotations dropped."""
    from longtail.data.lvis import coco_to_lvis

    if (out / "val.json").exists():
        return out
    coco, lvis = (json.loads(Path(f).read_text()) for f in (prepared / "val.json", lvis_json))
    to_coco = {lid: cid for cid, lid in
               coco_to_lvis(coco["categories"], lvis["categories"], json.loads(synsets.read_text())).items()}
    anns = [{**a, "category_id": to_coco[a["category_id"]], "iscrowd": 0} for a in lvis["annotations"]
            if a["category_id"] in to_coco]
    images = [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in lvis["images"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "val.json").write_text(json.dumps({"info": {"description": f"{lvis_json} in COCO categories"},
                                              "images": images, "annotations": anns,
                                              "categories": coco["categories"]}))
    return out


def set_embeddings(index: dict, emb: Path, clusters: Path, dim: int, centres: int, categories: list[int],
                   seed: int = 0) -> int:
    """embeddings.npz of every record of a proposal set (planted around ``centres`` centres, as
    :func:`synthetic_embeddings`) and a clusters.npz labelling each point with its centre (k = centres): the
    inputs `longtail evaluate` reads, without running embed / cluster at 100x."""
    import geoopt
    import torch

    counts = np.asarray([im["num_proposals"] for im in index["images"]], np.int64)
    image_ids = np.repeat(np.asarray([im["id"] for im in index["images"]], np.int64), counts)
    n = len(image_ids)
    if emb.exists() and clusters.exists():
        return n
    rng = np.random.default_rng(seed)
    ball = geoopt.PoincareBall()
    mu = rng.normal(scale=1.0, size=(centres, dim))
    lab = rng.integers(centres, size=n)
    v = mu[lab] + rng.normal(scale=0.15, size=(n, dim))
    z = ball.projx(ball.expmap0(torch.as_tensor(v))).numpy().astype(np.float32)
    a = ball.projx(ball.expmap0(torch.as_tensor(mu))).numpy().astype(np.float32)
    emb.parent.mkdir(parents=True, exist_ok=True)
    np.savez(emb, proposal_embeddings=z, proposal_ids=np.arange(n), proposal_image_ids=image_ids,
             proposal_scores=np.ones(n, np.float32), anchor_embeddings=a,
             anchor_category_ids=np.asarray(categories[:centres], np.int64), anchor_ann_ids=np.arange(centres),
             space="poincare", curvature=1.0)
    np.savez(clusters, labels=lab, k=centres, proposal_ids=np.arange(n))
    return n


def evaluate_rows(args) -> list[dict]:
    import os
    import subprocess

    prepared = args.out / "prepared"
    if not (prepared / "val.json").exists():
        subprocess.run(longtail("prepare", "--out-dir", str(prepared)), check=True, cwd=REPO,
                       env={**os.environ, "LONGTAIL_MLFLOW": "0"}, capture_output=True)
    lvis_json = REPO / "data" / "lvis" / "lvis_val_100.json"
    if args.lvis:   # the set's images: the LVIS sample's (with their COCO side), else the prepared val split's
        images, tag, n_lvis = (lvis_json.parent, lvis_json.stem), "lvis_", len(json.loads(lvis_json.read_text())[
            "annotations"])
        coco_side = lvis_as_coco(prepared, lvis_json, lvis_json.parent / "coco_to_synset.json", args.out / "lvis_coco")
    else:
        images, coco_side, tag = (prepared, "val"), prepared, ""
    rows = []
    for scale in args.scales:
        t = time.time()
        index = synthetic_set(*images, scale, args.per_image, proposals := args.out / f"{tag}set_{scale}x")
        gt = replicated_gt(coco_side, "val", scale, args.out / f"{tag}gt_{scale}x.json")
        emb, cl = args.out / f"{tag}eval_emb_{scale}x.npz", args.out / f"{tag}eval_clusters_{scale}x.npz"
        cats = sorted(c["id"] for c in json.loads((prepared / "val.json").read_text())["categories"])
        n = set_embeddings(index, emb, cl, args.dim, args.centres, cats)
        lvis = ["--set", f"discovery.lvis_json={replicated_gt(*images, scale, args.out / f'lvis_{scale}x.json')}"
                ] if args.lvis else []
        print(f"# evaluate {scale}x: {len(index['images'])} images, {n} proposals (inputs in "
              f"{time.time() - t:.0f} s)", flush=True)
        out = args.out / f"{tag}evaluate_{scale}x"
        rss, secs, _ = peak_rss(longtail(
            "evaluate", "--embeddings", str(emb), "--clusters", str(cl), "--proposals", str(proposals),
            "--gt", str(gt), "--out-dir", str(out), "--set", "discovery.n_init=1",
            "--set", f"discovery.max_iter={args.max_iter}", "--set", f"discovery.baseline_seeds={args.baseline_seeds}",
            "--set", "discovery.device=cpu", *lvis, *(["--set", f"discovery.eval_chunk_images={args.chunk}"]
                                                      if args.chunk else [])))
        row = {"stage": "evaluate", "scale": scale, "images": len(index["images"]), "proposals": n,
               "k": args.centres, "peak_rss_mb": round(rss), "seconds": round(secs, 1)}
        if args.lvis:
            m = json.loads((out / "metrics.json").read_text())["lvis"]
            row.update(stage="evaluate (LVIS)", lvis_annotations=scale * n_lvis,
                       **{f"lvis_{k}": m[k] for k in ("AP", "APr", "APc", "APf", "images")})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--base", type=int, default=10_000, help="points at 1x (100x = 1M with the default)")
    ap.add_argument("--dim", type=int, default=2, help="embedding.dim (paper: 2)")
    ap.add_argument("--centres", type=int, default=16)
    ap.add_argument("--k-grid", default="[4,8,16]")
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/scale_memory_discovery"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--evaluate", action="store_true",
                    help="`longtail evaluate` instead of cluster: replicated val proposal set (--per-image "
                         "records an image; 100x x 177 images x 57 = 1.0M) + its replicated ground truth, "
                         "synthetic embeddings and cluster labels")
    ap.add_argument("--per-image", type=int, default=57)
    ap.add_argument("--lvis", action="store_true",
                    help="with --evaluate: on the LVIS sample's images replicated, with discovery.lvis_json "
                         "(APr/APc/APf; 200x = 20,000 images = LVIS v1 val)")
    ap.add_argument("--baseline-seeds", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=None, help="discovery.eval_chunk_images (default: params.yaml's)")
    args = ap.parse_args()
    if args.evaluate:
        rows = evaluate_rows(args)
        for r in rows:
            r["vs_1x"] = round(r["peak_rss_mb"] / rows[0]["peak_rss_mb"], 2)
            if r["proposals"] > rows[0]["proposals"]:
                r["bytes_per_proposal_above_1x"] = round((r["peak_rss_mb"] - rows[0]["peak_rss_mb"]) * 2 ** 20
                                                         / (r["proposals"] - rows[0]["proposals"]))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows, indent=1))
        return 0
    rows = []
    for scale in args.scales:
        n = args.base * scale
        emb = args.out / f"emb_{scale}x.npz"
        t = time.time()
        synthetic_embeddings(emb, n, args.dim, args.centres)
        print(f"# {scale}x: {n} points (built in {time.time() - t:.0f} s)", flush=True)
        rss, secs, _ = peak_rss(longtail(
            "cluster", "--embeddings", str(emb), "--out-dir", str(args.out / f"cluster_{scale}x"),
            "--set", f"discovery.k_grid={args.k_grid}", "--set", "discovery.k=elbow", "--set", "discovery.n_init=1",
            "--set", f"discovery.max_iter={args.max_iter}"))
        m = json.loads((args.out / f"cluster_{scale}x" / "cluster_metrics.json").read_text())
        row = {"stage": "cluster", "scale": scale, "points": n, "dim": args.dim, "k_grid": args.k_grid,
               "k": m["k"], "peak_rss_mb": round(rss), "seconds": round(secs, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print("\n| stage | scale | points | peak RSS (MB) | seconds | bytes/point above 1x |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        per = ((r["peak_rss_mb"] - base["peak_rss_mb"]) * 2 ** 20 / (r["points"] - base["points"])
               if r["points"] > base["points"] else float("nan"))
        print(f"| {r['stage']} | {r['scale']}x | {r['points']} | {r['peak_rss_mb']} | {r['seconds']} | {per:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
