"""Annotation-free mask proposals: UCM regions, Free Mask, multi-k spectral masks, FreeSOLO.

``propose_images(method, images, cfg, seed, split=..., model_dir=..., device=...)`` yields each image's masks to
``longtail propose --method ucm|freemask|spectral|solov2-free`` (longtail.proposals.cli), which applies top-K
mask NMS and appends them to the proposal store; ``propose_dataset`` is its list form.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError
from longtail.common.params import annotation_free_methods, project_root

log = logging.getLogger(__name__)

METHODS = annotation_free_methods()   # ucm, freemask, spectral, solov2-free: the schema's pipeline.annotation_free enum


def image_path(file_name: str) -> Path:
    """Dataset file_name (relative to the repo root, or absolute) -> existing path if possible."""
    p = Path(file_name)
    if p.is_absolute() or p.exists():
        return p
    return project_root() / p


def _check_dataset(dataset: dict) -> list[dict]:
    images = dataset.get("images") if isinstance(dataset, dict) else None
    if not images:
        raise LongtailError("propose: the dataset has no images; check the --dataset JSON (COCO format, "
                            "from `longtail prepare`).")
    for im in images:
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise LongtailError(f"propose: dataset image {im.get('id', '?')} has no '{key}'; the dataset must be "
                                    f"COCO format as written by `longtail prepare`.")
    return images


def feature_masks(method: str, image: np.ndarray, backbone, cfg: dict, seed: int, name: str = "image"):
    """Run Free Mask or spectral masks on one RGB image; masks at the image's own size.

    Returns (masks (n, H, W) bool, scores (n,), extra dict).
    """
    from longtail.proposals.annotation_free.backbone import downsample_features, resize_short_side

    icfg = cfg["image"]
    small = resize_short_side(image, icfg["short_side"], icfg["max_side"])
    feat = backbone.features(small)
    out_hw = image.shape[:2]
    if method == "freemask":
        from longtail.proposals.annotation_free.freemask import free_mask

        fc = cfg["freemask"]
        feat = downsample_features(feat, fc["feature_pool"])
        r = free_mask(feat, out_hw, scales=fc["scales"], tau=fc["tau"], maskness_thr=fc["maskness_thr"],
                      nms_pre=fc["nms_pre"], nms_kernel=fc["nms_kernel"], nms_sigma=fc["nms_sigma"],
                      max_masks=fc["max_masks"], min_area=int(fc["min_area_frac"] * out_hw[0] * out_hw[1]),
                      image_name=name)
        return r.masks, r.scores, {"queries": r.queries, "num_queries": r.num_queries}
    if method == "spectral":
        from longtail.proposals.annotation_free.spectral import spectral_masks

        sc = cfg["spectral"]
        feat = downsample_features(feat, sc["feature_pool"])
        r = spectral_masks(feat, out_hw, ks=sc["ks"], saliency_thr=sc["saliency_thr"], nms_iou=sc["nms_iou"],
                           min_area=int(sc["min_area_frac"] * out_hw[0] * out_hw[1]), split=sc["split_components"],
                           seed=seed)
        return r.masks, r.scores, {"saliency": r.saliency, "ks": r.ks}
    raise LongtailError(f"unknown feature method {method!r}")


def propose_images(method: str, images: list[dict], cfg: dict, seed: int, *, split: str = "",
                   model_dir: str | Path | None = None, device: str = "cpu"):
    """Annotation-free proposals, one image at a time: yields ``(image, records)`` in the order of ``images``;
    ``records`` is None for an image the method could not run on (``ucm`` without a region tree when
    ``annotation_free.ucm.missing_tree: skip``).

    ``cfg``: the ``annotation_free`` section of params.yaml; ``seed``: params ``seed``; ``split``: the image set
    (``train``, ``val``): ``ucm`` reads the region trees of ``<tree_dir>/<split>/`` when that folder exists, else of
    ``<tree_dir>/`` itself. ``model_dir`` / ``device``: the FreeSOLO model of ``solov2-free`` (default
    ``annotation_free.freesolo.work_dir``) and where it predicts. Memory: one image's masks.
    """
    images = _check_dataset({"images": images})
    if method == "solov2-free":
        from longtail.proposals.inference import iter_predictions
        from longtail.proposals.runner import MODEL_FILE

        fcfg, model_dir = cfg["freesolo"], Path(model_dir or cfg["freesolo"]["work_dir"])
        if not (model_dir / MODEL_FILE).exists():
            raise LongtailError(f"{model_dir / MODEL_FILE} not found; run `longtail train-freesolo --work-dir "
                                f"{model_dir}` first (or pass --model-dir)")
        import longtail.proposals.annotation_free.freesolo_head  # noqa: F401  (registers FreeSOLO in mmdet)

        yield from iter_predictions(model_dir, images, score_thr=float(fcfg["score_thr"]),
                                    pre_nms=int(fcfg["pre_nms"]), device=device)
        return
    if method not in METHODS:
        raise LongtailError(f"annotation-free method {method!r} unknown; use one of {', '.join(METHODS)}")
    if method == "ucm":
        yield from _ucm_records(images, cfg["ucm"], split)
        return
    from tqdm import tqdm

    from longtail.proposals.format import make_record

    backbone = _feature_backbone(cfg, seed)
    for im in tqdm(images, desc=f"propose {method}", unit="img"):
        masks, scores, _ = feature_masks(method, _load_checked(im), backbone, cfg, seed, name=im["file_name"])
        yield im, [make_record(im["id"], m, s) for m, s in zip(masks, scores)]


def check_counts(method: str, cfg: dict, run, *, images: int, proposals: int, skipped: int, seconds: float,
                 split: str = "") -> None:
    """Counts of :func:`propose_images` over a run (``run``: a :class:`~longtail.common.tracking.StageRun` or None):
    logged; an error when no image had a proposal, or (``ucm``) no image had a region tree."""
    _log_counts(run, method, proposals, images, seconds / max(images, 1) if method != "solov2-free" else None)
    if skipped:
        dirs = " or ".join(map(str, _tree_dirs(cfg["ucm"]["tree_dir"], split)))
        log.warning("ucm: %d of %d images have no region tree in %s (no proposals for them)", skipped, images, dirs)
        if run is not None:
            run.log_metrics({"annotation_free.ucm.images_without_tree": skipped})
        if skipped == images:
            raise LongtailError(f"propose --method ucm: none of the {images} images has a region tree in {dirs}; "
                                f"run `longtail ucm` on this image set first.")
    if images and not proposals:
        hint = (f"the model in {cfg['freesolo']['work_dir']} predicts no mask with score >= "
                f"annotation_free.freesolo.score_thr; train longer (annotation_free.freesolo.train.max_iters) or "
                f"lower the threshold" if method == "solov2-free" else
                f"check annotation_free.{method.replace('-', '_')} thresholds and the backbone/UCM inputs")
        raise LongtailError(f"propose --method {method}: no proposal on any of the {images} images; {hint}.")


def propose_dataset(method: str, dataset: dict, cfg: dict, seed: int, run=None, *, split: str = "",
                    model_dir: str | Path | None = None, device: str = "cpu") -> tuple[list[dict], list[int]]:
    """(records, ids of the images the method could not run on) of every image of a COCO ``dataset``: the list
    form of :func:`propose_images` (small sets); ``longtail propose`` streams :func:`propose_images`."""
    images = _check_dataset(dataset)
    t0 = time.perf_counter()
    records: list[dict] = []
    skipped: list[int] = []
    for im, recs in propose_images(method, images, cfg, seed, split=split, model_dir=model_dir, device=device):
        if recs is None:
            skipped.append(int(im["id"]))
        else:
            records += recs
    check_counts(method, cfg, run, images=len(images), proposals=len(records), skipped=len(skipped),
                 seconds=time.perf_counter() - t0, split=split)
    return records, sorted(skipped)


def _load_checked(im: dict) -> np.ndarray:
    """RGB of a dataset image, checked against the size the dataset gives."""
    from longtail.proposals.annotation_free.backbone import load_image

    rgb = load_image(image_path(im["file_name"]))
    if rgb.shape[:2] != (int(im["height"]), int(im["width"])):
        raise LongtailError(f"{im['file_name']}: image is {rgb.shape[1]}x{rgb.shape[0]} but the dataset says "
                            f"{im['width']}x{im['height']}; fix the dataset JSON.")
    return rgb


def _tree_dirs(root, split: str) -> list[Path]:
    """<tree_dir>/<split>/ or <tree_dir>/ itself."""
    return [Path(root) / split, Path(root)] if split else [Path(root)]


def _ucm_records(images: list[dict], uc: dict, split: str):
    """(image, records or None without a region tree) of ``ucm``, per image."""
    from tqdm import tqdm

    from longtail.proposals.annotation_free.ucm import COLOR_TREES, load_tree, ucm_proposals
    from longtail.proposals.format import make_record

    tree_dirs = _tree_dirs(uc["tree_dir"], split)
    more_dirs = [_tree_dirs(d, split) for d in uc["more_tree_dirs"]]
    for im in tqdm(images, desc="propose ucm", unit="img"):
        try:
            tree = load_tree(tree_dirs, im)
            more = [load_tree(d, im) for d in more_dirs]
        except LongtailError:
            if uc["missing_tree"] == "error":
                raise
            yield im, None
            continue
        hw = (int(im["height"]), int(im["width"]))
        rgb = _load_checked(im) if set(uc["extra_trees"]) & set(COLOR_TREES) else None   # colour trees need it
        masks, scores = ucm_proposals(*tree, hw, image=rgb, more_trees=more, **_ucm_kwargs(uc))
        yield im, [make_record(im["id"], m, s) for m, s in zip(masks, scores)]


def _feature_backbone(cfg: dict, seed: int):
    """The frozen backbone of ``freemask`` / ``spectral`` (torch threads from ``annotation_free.threads``)."""
    from longtail.common.runtime import set_threads
    from longtail.proposals.annotation_free.backbone import build_backbone

    set_threads(cfg["threads"])
    return build_backbone(cfg["backbone"], seed)


def _ucm_kwargs(uc: dict) -> dict:
    keys = ("num_regions", "pairs", "triples", "extra_trees", "min_area_frac", "max_area_frac", "area_exp",
            "compact_exp", "border_exp", "nms_iou", "pre_nms", "max_masks", "fill_holes", "dilate_px")
    return {k: uc[k] for k in keys}


def _log_counts(run, method: str, proposals: int, n_images: int, sec_per_image: float | None) -> None:
    m = {f"annotation_free.{method}.masks_per_image": proposals / max(n_images, 1)}
    if sec_per_image is not None:
        m[f"annotation_free.{method}.seconds_per_image"] = sec_per_image
    log.info("%s: %s", method, m)
    if run is not None:
        run.log_metrics(m)


__all__ = ["METHODS", "check_counts", "feature_masks", "propose_dataset", "propose_images"]
