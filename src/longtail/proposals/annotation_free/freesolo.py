"""FreeSOLO training (Wang et al. 2022, §3.3): SOLOv2 with the weak mask loss on coarse pseudo-masks, then
self-training rounds (predictions with score >= 0.3 become the next round's pseudo-masks).

The pseudo-masks are any annotation-free proposal set (``longtail propose --method freemask|spectral|ucm`` on
the training images). Each round trains with mmengine's Runner in ``<work_dir>/round<r>`` (resuming from its
last checkpoint); round r > 0 starts from round r - 1's weights. The last round's ``model.pth`` and ``config.py``
are copied to ``<work_dir>``, which ``longtail propose --method solov2-free --model-dir <work_dir>`` reads.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from longtail.common.params import project_path
from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path, write_json
from longtail.common.tracking import StageRun
from longtail.proposals.runner import CONFIG_FILE, MODEL_FILE, barrier, is_main_process

log = logging.getLogger(__name__)


def pseudo_coco(dataset: dict, records: list[dict], *, score_thr: float, max_per_image: int) -> dict:
    """COCO instances JSON (one class 'object') whose annotations are the pseudo-masks in ``records``."""
    from longtail.proposals.datasets import image_pseudo_annotations

    by_image: dict[int, list[dict]] = {}
    for r in records:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    anns = []
    for im in dataset["images"]:
        for a in image_pseudo_annotations(im, by_image.get(int(im["id"]), []), [], score_thr=score_thr,
                                          max_per_image=max_per_image):
            anns.append({"id": len(anns) + 1, **a})
    with_masks = {a["image_id"] for a in anns}
    images = [im for im in dataset["images"] if int(im["id"]) in with_masks]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "object", "supercategory": "object", "split": "base"}]}


def build_config(fcfg: dict, seed: int):
    """The FreeSOLO mmdet config with params.yaml's schedule and weak-loss parameters applied."""
    from longtail.proposals.runner import load_config
    from longtail.proposals.training import apply_params

    cfg_file = fcfg["config"]
    cfg = load_config(cfg_file, param="annotation_free.freesolo.config")
    head = cfg.model.get("mask_head", {})
    if head.get("type") != "FreeSOLOv2Head":
        raise LongtailError(f"{cfg_file}: model.mask_head.type is {head.get('type')!r}; the FreeSOLO config must use "
                            f"FreeSOLOv2Head (and inherit the proposal stage's SOLOv2 config via _base_)")
    apply_params(cfg, {"train": fcfg["train"]}, seed, cfg_file)
    w = fcfg["weak_loss"]
    head["weak_loss"] = dict(alpha=float(w["alpha"]), pairwise_weight=float(w["pairwise_weight"]),
                             kernel_size=int(w["kernel_size"]), dilation=int(w["dilation"]),
                             color_thr=float(w["color_thr"]), warmup_iters=int(w["pairwise_warmup_iters"]))
    return cfg


def _train_round(fcfg: dict, seed: int, ann_file: Path, work_dir: Path, init_from: Path | None, run: StageRun,
                 round_idx: int) -> dict:
    from longtail.proposals.runner import dataset_cfg, export_model, run_mmengine
    from longtail.proposals.training import hierarchy_init

    cfg = build_config(fcfg, seed)
    dataset_cfg(cfg, "train_dataloader", ann_file, test_mode=False)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.train_cfg.pop("val_interval", None)
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None     # the test loop (not model.test_cfg)
    n_init = 0
    cfg.model.backbone.init_cfg = None
    if init_from is not None:
        cfg.load_from = str(init_from)
    else:
        cfg.load_from = None
        if fcfg["init"] in ("auto", "hierarchy"):
            n_init = hierarchy_init(cfg, project_path(fcfg["hierarchy_checkpoint"]), work_dir,
                                    required=fcfg["init"] == "hierarchy", param="annotation_free.freesolo.init")
    runner, hook = run_mmengine(cfg, work_dir, _RoundRun(run, round_idx), int(fcfg["train"]["log_interval"]),
                                cfg_file=fcfg["config"], gpus=int(fcfg["gpu"]),
                                what=f"train-freesolo round {round_idx}")
    export_model(cfg, work_dir)
    return {"iterations": int(runner.iter), "start_iter": hook.start_iter, "backbone_init_tensors": n_init,
            **{k.replace("train/", ""): v for k, v in hook.last.items()}}


class _RoundRun:
    """StageRun proxy: one MLflow curve per self-training round (metric names prefixed ``round<r>/``)."""

    def __init__(self, run: StageRun, r: int):
        self.run, self.r = run, r

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.run.log_metrics({f"round{self.r}/{k}": v for k, v in metrics.items()}, step=step)


