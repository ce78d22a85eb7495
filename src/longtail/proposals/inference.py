"""Inference of a trained proposal network (``train-proposals`` work dir) -> proposal records."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.common.params import project_path
from longtail.common.errors import LongtailError
from longtail.common.masks import encode_mask
from longtail.proposals.format import make_record
from longtail.proposals.runner import CONFIG_FILE, MODEL_FILE, own_checkpoints

log = logging.getLogger(__name__)


def load_model(model_dir: str | Path, device: str = "cpu", max_per_img: int | None = None):
    """The trained network of a ``train-proposals`` work dir; ``max_per_img`` caps the network's outputs per
    image (Mask R-CNN: boxes that get a mask; SOLOv2: masks after matrix NMS) before our mask NMS + top-K."""
    model_dir = Path(model_dir)
    for f in (CONFIG_FILE, MODEL_FILE):
        if not (model_dir / f).exists():
            raise LongtailError(f"{model_dir / f} missing: checkpoint not found; run `longtail train-proposals` "
                                f"with --work-dir {model_dir} first")
    from mmdet.apis import init_detector
    from mmengine.config import Config

    cfg = Config.fromfile(str(model_dir / CONFIG_FILE))
    if max_per_img is not None:
        tc = cfg.model.get("test_cfg") or {}
        if "rcnn" in tc:
            tc["rcnn"]["max_per_img"] = int(max_per_img)
        elif "max_per_img" in tc:
            tc["max_per_img"] = int(max_per_img)
    with own_checkpoints():
        return init_detector(cfg, str(model_dir / MODEL_FILE), device=device)


def image_path(im: dict) -> Path:
    p = project_path(im["file_name"])
    if not p.exists():
        raise LongtailError(f"image {im['id']}: file {p} not found; file_name must be relative to the repo root "
                            f"(run `longtail prepare` / `dvc pull data`)")
    return p


def predict_image(model, im: dict, *, score_thr: float = 0.0, pre_nms: int = 200) -> list[dict]:
    from mmdet.apis import inference_detector

    res = inference_detector(model, str(image_path(im)))
    inst = res.pred_instances
    if len(inst) == 0:
        return []
    scores = inst.scores.detach().cpu().numpy()
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_thr][:pre_nms]
    masks = inst.masks.detach().cpu().numpy()
    recs = []
    for i in order:
        m = masks[i].astype(bool)
        if m.shape != (int(im["height"]), int(im["width"])):
            raise LongtailError(f"image {im['id']}: predicted mask {m.shape} differs from the dataset's size "
                                f"{(im['height'], im['width'])}; fix height/width in the dataset JSON")
        if not m.any():
            continue
        recs.append(make_record(im["id"], encode_mask(m), float(scores[i])))
    return recs


def iter_predictions(model_dir: str | Path, images: list[dict], *, score_thr: float = 0.0, pre_nms: int = 200,
                     device: str = "cpu"):
    """(image, records) of a trained network, one image at a time (the model is loaded once)."""
    model = load_model(model_dir, device, max_per_img=pre_nms)
    for im in tqdm(images, desc=f"propose {Path(model_dir).name}", unit="img"):
        yield im, predict_image(model, im, score_thr=score_thr, pre_nms=pre_nms)


def predict_dataset(model_dir: str | Path, dataset: dict, *, score_thr: float = 0.0, pre_nms: int = 200,
                    device: str = "cpu") -> list[dict]:
    """Every record of ``dataset``'s images in a list (small sets; ``propose`` streams :func:`iter_predictions`)."""
    return [r for _, recs in iter_predictions(model_dir, dataset["images"], score_thr=score_thr, pre_nms=pre_nms,
                                              device=device) for r in recs]
