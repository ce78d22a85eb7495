"""``longtail train-embedding`` and ``longtail embed`` (Weng et al. 2021, 3.2, 4.1)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from longtail.cli import add_params_args
from longtail.common import LongtailError, atomic_path, read_json
from longtail.common.params import load_params, section
from longtail.common.tracking import stage_run

#: keys of the embedding section that a variant may override
VARIANT_KEYS = ("space", "dim", "curvature", "alpha", "beta", "gamma", "losses", "proposals_per_image", "lr",
                "epochs", "max_steps", "crop_size", "max_tangent_norm", "num_negatives", "pos_iou",
                "child_containment", "child_max_area_ratio", "child_min_area_ratio", "images_per_batch",
                "backbone", "frozen_stages")


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
    p.add_argument("--anchors", required=True, help="COCO JSON whose GT masks give the anchors (train split)")
    p.add_argument("--out", required=True, help="embeddings.npz")
    p.add_argument("--metrics", required=True, help="metrics JSON (DVC)")
    p.set_defaults(func=run_embed)


def variant_config(cfg: dict, variant: str) -> dict:
    """The embedding section with the variant's overrides applied."""
    variants = cfg.get("variants") or {}
    if variant not in variants:
        raise LongtailError(f"--variant {variant!r}: not a key of embedding.variants "
                            f"({', '.join(sorted(variants))}); add it to params.yaml.")
    out = copy.deepcopy(cfg)
    for k, v in (variants[variant] or {}).items():
        if k not in VARIANT_KEYS:
            raise LongtailError(f"embedding.variants.{variant}.{k}: not an overridable key ({', '.join(VARIANT_KEYS)})")
        out[k] = v
    out["variant"] = variant
    for k in ("variants", "default_variants", "proposal_methods"):
        out.pop(k, None)
    return out


def _set_threads(cfg: dict) -> None:
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))


def load_proposal_set(path: str, n_per_image: int | None):
    """(index, kept records, their positions in proposals.json, image table) of a proposal set."""
    from longtail.embedding.sampling import top_per_image
    from longtail.proposals.format import read_proposals

    index, records = read_proposals(path)
    if not records:
        raise LongtailError(f"{path}/proposals.json: no proposals at all; check the proposal stage's output.")
    for key in ("image_id", "segmentation", "score"):
        if key not in records[0]:
            raise LongtailError(f"{path}/proposals.json: records lack '{key}'; not the shared proposal format.")
    images = {int(im["id"]): im for im in index.get("images", [])}
    ids = top_per_image(records, n_per_image)
    index = {**index, "proposals_in_file": len(records)}
    return index, [records[i] for i in ids], ids, images


def run_train(args) -> int:
    import torch

    from longtail.embedding.train import build_model, make_training_set, pick_device, train

    params = load_params(args.params, args.overrides)
    cfg = variant_config(section(params, "embedding"), args.variant)
    _set_threads(cfg)
    seed = int(params["seed"])
    torch.manual_seed(seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with stage_run("train-embedding", params=cfg, all_params=params,
                   run_name=f"train-embedding {Path(args.proposals).parent.name}/{args.variant}",
                   tags={"longtail.variant": args.variant, "longtail.proposals": args.proposals}) as run:
        index, records, ids, images = load_proposal_set(args.proposals, cfg["proposals_per_image"])
        trees = None
        if args.region_trees:
            from longtail.embedding.sampling import load_region_trees

            trees = load_region_trees(args.region_trees, images)
        ts = make_training_set(records, ids, images, cfg, source=args.proposals, trees=trees)
        if ts.relations.stats["num_proposals"] == 0:
            raise LongtailError(f"{args.proposals}: every proposal mask is empty; nothing to train on.")
        model = build_model(cfg).to(pick_device(cfg.get("gpu")))
        summary = train(model, ts, cfg, seed=seed, checkpoint=out / "checkpoint.pt",
                        on_step=lambda s, rec: run.log_metrics(
                            {k: v for k, v in rec.items() if k.startswith("loss_")}, step=s))
        meta = {"config": cfg, "seed": seed, "proposals": args.proposals, "method": index.get("method"),
                "space": cfg["space"], "curvature": float(cfg["curvature"]), "dim": int(cfg["dim"])}
        with atomic_path(out / "model.pt") as tmp:
            torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **meta}, tmp)
        metrics = {**summary, **ts.relations.stats,
                   "empty_masks": int((~ts.valid).sum()), "proposals_in_file": index["proposals_in_file"]}
        run.write_metrics(out / "metrics.json", metrics)
        (out / "checkpoint.pt").unlink(missing_ok=True)
    print(json.dumps(metrics, indent=1))
    return 0