def train_freesolo(fcfg: dict, seed: int, dataset_json: str | Path, pseudo_dir: str | Path, work_dir: str | Path,
                   run: StageRun, device: str = "cpu", figure: str | Path | None = None) -> dict:
    """Train FreeSOLO on the pseudo-masks in ``pseudo_dir``, then ``self_training_rounds`` rounds.

    ``figure``: PNG of round-0 pseudo-masks vs. the final model's masks on the same training images.
    """
    from longtail.proposals.datasets import load_coco
    from longtail.proposals.format import read_proposals
    from longtail.proposals.inference import predict_dataset as predict

    dataset = load_coco(dataset_json)
    index, records = read_proposals(pseudo_dir)
    if fcfg.get("max_train_images"):
        # sample run: the first N images that have pseudo-masks (training and self-training predictions)
        with_masks = {int(r["image_id"]) for r in records}
        keep = [im for im in dataset["images"] if int(im["id"]) in with_masks][:int(fcfg["max_train_images"])]
        dataset = {**dataset, "images": keep}
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"pseudo_method": index.get("method", "?"), "rounds": []}
    init_from = None
    n_rounds = int(fcfg["self_training_rounds"]) + 1
    for r in range(n_rounds):
        thr = fcfg["pseudo_score_thr"] if r == 0 else fcfg["self_training_score_thr"]
        pseudo = pseudo_coco(dataset, records, score_thr=thr, max_per_image=int(fcfg["max_pseudo_per_image"]))
        if not pseudo["annotations"]:
            what = (f"{pseudo_dir} (method {index.get('method')})" if r == 0 else
                    f"the round-{r - 1} model's predictions with score >= {thr}")
            raise LongtailError(f"FreeSOLO round {r}: empty pseudo-mask set from {what}; nothing to train on. Lower "
                                f"annotation_free.freesolo.{'pseudo_score_thr' if r == 0 else 'self_training_score_thr'}"
                                f", train longer (annotation_free.freesolo.train.max_iters) or check the proposals.")
        rdir = work_dir / f"round{r}"
        (rdir / "data").mkdir(parents=True, exist_ok=True)
        ann_file = rdir / "data" / "pseudo_masks.json"
        if is_main_process():     # under torchrun every rank computed the same set; one writes it
            write_json(ann_file, pseudo, indent=None)
        barrier()
        stats = {"round": r, "pseudo_masks": len(pseudo["annotations"]), "pseudo_images": len(pseudo["images"]),
                 "pseudo_masks_per_image": len(pseudo["annotations"]) / max(len(pseudo["images"]), 1)}
        log.info("FreeSOLO round %d: %d pseudo-masks on %d images", r, stats["pseudo_masks"], stats["pseudo_images"])
        stats.update(_train_round(fcfg, seed, ann_file, rdir, init_from, run, r))
        run.log_metrics({f"round{r}/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        metrics["rounds"].append(stats)
        init_from = rdir / MODEL_FILE
        if r + 1 < n_rounds:
            # self-training: the model's confident predictions on the training images are the next pseudo-masks
            records = predict(rdir, dataset, score_thr=float(fcfg["self_training_score_thr"]),
                              pre_nms=int(fcfg["pre_nms"]), device=device)
    if not is_main_process():
        return metrics            # rank 0 writes the final model, the figure and the metrics
    for f in (MODEL_FILE, CONFIG_FILE):
        with atomic_path(work_dir / f) as tmp:
            shutil.copyfile(work_dir / f"round{n_rounds - 1}" / f, tmp)
    if figure:
        _, first = read_proposals(pseudo_dir)
        ids = [im["id"] for im in pseudo_coco(dataset, first, score_thr=fcfg["pseudo_score_thr"],
                                              max_per_image=int(fcfg["max_pseudo_per_image"]))["images"]][:3]
        sub = {**dataset, "images": [im for im in dataset["images"] if im["id"] in ids]}
        preds = predict(work_dir, sub, score_thr=float(fcfg["self_training_score_thr"]),
                        pre_nms=int(fcfg["pre_nms"]), device=device)
        pseudo_vs_model_figure(sub, [r for r in first if r["image_id"] in ids], preds, figure,
                               title_left=f"pseudo-masks ({index.get('method', '?')})",
                               title_right=f"FreeSOLO after {n_rounds - 1} self-training round(s), score >= "
                                           f"{fcfg['self_training_score_thr']}")
        run.log_artifact(figure)
    last = metrics["rounds"][-1]
    metrics.update({k: last[k] for k in last if k.startswith("loss") or k in ("iterations",)})
    metrics["final_pseudo_masks"] = last["pseudo_masks"]
    return metrics


def predict_dataset(model_dir: str | Path, dataset: dict, fcfg: dict, device: str = "cpu") -> list[dict]:
    """Proposal records of a trained FreeSOLO (``train-freesolo`` work dir) on ``dataset``."""
    from longtail.proposals.inference import predict_dataset as predict

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).exists():
        raise LongtailError(f"{model_dir / MODEL_FILE} not found; run `longtail train-freesolo --work-dir {model_dir}` "
                            f"first (or pass --model-dir)")
    import longtail.proposals.annotation_free.freesolo_head  # noqa: F401  (registers FreeSOLO in mmdet)

    return predict(model_dir, dataset, score_thr=float(fcfg["score_thr"]), pre_nms=int(fcfg["pre_nms"]),
                   device=device)


def pseudo_vs_model_figure(dataset: dict, pseudo: list[dict], predicted: list[dict], out: str | Path, *,
                           title_left: str = "pseudo-masks", title_right: str = "FreeSOLO", per_image: int = 10
                           ) -> Path:
    """Report picture: the same images with their pseudo-masks (left) and the trained model's masks (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from longtail.proposals.annotation_free import image_path
    from longtail.proposals.annotation_free.backbone import load_image
    from longtail.common.masks import decode_mask

    def overlay(img, recs, seed):
        rng = np.random.default_rng(seed)
        out = img.astype(float) / 255.0
        for r in sorted(recs, key=lambda r: -r["score"])[:per_image][::-1]:
            m = decode_mask(r["segmentation"])
            if m.shape == out.shape[:2]:
                out[m] = 0.45 * out[m] + 0.55 * rng.random(3)
        return out

    images = dataset["images"]
    fig, axes = plt.subplots(len(images), 2, figsize=(8, 3.2 * len(images)), squeeze=False)
    for row, im in zip(axes, images):
        img = load_image(image_path(im["file_name"]))
        for ax, recs, name in ((row[0], pseudo, title_left), (row[1], predicted, title_right)):
            mine = [r for r in recs if int(r["image_id"]) == int(im["id"])]
            ax.imshow(overlay(img, mine, int(im["id"])))
            ax.set_title(f"{name}: {len(mine)} masks", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out
