"""``longtail train-proposals | propose | eval-proposals | error-analysis``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from longtail.cli import add_params_args
from longtail.common import LongtailError
from longtail.common.params import load_params, section
from longtail.common.tracking import stage_run

log = logging.getLogger(__name__)

#: methods implemented by the annotation-free stage (longtail.proposals.annotation_free.propose_dataset)
ANNOTATION_FREE_METHODS = ("ucm", "freemask", "spectral", "solov2-free")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-proposals", help="train a class-agnostic proposal network on base categories "
                                               "(mmengine Runner; Weng et al. 3.1, Chen et al. DCL)")
    add_params_args(p)
    p.add_argument("--model", required=True, help="a key of proposals.models (maskrcnn, maskrcnn_dcl, solov2)")
    p.add_argument("--train-json", required=True, help="COCO training set (base annotations only)")
    p.add_argument("--val-json", default=None, help="COCO set evaluated after training (class-agnostic)")
    p.add_argument("--work-dir", required=True, help="checkpoints, logs, config.py and model.pth go here")
    p.set_defaults(func=run_train)

    p = sub.add_parser("propose", help="class-agnostic mask proposals, top-K per image after mask NMS")
    add_params_args(p)
    p.add_argument("--method", required=True,
                   help="gt | a trained network (proposals.models key) | " + " | ".join(ANNOTATION_FREE_METHODS))
    p.add_argument("--dataset", required=True, help="COCO JSON whose images get proposals")
    p.add_argument("--out-dir", required=True, help="results/proposals/<method>/<split>")
    p.add_argument("--model-dir", default=None, help="train-proposals work dir (network methods)")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda:0 ...")
    p.set_defaults(func=run_propose)

    p = sub.add_parser("eval-proposals", help="class-agnostic COCO AP/AR (useCats=0) on base, novel and all")
    add_params_args(p)
    p.add_argument("--proposals", required=True, help="proposal directory (proposals.json + index.json)")
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
    return Path(out_dir).name


def run_propose(args) -> int:
    from longtail.proposals.datasets import load_coco
    from longtail.proposals.format import write_proposals
    from longtail.proposals.postprocess import gt_records, topk_mask_nms

    params = load_params(args.params, args.overrides)
    cfg = section(params, "proposals")
    dataset = load_coco(args.dataset)
    method = args.method
    split = _split_name(args.out_dir)
    with stage_run("propose", params=cfg, all_params=params, run_name=f"propose/{method}/{split}",
                   tags={"method": method, "split": split}) as run:
        meta: dict = {}
        if args.device == "auto":
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if method == "gt":
            records = gt_records(dataset)
        elif method in ANNOTATION_FREE_METHODS:
            from longtail.proposals.annotation_free import propose_dataset

            records, skipped = propose_dataset(method, dataset, params, run, args)
            if skipped:   # not run on these images (e.g. no region tree): eval-proposals leaves them out
                meta["images_skipped"] = skipped
        elif method in cfg["models"] or args.model_dir:
            from longtail.proposals.inference import predict_dataset

            if not args.model_dir:
                raise LongtailError(f"propose --method {method}: --model-dir is required for network methods "
                                    f"(the work dir of `longtail train-proposals --model {method}`)")
            records = predict_dataset(args.model_dir, dataset, score_thr=cfg["score_thr"], pre_nms=cfg["pre_nms"],
                                      device=args.device)
            meta["model_dir"] = str(args.model_dir)
        else:
            raise LongtailError(f"propose --method {method!r}: unknown method; use gt, one of proposals.models "
                                f"({', '.join(cfg['models'])}) or {', '.join(ANNOTATION_FREE_METHODS)}")
        raw = len(records)
        records = topk_mask_nms(records, cfg["topk"], cfg["nms_iou"])
        write_proposals(args.out_dir, records, dataset["images"], method=method, dataset=args.dataset,
                        topk=cfg["topk"], nms_iou=cfg["nms_iou"], **meta)
        n_img = max(len(dataset["images"]), 1)
        metrics = {"images": len(dataset["images"]), "proposals_before_nms": raw, "proposals": len(records),
                   "proposals_per_image": len(records) / n_img}
        run.log_metrics(metrics)
        log.info("propose %s: %d images, %d proposals (%d before NMS) -> %s", method, len(dataset["images"]),
                 len(records), raw, args.out_dir)
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


def run_eval(args) -> int:
    from longtail.proposals.evaluation import evaluate_proposals

    params = load_params(args.params, args.overrides)
    cfg = section(params, "proposals")
    dataset, index, records, skipped = _scored_inputs(args, "eval-proposals")
    method = index.get("method", "?")
    with stage_run("eval-proposals", params=cfg, all_params=params,
                   run_name=f"eval-proposals/{method}/{_split_name(args.proposals)}",
                   tags={"method": method, "split": _split_name(args.proposals)}) as run:
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


def run_train(args) -> int:
    from longtail.proposals.training import train

    params = load_params(args.params, args.overrides)
    cfg = section(params, "proposals")
    if args.model not in cfg["models"]:
        raise LongtailError(f"train-proposals --model {args.model!r}: not a key of proposals.models "
                            f"({', '.join(cfg['models'])}); add its config there")
    with stage_run("train-proposals", params=cfg, all_params=params, run_name=f"train-proposals/{args.model}",
                   tags={"model": args.model}) as run:
        metrics = train(args.model, cfg, params["seed"], args.train_json, args.val_json, args.work_dir, run)
        run.write_metrics(Path(args.work_dir) / "metrics.json", metrics)
    return 0


def run_error_analysis(args) -> int:
    from longtail.proposals.error_analysis import error_analysis

    params = load_params(args.params, args.overrides)
    cfg = section(params, "proposals")
    dataset, index, records, _ = _scored_inputs(args, "error-analysis")
    method = index.get("method", "?")
    with stage_run("error-analysis", params=cfg, all_params=params,
                   run_name=f"error-analysis/{method}/{_split_name(args.proposals)}", tags={"method": method}) as run:
        metrics = {"method": method, **error_analysis(dataset, records, cfg["error_analysis"]["match_iou"])}
        run.write_metrics(args.out, metrics)
    return 0


def run_compare(args) -> int:
    from longtail.common.io import read_json

    params = load_params(args.params, args.overrides)
    cfg = section(params, "proposals")
    rows = {}
    for role, d in (("baseline", Path(args.baseline)), ("variant", Path(args.variant))):
        ev = read_json(d / f"metrics_{args.split}.json", f"{role} evaluation (longtail eval-proposals)")
        er = read_json(d / f"errors_{args.split}.json", f"{role} error analysis (longtail error-analysis)")
        row = {f"{sub}/{k}": ev["segm"][sub][k] for sub in ("base", "novel", "all")
               for k in ("AP", "AP50", "AR10", "AR100")}
        row.update({k: er[k] for k in ("dAP_fFP", "dAP_bFP", "dAP_FN")})
        rows[role] = {"method": ev.get("method", d.name), **row}
    delta = {k: rows["variant"][k] - rows["baseline"][k] for k in rows["baseline"] if k != "method"}
    with stage_run("compare-proposals", params=cfg, all_params=params,
                   run_name=f"compare-proposals/{rows['variant']['method']}-vs-{rows['baseline']['method']}") as run:
        run.write_metrics(args.out, {**rows, "delta": delta})
        log.info("%s - %s: novel AR@100 %+.3f, all AP %+.3f, dAP_FN %+.3f", rows["variant"]["method"],
                 rows["baseline"]["method"], delta["novel/AR100"], delta["all/AP"], delta["dAP_FN"])
    return 0