def load_model(path: str, gpu: int = 0):
    import torch

    from longtail.embedding.train import build_model, pick_device

    p = Path(path)
    if not p.exists():
        raise LongtailError(f"--model {p}: not found; run `longtail train-embedding` first.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
        cfg = state["config"]
    except Exception as e:
        raise LongtailError(f"--model {p}: not a train-embedding model ({e}); retrain it.") from e
    cfg = {**cfg, "backbone_checkpoint": None}   # the weights come from the state dict
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.to(pick_device(gpu)).eval()
    return model, state


def run_embed(args) -> int:
    from longtail.embedding.crops import crops_for_records
    from longtail.embedding.embed import anchor_records, select_anchors
    from longtail.embedding.train import embed_crops

    params = load_params(args.params, args.overrides)
    top = section(params, "embedding")
    model, state = load_model(args.model, top.get("gpu", 0))
    cfg = state["config"]
    _set_threads(top)
    t0 = time.time()
    logged = {**cfg, **{k: top[k] for k in ("anchors_per_category", "anchor_min_area", "embed_batch_size")}}
    with stage_run("embed", params=logged, all_params=params,
                   run_name=f"embed {Path(args.proposals).parent.name}/{cfg.get('variant')}",
                   tags={"longtail.variant": cfg.get("variant"), "longtail.proposals": args.proposals}) as run:
        _, records, ids, images = load_proposal_set(args.proposals, cfg["proposals_per_image"])
        crops, valid = crops_for_records(records, images, cfg["crop_size"], kinds=("fg",), source=args.proposals)
        z = embed_crops(model, crops[:, 0], top["embed_batch_size"], desc="embed proposals")
        keep = np.flatnonzero(valid)                      # empty masks have no embedding
        gt = read_json(args.anchors, "anchor ground truth")
        anns, missing = select_anchors(gt, top["anchors_per_category"], int(params["seed"]),
                                       top["anchor_min_area"], source=args.anchors)
        arecs = anchor_records(gt, anns)
        gt_images = {int(im["id"]): im for im in gt["images"]}
        acrops, avalid = crops_for_records(arecs, gt_images, cfg["crop_size"], kinds=("fg",), source=args.anchors)
        za = embed_crops(model, acrops[:, 0], top["embed_batch_size"], desc="embed anchors")
        akeep = np.flatnonzero(avalid)
        arrays = {
            "proposal_embeddings": z[keep].astype(np.float32),
            "proposal_ids": np.asarray(ids, np.int64)[keep],
            "proposal_image_ids": np.asarray([r["image_id"] for r in records], np.int64)[keep],
            "proposal_scores": np.asarray([r["score"] for r in records], np.float32)[keep],
            "anchor_embeddings": za[akeep].astype(np.float32),
            "anchor_category_ids": np.asarray([a["category_id"] for a in arecs], np.int64)[akeep],
            "anchor_ann_ids": np.asarray([a["ann_id"] for a in arecs], np.int64)[akeep],
            "space": np.asarray(state["space"]),
            "curvature": np.asarray(float(state["curvature"]) if state["space"] == "poincare" else 0.0),
        }
        with atomic_path(args.out) as tmp:
            np.savez_compressed(tmp, **arrays)
        pn = np.linalg.norm(arrays["proposal_embeddings"], axis=1) if len(keep) else np.zeros(1)
        metrics = {"num_proposals": len(keep), "empty_masks_skipped": int((~valid).sum()),
                   "num_images": len(set(arrays["proposal_image_ids"].tolist())),
                   "images_without_proposals": int(sum(1 for i in images if i not in
                                                       set(arrays["proposal_image_ids"].tolist()))),
                   "num_anchors": len(akeep), "anchor_categories": len(set(
                       arrays["anchor_category_ids"].tolist())),
                   "categories_without_anchor": len(missing),
                   "categories_without_anchor_ids": missing,
                   "proposal_norm_mean": float(pn.mean()), "proposal_norm_max": float(pn.max()),
                   "embed_seconds": round(time.time() - t0, 3)}
        run.write_metrics(args.metrics, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "categories_without_anchor_ids"}, indent=1))
    return 0
