"""``longtail train-proposals | propose | eval-proposals | error-analysis``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from longtail.cli import add_params_args
from longtail.common import LongtailError
from longtail.common.verb import name_run, stage_verb
from longtail.proposals.annotation_free import METHODS as ANNOTATION_FREE_METHODS

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-proposals", help="train a class-agnostic proposal network on base categories "
                                               "(mmengine Runner; Weng et al. 3.1, Chen et al. DCL)")
    add_params_args(p)
    p.add_argument("--model", required=True, help="a key of proposals.models (maskrcnn, maskrcnn_dcl, solov2)")
    p.add_argument("--train-json", required=True, help="COCO training set (base annotations only)")
    p.add_argument("--val-json", default=None, help="COCO set evaluated after training (class-agnostic)")
    p.add_argument("--work-dir", required=True, help="checkpoints, logs, config.py and model.pth go here")
    p.add_argument("--pseudo", default=None, help="proposal set on the training images (e.g. results/proposals/ucm/"
                   "train) whose proposals that match no annotation become extra targets (proposals.train.pseudo)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("propose", help="class-agnostic mask proposals, top-K per image after mask NMS")
    add_params_args(p)
    p.add_argument("--method", required=True,
                   help="gt | a trained network (proposals.models key) | " + " | ".join(ANNOTATION_FREE_METHODS))
    p.add_argument("--dataset", required=True, help="COCO JSON whose images get proposals")
    p.add_argument("--out-dir", required=True, help="results/proposals/<method>/<split>")
    p.add_argument("--model-dir", default=None, help="train-proposals work dir (network methods)")
    p.add_argument("--split", default=None, help="image set (train | val): where `ucm` finds its region trees "
                   "(<tree_dir>/<split>/); default: the --out-dir folder's name")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda:0 ...")
    p.add_argument("--shard", default=None, help="i/N (or i-of-N, 1-based): only shard i of N of the images sorted "
                   "by id (every N-th from the (i-1)-th), written to <out-dir>/shards/i-of-N.jsonl; then "
                   "`longtail gather-proposals`. Default: the whole set (1/1), gathered at once")
    p.set_defaults(func=run_propose)

    p = sub.add_parser("gather-proposals", help="index.json of a proposal set from its N finished shards")
    add_params_args(p)
    p.add_argument("--proposals", required=True, help="the proposal set folder (or its index.json)")
    p.add_argument("--shards", type=int, default=None, help="N (default: the one N whose shards are present)")
    p.set_defaults(func=run_gather)

    p = sub.add_parser("eval-proposals", help="class-agnostic COCO AP/AR (useCats=0) on base, novel and all")
    add_params_args(p)
    p.add_argument("--proposals", required=True, help="proposal set folder (shards/ + index.json) or its index.json")
    p.add_argument("--dataset", required=True, help="COCO GT JSON with base/novel category splits")
    p.add_argument("--out", required=True, help="metrics JSON (DVC)")
    p.add_argument("--figure", default=None, help="PNG of proposals overlaid on a few images (report)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("error-analysis", help="fFP / bFP / FN segmentation errors and oracle dAP "
                                              "(Chen et al. 2022, 3)")
    add_params_args(p)
    p.add_argument("--proposals", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="metrics JSON (DVC)")
    p.set_defaults(func=run_error_analysis)

    p = sub.add_parser("compare-proposals", help="ablation table: variant vs baseline proposal network "
                                                 "(e.g. DCL on/off), from their eval and error-analysis files")
    add_params_args(p)
    p.add_argument("--baseline", required=True, help="results/proposals/<method> of the baseline")
    p.add_argument("--variant", required=True, help="results/proposals/<method> of the variant")
    p.add_argument("--split", default="val")
    p.add_argument("--out", required=True, help="comparison JSON (DVC metrics)")
    p.set_defaults(func=run_compare)


def _split_name(out_dir: str | Path) -> str:
    from longtail.proposals.format import proposal_set_dir

    return proposal_set_dir(out_dir).name


def _propose_split(args) -> str:
    return args.split or _split_name(args.out_dir)


@stage_verb("propose", "proposals", run_name=lambda args, cfg: f"propose/{args.method}/{_propose_split(args)}",
            tags=lambda args, cfg: {"method": args.method, "split": _propose_split(args), "shard": args.shard or "1/1"})
def run_propose(args, params, cfg, run) -> int:
    import time

    from longtail.common.params import propose_topk
    from longtail.common.shards import parse_shard, select_shard, shard_name
    from longtail.proposals.datasets import load_coco
    from longtail.proposals.format import INDEX_FILE, ProposalWriter, gather, shard_done, shard_path
    from longtail.proposals.postprocess import topk_mask_nms

    shard = parse_shard(args.shard)
    dataset = load_coco(args.dataset)
    method = args.method
    topk = propose_topk(params, method)   # annotation_free.topk for the annotation-free methods, else proposals.topk
    meta = {"method": method, "dataset": str(args.dataset), "topk": topk, "nms_iou": cfg["nms_iou"]}
    if args.model_dir:  # any method run from a model (networks, solov2-free): another model is another set
        meta["model_dir"] = str(args.model_dir)
    out = Path(args.out_dir)
    if shard_done(out, shard) and _same_meta(out, shard, meta):
        log.info("propose %s: shard %s already finished in %s; not recomputed", method, shard_name(shard), out)
    else:
        (out / INDEX_FILE).unlink(missing_ok=True)        # the set is complete again only after gather
        for stale in (out / "shards").glob("*-of-*"):     # shards of another N (the set was resharded)
            if not stale.name.split("-of-")[1].startswith(f"{shard[1]}."):
                stale.unlink()
        images = select_shard(dataset["images"], shard, key=lambda im: int(im["id"]))
        gen = _image_proposals(method, dataset, params, cfg, args)
        t0 = time.perf_counter()
        with ProposalWriter(out, shard, **meta) as w:
            if w.done:
                log.info("propose %s: resuming shard %s after %d finished images", method, shard_name(shard),
                         len(w.done))
            todo = [im for im in images if int(im["id"]) not in w.done]
            raw = 0
            it = gen(todo)
            for k, im in enumerate(todo):
                try:
                    got, recs = next(it)
                except LongtailError as e:
                    raise LongtailError(f"propose shard {shard_name(shard)} ({shard_path(out, shard)}.part), image "
                                        f"{im['id']} ({im['file_name']}): {e} Fix or remove the image, then rerun "
                                        f"the shard: it resumes after the last finished image.") from None
                except Exception as e:     # a corrupt image: the decoder's own error, with the file named
                    raise LongtailError(f"propose shard {shard_name(shard)}: image {im['id']} ({im['file_name']}) "
                                        f"could not be processed ({type(e).__name__}: {e}); fix or remove the "
                                        f"image, then rerun the shard: it resumes after the last finished "
                                        f"image.") from e
                assert int(got["id"]) == int(im["id"])
                if recs is None:
                    w.add(im, [], skipped=True)
                    continue
                raw += len(recs)
                w.add(im, topk_mask_nms(recs, topk, cfg["nms_iou"], progress=False))
            if method in ANNOTATION_FREE_METHODS:
                from longtail.proposals.annotation_free import check_counts

                try:
                    check_counts(method, params["annotation_free"], run, images=len(w.images),
                                 proposals=w.num_proposals, skipped=len(w.skipped),
                                 seconds=time.perf_counter() - t0, split=_propose_split(args))
                except LongtailError:
                    w.discard()                # a rejected result is not resumed
                    raise
            w.finish()
        n_img = max(len(w.images), 1)
        metrics = {"images": len(w.images), "images_skipped": len(w.skipped), "proposals_before_nms": raw,
                   "proposals": w.num_proposals, "proposals_per_image": w.num_proposals / n_img}
        run.log_metrics(metrics)
        log.info("propose %s shard %s: %d images, %d proposals -> %s", method, shard_name(shard), len(w.images),
                 w.num_proposals, w.path)
    if shard[1] == 1:
        gather(out, 1)
    return 0


def _same_meta(out: Path, shard: tuple[int, int], meta: dict) -> bool:
    """The finished shard was written with these parameters (else it is recomputed)."""
    from longtail.common.io import read_json
    from longtail.proposals.format import shard_path

    done = read_json(shard_path(out, shard).with_suffix(".json"), "proposal shard metadata")
    return all(done.get(k) == v for k, v in meta.items())


def _image_proposals(method: str, dataset: dict, params: dict, cfg: dict, args):
    """images -> iterator of (image, records before NMS, or None if the method skipped it), for every method."""
    if method == "gt":
        from collections import defaultdict

        from longtail.proposals.postprocess import gt_records

        anns = defaultdict(list)
        for a in dataset["annotations"]:
            anns[int(a["image_id"])].append(a)
        return lambda images: ((im, gt_records({"images": [im], "annotations": anns[int(im["id"])]}))
                               for im in images)
    if method in ANNOTATION_FREE_METHODS:
        from longtail.common.runtime import select_device
        from longtail.proposals.annotation_free import propose_images

        device = str(select_device(args.device, "propose")) if method == "solov2-free" else "cpu"
        return lambda images: propose_images(method, images, params["annotation_free"], int(params["seed"]),
                                             split=_propose_split(args), model_dir=args.model_dir, device=device)
    if method in cfg["models"] or args.model_dir:
        if not args.model_dir:
            raise LongtailError(f"propose --method {method}: --model-dir is required for network methods "
                                f"(the work dir of `longtail train-proposals --model {method}`)")
        from longtail.common.runtime import select_device
        from longtail.proposals.inference import iter_predictions

        device = str(select_device(args.device, "propose"))
        return lambda images: iter_predictions(args.model_dir, images, score_thr=cfg["score_thr"],
                                               pre_nms=cfg["pre_nms"], device=device)
    raise LongtailError(f"propose --method {method!r}: unknown method; use gt, one of proposals.models "
                        f"({', '.join(cfg['models'])}) or {', '.join(ANNOTATION_FREE_METHODS)}")


@stage_verb("gather-proposals", "proposals")
def run_gather(args, params, cfg, run) -> int:
    from longtail.proposals.format import gather

    index = gather(args.proposals, args.shards)
    name_run(run, f"gather-proposals/{index['method']}/{_split_name(Path(args.proposals))}", method=index["method"])
    run.log_metrics({"images": len(index["images"]), "images_skipped": len(index.get("images_skipped", [])),
                     "proposals": index["num_proposals"], "shards": index["num_shards"]})
    log.info("gather %s: %d shards, %d images, %d proposals", args.proposals, index["num_shards"],
             len(index["images"]), index["num_proposals"])
    return 0


def _scored_inputs(args, verb: str) -> tuple[dict, dict, list[dict], set[int]]:
    """(dataset, index, records, skipped ids) of --dataset / --proposals; images the proposal method skipped
    (index.json ``images_skipped``, e.g. no region tree) are left out of the dataset."""
    from longtail.proposals.datasets import load_coco
    from longtail.proposals.format import read_proposals

    dataset = load_coco(args.dataset)
    index, records = read_proposals(args.proposals)
    skipped = set(index.get("images_skipped", []))
    if skipped:
        log.warning("%s: %d of %d images were skipped by `propose --method %s` (index.json images_skipped, e.g. "
                    "no region tree); they are left out", verb, len(skipped), len(dataset["images"]),
                    index.get("method", "?"))
        keep = [im for im in dataset["images"] if im["id"] not in skipped]
        if not keep:
            raise LongtailError(f"{args.proposals}: every image of {args.dataset} was skipped by the proposal "
                                f"method; nothing to evaluate")
        dataset = {**dataset, "images": keep,
                   "annotations": [a for a in dataset["annotations"] if a["image_id"] not in skipped]}
    return dataset, index, records, skipped


@stage_verb("eval-proposals", "proposals")
def run_eval(args, params, cfg, run) -> int:
    from longtail.proposals.evaluation import evaluate_proposals

    dataset, index, records, skipped = _scored_inputs(args, "eval-proposals")
    method = index.get("method", "?")
    name_run(run, f"eval-proposals/{method}/{_split_name(args.proposals)}", method=method,
             split=_split_name(args.proposals))
    metrics = {"method": method, "segm": evaluate_proposals(dataset, records, "segm"),
               "bbox": evaluate_proposals(dataset, records, "bbox"),
               "images_evaluated": len(dataset["images"]), "images_skipped": len(skipped),
               "proposals_per_image": len(records) / max(len(dataset["images"]), 1)}
    run.write_metrics(args.out, metrics)
    if args.figure:
        from longtail.proposals.visualize import overlay_figure

        overlay_figure(dataset, records, args.figure, title=f"{method} proposals")
        run.log_artifact(args.figure)
    s = metrics["segm"]
    log.info("%s: mask AR@100 base %.3f novel %.3f all %.3f | AP all %.3f", method, s["base"]["AR100"],
             s["novel"]["AR100"], s["all"]["AR100"], s["all"]["AP"])
    return 0


@stage_verb("train-proposals", "proposals", run_name=lambda args, cfg: f"train-proposals/{args.model}",
            tags=lambda args, cfg: {"model": args.model})
def run_train(args, params, cfg, run) -> int:
    from longtail.proposals.training import train

    if args.model not in cfg["models"]:
        raise LongtailError(f"train-proposals --model {args.model!r}: not a key of proposals.models "
                            f"({', '.join(cfg['models'])}); add its config there")
    method = cfg["train"]["pseudo"]["method"]
    if method and not args.pseudo:
        raise LongtailError(f"proposals.train.pseudo.method={method!r} but train-proposals got no --pseudo: pass "
                            f"{method}'s proposal set on the training images (Snakemake's train_proposals does: "
                            f"{cfg['out_dir']}/{method}/train), or set the method to null")
    metrics = train(args.model, cfg, params["seed"], args.train_json, args.val_json, args.work_dir, run,
                    pseudo=args.pseudo)
    run.write_metrics(Path(args.work_dir) / "metrics.json", metrics)
    return 0


@stage_verb("error-analysis", "proposals")
def run_error_analysis(args, params, cfg, run) -> int:
    from longtail.proposals.error_analysis import error_analysis

    dataset, index, records, _ = _scored_inputs(args, "error-analysis")
    method = index.get("method", "?")
    name_run(run, f"error-analysis/{method}/{_split_name(args.proposals)}", method=method)
    metrics = {"method": method, **error_analysis(dataset, records, cfg["error_analysis"]["match_iou"])}
    run.write_metrics(args.out, metrics)
    return 0


@stage_verb("compare-proposals", "proposals")
def run_compare(args, params, cfg, run) -> int:
    from longtail.common.io import read_json

    rows = {}
    for role, d in (("baseline", Path(args.baseline)), ("variant", Path(args.variant))):
        ev = read_json(d / f"metrics_{args.split}.json", f"{role} evaluation (longtail eval-proposals)")
        er = read_json(d / f"errors_{args.split}.json", f"{role} error analysis (longtail error-analysis)")
        row = {f"{sub}/{k}": ev["segm"][sub][k] for sub in ("base", "novel", "all")
               for k in ("AP", "AP50", "AR10", "AR100")}
        row.update({k: er[k] for k in ("dAP_fFP", "dAP_bFP", "dAP_FN")})
        rows[role] = {"method": ev.get("method", d.name), **row}
    delta = {k: rows["variant"][k] - rows["baseline"][k] for k in rows["baseline"] if k != "method"}
    name_run(run, f"compare-proposals/{rows['variant']['method']}-vs-{rows['baseline']['method']}")
    run.write_metrics(args.out, {**rows, "delta": delta})
    log.info("%s - %s: novel AR@100 %+.3f, all AP %+.3f, dAP_FN %+.3f", rows["variant"]["method"],
             rows["baseline"]["method"], delta["novel/AR100"], delta["all/AP"], delta["dAP_FN"])
    return 0
