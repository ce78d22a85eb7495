"""``longtail train-embedding`` and ``longtail embed`` (Weng et al. 2021, 3.2, 4.1)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from longtail.cli import add_params_args
from longtail.common import atomic_path, read_json
from longtail.common.runtime import set_threads
from longtail.common.verb import name_run, stage_verb
from longtail.embedding.inputs import load_model
from longtail.embedding.variants import variant_config


def register(sub):
    p = sub.add_parser("train-embedding", help="train the mask-triplet embedding network (Weng et al. 3.2)")
    add_params_args(p)
    p.add_argument("--proposals", required=True, help="training proposal set: results/proposals/<method>/train")
    p.add_argument("--variant", default="poincare", help="a key of embedding.variants (Table 2 ablations)")
    p.add_argument("--out-dir", required=True, help="results/embedding/<method>/<variant>: model.pt, metrics.json")
    p.add_argument("--region-trees", default=None,
                   help="optional `longtail ucm` output dir: its region trees add parent/child pairs")
    p.set_defaults(func=run_train)

    p = sub.add_parser("embed", help="embed all proposals (z_fg) and the GT anchors with a trained network")
    add_params_args(p)
    p.add_argument("--model", required=True, help="model.pt of train-embedding")
    p.add_argument("--proposals", required=True, help="proposal set to embed: results/proposals/<method>/<split>")
    p.add_argument("--anchors", default=None,
                   help="COCO JSON whose GT masks give the anchors (train split); required without --shard")
    p.add_argument("--out", required=True, help="embeddings.npz (with --shard: the one gather-embeddings writes)")
    p.add_argument("--metrics", default=None, help="metrics JSON (DVC); required without --shard")
    p.add_argument("--shard", default=None,
                   help="i/N (or i-of-N): embed only shard i of N of the set's images (ids sorted, every N-th from "
                        "the (i-1)-th) into <out stem>.shards/i-of-N.npz (resumable; a finished shard is not "
                        "recomputed); then `longtail gather-embeddings`")
    p.set_defaults(func=run_embed)

    p = sub.add_parser("gather-embeddings", help="embeddings.npz from the N shards of `embed --shard` + the anchors")
    add_params_args(p)
    p.add_argument("--model", required=True, help="model.pt of train-embedding (the shards' model; embeds anchors)")
    p.add_argument("--proposals", required=True, help="the proposal set the shards embedded")
    p.add_argument("--anchors", required=True, help="COCO JSON whose GT masks give the anchors (train split)")
    p.add_argument("--out", required=True, help="embeddings.npz")
    p.add_argument("--metrics", required=True, help="metrics JSON (DVC)")
    p.add_argument("--shards", type=int, default=None, help="N (default: the one N whose shards are present)")
    p.set_defaults(func=run_gather_embeddings)


def _set_method(proposals: str) -> str:
    """The method of a proposal set path (<method>/<split>, or its index.json)."""
    from longtail.proposals.format import proposal_set_dir

    return proposal_set_dir(proposals).parent.name


@stage_verb("train-embedding", "embedding", config=lambda args, cfg: variant_config(cfg, args.variant),
            run_name=lambda args, cfg: f"train-embedding {_set_method(args.proposals)}/{args.variant}",
            tags=lambda args, cfg: {"longtail.variant": args.variant, "longtail.proposals": args.proposals})
def run_train(args, params, cfg, run) -> int:
    import torch

    from longtail.embedding.dataset import training_dataset
    from longtail.embedding.train import build_model, init_distributed, train

    set_threads(cfg["threads"])
    seed = int(params["seed"])
    torch.manual_seed(seed)
    rank, world, device = init_distributed(cfg["gpu"])       # torchrun: DDP (gloo on CPU, nccl on GPUs)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = training_dataset(args.proposals, cfg, trees_dir=args.region_trees, seed=seed, world=world)
    model = build_model(cfg).to(device)
    summary = train(model, data, cfg, seed=seed, checkpoint=out / "checkpoint.pt", num_workers=cfg["num_workers"],
                    on_step=lambda s, rec: run.log_metrics(
                        {k: v for k, v in rec.items() if k.startswith("loss_")}, step=s))
    if rank != 0:
        return 0
    index = data.proposals
    meta = {"config": cfg, "seed": seed, "proposals": args.proposals, "method": index.index.get("method"),
            "space": cfg["space"], "curvature": float(cfg["curvature"]), "dim": int(cfg["dim"])}
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **meta}, tmp)
    metrics = {**summary, "num_proposals": int(index.record_valid.sum()), "num_images": len(data),
               "empty_masks": int((~index.record_valid).sum()), "proposals_in_file": index.proposals_in_file,
               "world_size": world}
    run.write_metrics(out / "metrics.json", metrics)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    print(json.dumps(metrics, indent=1))
    return 0


def _embed_inputs(args, top, run, verb: str):
    """(model, its state, its training config, the proposal index, the parts' fingerprint) of embed / gather."""
    from longtail.embedding.dataset import ProposalIndex
    from longtail.embedding.embed import embed_fingerprint

    model, state = load_model(args.model, top["gpu"])
    cfg = state["config"]
    set_threads(top["threads"])
    variant = cfg.get("variant")                      # model.pt content (None for a model without a variant)
    name_run(run, f"{verb} {_set_method(args.proposals)}/{variant}", **{"longtail.variant": variant})
    index = ProposalIndex(args.proposals, cfg["proposals_per_image"])
    return model, state, cfg, index, embed_fingerprint(args.model, index, cfg, top["embed_chunk_images"])


@stage_verb("embed", "embedding", tags=lambda args, cfg: {"longtail.proposals": args.proposals})
def run_embed(args, params, top, run) -> int:
    """``top``: the embedding section of params.yaml (anchors, batch size, threads); ``cfg``: the configuration
    the model was trained with (its variant), saved in model.pt."""
    from longtail.common import LongtailError
    from longtail.common.shards import parse_shard
    from longtail.embedding.embed import embed_proposal_set, embed_shard

    if not args.shard and not (args.anchors and args.metrics):
        raise LongtailError("embed: --anchors and --metrics are required without --shard (a shard's anchors and "
                            "metrics come from `longtail gather-embeddings`)")
    t0 = time.time()
    model, state, cfg, index, fingerprint = _embed_inputs(args, top, run, "embed")
    kw = dict(chunk_images=top["embed_chunk_images"], batch_size=top["embed_batch_size"],
              num_workers=top["num_workers"], fingerprint=fingerprint)
    if args.shard:
        shard = parse_shard(args.shard)
        f, computed = embed_shard(model, index, cfg, args.out, shard, **kw)
        if computed:
            with np.load(f) as z:
                n, empty = len(z["proposal_ids"]), int(z["empty_masks"])
            run.log_metrics({"shard_proposals": n, "shard_empty_masks": empty,
                             "shard_seconds": round(time.time() - t0, 3)})
            print(f"embed: shard {args.shard}: {n} proposals -> {f}")
        return 0
    # per image through a DataLoader; parts in <out>.parts/ (a killed embed resumes from them)
    props, writer = embed_proposal_set(model, index, cfg, args.out, **kw)
    _write_embeddings(args, params, top, run, model, state, cfg, index, props, writer.finish, t0)
    return 0


@stage_verb("gather-embeddings", "embedding", tags=lambda args, cfg: {"longtail.proposals": args.proposals})
def run_gather_embeddings(args, params, top, run) -> int:
    """embeddings.npz of a sharded embed: the shards' proposal arrays (checked: all there, complete, of this
    model and set) + the anchors embedded here + the metrics."""
    from longtail.common.io import atomic_path
    from longtail.embedding.embed import gather_shards

    t0 = time.time()
    model, state, cfg, index, fingerprint = _embed_inputs(args, top, run, "gather-embeddings")
    props = gather_shards(args.out, args.shards, fingerprint, index)

    def write(arrays):
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

    _write_embeddings(args, params, top, run, model, state, cfg, index, props, write, t0)
    return 0


def _write_embeddings(args, params, top, run, model, state, cfg, index, props, write, t0) -> None:
    """Embed the anchors, write embeddings.npz (``write``) and the metrics."""
    from longtail.embedding.embed import anchor_records, embed_records, select_anchors

    empty = int(props.pop("empty_masks"))
    gt = read_json(args.anchors, "anchor ground truth")
    anns, missing = select_anchors(gt, top["anchors_per_category"], int(params["seed"]),
                                   top["anchor_min_area"], source=args.anchors,
                                   on_missing=top["on_missing_anchor"])
    arecs = anchor_records(gt, anns)
    gt_images = {int(im["id"]): im for im in gt["images"]}
    za, akeep = embed_records(model, arecs, gt_images, cfg, batch_size=top["embed_batch_size"], source=args.anchors)
    keep = props["proposal_ids"]
    arrays = {
        **props,
        "anchor_embeddings": za,
        "anchor_category_ids": np.asarray([a["category_id"] for a in arecs], np.int64)[akeep],
        "anchor_ann_ids": np.asarray([a["ann_id"] for a in arecs], np.int64)[akeep],
        "space": np.asarray(state["space"]),
        "curvature": np.asarray(float(state["curvature"]) if state["space"] == "poincare" else 0.0),
    }
    write(arrays)
    embedded_images = np.unique(arrays["proposal_image_ids"])      # not a Python set of N ints
    pn = np.linalg.norm(arrays["proposal_embeddings"], axis=1) if len(keep) else np.zeros(1)
    metrics = {"num_proposals": len(keep), "empty_masks_skipped": empty,
               "num_images": len(embedded_images),
               "images_without_proposals": int((~np.isin(np.fromiter(index.images, np.int64, len(index.images)),
                                                         embedded_images)).sum()),
               "num_anchors": len(akeep), "anchor_categories": len(set(
                   arrays["anchor_category_ids"].tolist())),
               "categories_without_anchor": len(missing),
               "categories_without_anchor_ids": missing,
               "proposal_norm_mean": float(pn.mean()), "proposal_norm_max": float(pn.max()),
               "embed_seconds": round(time.time() - t0, 3)}
    run.write_metrics(args.metrics, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "categories_without_anchor_ids"}, indent=1))
