"""``longtail edges | ucm | bsds | train-pixel-embedding`` (Zhang & Maire 2020; HED; OWT-UCM; BSDS500 bench)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from longtail.cli import add_params_args
from longtail.common import LongtailError, atomic_path, write_json
from longtail.common.params import params_hash
from longtail.common.runtime import select_device, set_threads
from longtail.common.shards import parse_shard, select_shard, shard_name
from longtail.hierarchy import shards as hshards
from longtail.common.verb import stage_verb

log = logging.getLogger(__name__)
SHARD_HELP = ("i/N (or i-of-N, 1-based): only shard i of N of the images sorted by key (every N-th from the "
              "(i-1)-th), written to --out-dir/shards/i-of-N/ (resumable; a finished shard is not recomputed); then "
              "`longtail gather-hierarchy` (index.json + the stage's metrics)")


def register(sub) -> None:
    p = sub.add_parser("edges", help="HED edge maps (+ orientation, NMS-thinned edges) of an image set")
    add_params_args(p)
    p.add_argument("--source", required=True, help="COCO JSON (file_name relative to the repo root) or image folder")
    p.add_argument("--out-dir", required=True, help="one <image>.npz per image + index.json")
    p.add_argument("--metrics", default=None, help="metrics JSON (n_images, seconds_per_image); with --shard the "
                   "shard's are in its index and gather-hierarchy --metrics writes the stage's")
    p.add_argument("--shard", default=None, help=SHARD_HELP)
    p.set_defaults(func=run_edges)

    p = sub.add_parser("ucm", help="OWT-UCM region trees (ucm2 + parents/altitudes/finest labels) from edge maps")
    add_params_args(p)
    p.add_argument("--edges", required=True, help="output folder of `longtail edges` (or its index.json)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--metrics", default=None, help="metrics JSON (n_images, mean_leaves, seconds_per_image); with "
                   "--shard: see gather-hierarchy")
    p.add_argument("--figure", default=None, help="PNG: image | edges | UCM | regions at three levels")
    p.add_argument("--shard", default=None, help=SHARD_HELP)
    p.set_defaults(func=run_ucm)

    p = sub.add_parser("gather-hierarchy", help="index.json of an edges / ucm folder from its N finished shards")
    add_params_args(p)
    p.add_argument("--dir", required=True, help="the --out-dir of the sharded `longtail edges` / `longtail ucm`")
    p.add_argument("--shards", type=int, default=None, help="N (default: the one N whose shards are present)")
    p.add_argument("--metrics", default=None, help="the stage's metrics JSON (combined over the shards)")
    p.add_argument("--figure", default=None, help="ucm folders: PNG image | edges | UCM | regions at three levels")
    p.set_defaults(func=run_gather)

    p = sub.add_parser("bsds", help="BSDS500 boundary (ODS/OIS/AP) and region (covering/PRI/VI) benchmark")
    add_params_args(p)
    p.add_argument("--images", required=True, help="folder of BSDS images (<id>.jpg)")
    p.add_argument("--gt", required=True, help="folder of BSDS groundTruth/<id>.mat")
    p.add_argument("--reference-ucm", default=None, help="folder of reference ucm2 .mat (gPb-owt-ucm baseline row)")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.set_defaults(func=run_bsds)

    p = sub.add_parser("train-pixel-embedding",
                       help="ResNet-50 hypercolumn pixel embeddings from the region hierarchy (Zhang & Maire 2020)")
    add_params_args(p)
    p.add_argument("--trees", required=True, help="output folder of `longtail ucm` (training images)")
    p.add_argument("--eval-images", required=True, help="BSDS image folder for the k-means covering check")
    p.add_argument("--eval-gt", required=True, help="BSDS groundTruth folder")
    p.add_argument("--out", required=True, help="checkpoint (.pt); load with longtail.hierarchy.load_pixel_embedding")
    p.add_argument("--metrics", required=True, help="metrics JSON")
    p.set_defaults(func=run_train)


# ------------------------------------------------------------------------------------------------ edges

@stage_verb("edges", "hierarchy", tags=lambda args, cfg: {"source": args.source})
def run_edges(args, params, cfg, run) -> int:
    from tqdm import tqdm

    from longtail.hierarchy.hed import load_hed
    from longtail.hierarchy.images import list_images
    from longtail.hierarchy.process import edge_record, iter_edges, save_record

    ec = cfg["edges"]
    src = Path(args.source)
    if not src.exists():
        raise LongtailError(f"--source {src} not found (a COCO JSON or an image folder)")
    items = list_images(coco=src if src.is_file() else None, images=src if src.is_dir() else None,
                        max_images=ec["max_images"])
    out, shard = Path(args.out_dir), _shard(args)
    if shard:
        items = select_shard(items, shard, key=lambda it: it.key)
        if hshards.finished(out, shard):
            log.info("edges: shard %s already finished in %s; not recomputed", shard_name(shard), out)
            return 0
    fingerprint = params_hash([str(src), ec, cfg["min_image_size"]])
    with hshards.StageOutput(out, shard, fingerprint, "edges") as w:
        todo = [it for it in items if it.key not in w.entries]
        if w.resumed:
            log.info("edges: resuming shard %s after %d finished images", shard_name(shard), w.resumed)
        t0 = time.time()
        if todo:
            set_threads()
            dev = str(select_device(cfg["device"], "edges"))
            model = load_hed(ec["weights"], dev, channels_last=True)
            it = iter_edges(model, todo, ec["batch_size"], dev, tuple(ec["scales"]), cfg["min_image_size"])
            for item, e in tqdm(it, total=len(todo), desc=f"edges {src.name}"):
                save_record(w.file(item.key), **edge_record(e))
                w.add({"key": item.key, "image": str(item.path), "image_id": item.image_id,
                       "height": e.shape[0], "width": e.shape[1]})
        metrics = {"n_images": len(w.entries), "seconds_per_image": (time.time() - t0) / max(len(todo), 1)}
        w.finish({"source": str(src)}, metrics)
    _write_metrics(run, args.metrics, metrics)
    print(f"edges: {metrics['n_images']} images -> {out} ({metrics['seconds_per_image']:.2f} s/image)")
    return 0


def _write_metrics(run, path, metrics: dict) -> None:
    """The metrics JSON (DVC) when asked for, else (a shard) MLflow only."""
    if path:
        run.write_metrics(path, metrics)
    else:
        run.log_metrics(metrics)


# ------------------------------------------------------------------------------------------------ ucm

@stage_verb("ucm", "hierarchy", tags=lambda args, cfg: {"edges": args.edges})
def run_ucm(args, params, cfg, run) -> int:
    from tqdm import tqdm

    from longtail.hierarchy.figures import hierarchy_grid
    from longtail.hierarchy.images import load_rgb
    from longtail.hierarchy.process import load_edges, load_index, save_tree, tree_from_edges

    uc = cfg["ucm"]
    edir = hshards.hierarchy_dir(args.edges)
    entries = load_index(edir, "edge map")
    out, shard = Path(args.out_dir), _shard(args)
    if shard:
        entries = select_shard(entries, shard, key=lambda r: r["key"])
        if hshards.finished(out, shard):
            log.info("ucm: shard %s already finished in %s; not recomputed", shard_name(shard), out)
            return 0
    fingerprint = params_hash([str(edir), uc, [r.get("digest") for r in entries]])
    fig_rows = []
    with hshards.StageOutput(out, shard, fingerprint, "tree") as w:
        todo = [r for r in entries if r["key"] not in w.entries]
        if w.resumed:
            log.info("ucm: resuming shard %s after %d finished images", shard_name(shard), w.resumed)
        t0 = time.time()
        for r in tqdm(todo, desc=f"ucm {edir.name}"):
            rec = load_edges(edir / r["edges"])
            tree = tree_from_edges(rec, uc["max_leaves"], uc["use_orientation"], uc["boundary"],
                                   uc["mix_weight"])
            save_tree(w.file(r["key"]), tree)
            w.add({**{k: r[k] for k in ("key", "image", "image_id", "height", "width")}, "n_leaves": tree.n_leaves})
            if args.figure and len(fig_rows) < cfg["figures"]["n_images"]:
                fig_rows.append((Path(r["image"]).name, load_rgb(r["image"], 1), rec["edges"], tree))
        leaves = [e["n_leaves"] for e in w.entries.values()]
        metrics = {"n_images": len(leaves), "mean_leaves": float(np.mean(leaves)) if leaves else 0.0,
                   "seconds_per_image": (time.time() - t0) / max(len(todo), 1)}
        w.finish({"edges": str(edir)}, metrics)
    _write_metrics(run, args.metrics, metrics)
    if args.figure:
        if not fig_rows:
            raise LongtailError(f"--figure: {edir} has no images to draw")
        hierarchy_grid(fig_rows, cfg["figures"]["levels"], args.figure)
        run.log_artifact(args.figure)
    print(f"ucm: {metrics['n_images']} trees -> {out} (mean {metrics['mean_leaves']:.0f} leaves)")
    return 0


def _shard(args) -> tuple[int, int] | None:
    return parse_shard(args.shard) if args.shard else None


@stage_verb("gather-hierarchy", "hierarchy")
def run_gather(args, params, cfg, run) -> int:
    index = hshards.gather(args.dir, args.shards)
    metrics = index["metrics"]
    _write_metrics(run, args.metrics, metrics)
    if args.figure:
        _gather_figure(index, hshards.hierarchy_dir(args.dir), cfg, args.figure)
        run.log_artifact(args.figure)
    print(f"gather: {index['num_shards']} shards, {len(index['images'])} images -> {Path(args.dir) / 'index.json'}")
    return 0


def _gather_figure(index: dict, out: Path, cfg: dict, figure: str) -> None:
    """The ucm figure of a gathered tree folder: its first images (by key), their edge maps and trees."""
    from longtail.hierarchy.figures import hierarchy_grid
    from longtail.hierarchy.images import load_rgb
    from longtail.hierarchy.process import load_edges, load_index
    from longtail.hierarchy.tree import load_region_tree

    if "edges" not in index or not index["images"]:
        raise LongtailError(f"--figure: {out / 'index.json'} is not a ucm folder with images (no 'edges' folder "
                            f"or no image); draw figures of `longtail ucm` outputs only")
    edir = Path(index["edges"])
    edges = {r["key"]: r["edges"] for r in load_index(edir, "edge map")}
    rows = [(Path(r["image"]).name, load_rgb(r["image"], 1), load_edges(edir / edges[r["key"]])["edges"],
             load_region_tree(out / r["tree"])) for r in index["images"][:cfg["figures"]["n_images"]]]
    hierarchy_grid(rows, cfg["figures"]["levels"], figure)


# ------------------------------------------------------------------------------------------------ bsds

@stage_verb("bsds", "hierarchy", tags=lambda args, cfg: {"images": args.images})
def run_bsds(args, params, cfg, run) -> int:
    from longtail.hierarchy import bench
    from longtail.hierarchy.bsds import check_groundtruth, edge_and_ucm_tasks, score_images, summarize
    from longtail.hierarchy.hed import load_hed
    from longtail.hierarchy.images import list_images

    bc = cfg["bench"]
    items = list_images(images=args.images, max_images=bc["max_images"])
    gt_dir = Path(args.gt)
    check_groundtruth(items, gt_dir)   # fail early, naming the file
    ref_dir = Path(args.reference_ucm) if args.reference_ucm else None
    th = bench.thresholds(bc["thresholds"])
    set_threads()
    dev = str(select_device(cfg["device"], "bsds"))
    model = load_hed(cfg["edges"]["weights"], dev, channels_last=True)
    tasks, t_edges, t_ucm = edge_and_ucm_tasks(model, items, cfg, dev, gt_dir, ref_dir, th)
    results = score_images(tasks, bc["nproc"])
    metrics, flat = summarize(results, [tk[0] for tk in tasks], th, bc, t_edges, t_ucm)
    run.log_metrics(flat)
    write_json(args.out, metrics)
    for name, r in metrics["rows"].items():
        b = r["boundary"]
        reg = r.get("region", {})
        extra = (f"  covering ODS {reg['covering_ODS']:.4f} OIS {reg['covering_OIS']:.4f}  "
                 f"PRI {reg['PRI_ODS']:.4f}  VI {reg['VI_ODS']:.4f}") if reg else ""
        print(f"{name:12s} ODS {b['ODS']:.4f} OIS {b['OIS']:.4f} AP {b['AP']:.4f}{extra}")
    return 0


# ------------------------------------------------------------------------------------------------ train

@stage_verb("train-pixel-embedding", "hierarchy")
def run_train(args, params, cfg, run) -> int:
    import os

    import torch

    from longtail.common.preemption import init_distributed
    from longtail.hierarchy import bench
    from longtail.hierarchy.images import list_images, load_rgb
    from longtail.hierarchy.pixel_embedding import (PixelEmbeddingNet, TreeImages, eval_k_grid, evaluate_segments,
                                                    train_pixel_embedding)

    pc = cfg["pixel_embedding"]
    set_threads()
    # torchrun: DDP (gloo on the CPU, nccl with one GPU per rank); hierarchy.device cuda without a GPU -> CPU
    dev = select_device(cfg["device"], "train-pixel-embedding")
    rank, world, device = init_distributed(dev)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)   # the job's threads (Snakemake sets it)
    data = TreeImages(args.trees, pc["max_regions"], cfg["min_image_size"])
    out = Path(args.out)
    ckpt = out.with_name(out.stem + ".ckpt.pt")  # resumable training state; final file written at the end
    t0 = time.time()
    net, losses = train_pixel_embedding(data, pc, ckpt, seed=params["seed"], device=device,
                                        num_workers=threads if threads > 1 else 0,
                                        on_step=lambda s, v: run.log_metrics({"loss": v}, step=s))
    seconds = time.time() - t0
    if rank != 0:
        return 0
    ev_items = list_images(images=args.eval_images, max_images=pc["eval_images"])
    ev = []
    for it in ev_items:
        gt = bench.load_groundtruth(Path(args.eval_gt) / f"{it.key}.mat")
        ev.append((load_rgb(it.path, cfg["min_image_size"]), gt))
    torch.manual_seed(params["seed"])
    rand = PixelEmbeddingNet(dim=pc["dim"], proj=pc["proj"]).to(device).eval()
    ks = eval_k_grid(pc["eval_k"])
    m_trained = evaluate_segments(net, ev, ks, params["seed"])
    m_random = evaluate_segments(rand, ev, ks, params["seed"])
    with atomic_path(out) as tmp:
        shutil.copyfile(ckpt, tmp)
    k = max(len(losses) // 10, 1)
    metrics = {"steps": len(losses), "n_train_images": len(data), "n_eval_images": len(ev),
               "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
               "world_size": world, "device": str(device),
               "train_seconds": round(seconds, 3), "samples_per_second": round(len(losses) * pc["batch_size"] /
                                                                               max(seconds, 1e-9), 3),
               "trained": m_trained, "random_init": m_random,
               "covering_gain": m_trained["covering"] - m_random["covering"]}
    run.write_metrics(args.metrics, metrics)
    print(f"train-pixel-embedding: loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f}; "
          f"k-means covering (ODS over k = {ks}) on {len(ev)} BSDS val images: trained "
          f"{m_trained['covering']:.4f} (k={m_trained['k']}) vs random init {m_random['covering']:.4f} "
          f"(k={m_random['k']})")
    return 0
