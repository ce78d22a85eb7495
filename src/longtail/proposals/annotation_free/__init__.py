"""Annotation-free mask proposals: UCM regions, Free Mask, multi-k spectral masks, FreeSOLO.

``propose_dataset(method, dataset, cfg, seed, run, split=..., model_dir=..., device=...)`` is called by
``longtail propose --method ucm|freemask|spectral|solov2-free`` (longtail.proposals.cli), which then applies
top-K mask NMS and writes the shared proposal format.
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


def propose_dataset(method: str, dataset: dict, cfg: dict, seed: int, run=None, *, split: str = "",
                    model_dir: str | Path | None = None, device: str = "cpu") -> tuple[list[dict], list[int]]:
    """Annotation-free proposals of every image of a COCO ``dataset``.

    ``cfg``: the ``annotation_free`` section of params.yaml; ``seed``: params ``seed``; ``run``: a
    :class:`~longtail.common.tracking.StageRun` for the counts (or None). ``split``: the image set (``train``,
    ``val``): ``ucm`` reads the region trees of ``<tree_dir>/<split>/`` when that folder exists, else of
    ``<tree_dir>/`` itself. ``model_dir`` / ``device``: the FreeSOLO model of ``solov2-free`` (default
    ``annotation_free.freesolo.work_dir``) and where it predicts.

    Returns (proposal records (``longtail.proposals.format.make_record``), ids of the images the method could not
    run on: ``ucm`` images without a region tree when ``annotation_free.ucm.missing_tree: skip``).
    """
    images = _check_dataset(dataset)
    if method == "solov2-free":
        return _freesolo_records(dataset, images, cfg["freesolo"], run, model_dir or cfg["freesolo"]["work_dir"],
                                 device), []
    if method not in METHODS:
        raise LongtailError(f"annotation-free method {method!r} unknown; use one of {', '.join(METHODS)}")
    backbone = None if method == "ucm" else _feature_backbone(cfg, seed)
    t0 = time.perf_counter()
    if method == "ucm":
        records, missing, tree_dirs = _ucm_records(images, cfg["ucm"], split)
    else:
        records, missing = _feature_records(method, images, cfg, seed, backbone), []
    _log_counts(run, method, records, len(images), (time.perf_counter() - t0) / len(images))
    if missing:
        log.warning("ucm: %d of %d images have no region tree in %s (no proposals for them), e.g. %s",
                    len(missing), len(images), " or ".join(map(str, tree_dirs)), missing[0])
        if run is not None:
            run.log_metrics({"annotation_free.ucm.images_without_tree": len(missing)})
        if len(missing) == len(images):
            raise LongtailError(f"propose --method ucm: none of the {len(images)} images has a region tree in "
                                f"{' or '.join(map(str, tree_dirs))}; run `longtail ucm` on this image set first.")
    if not records:
        raise LongtailError(f"propose --method {method}: no proposal on any of the {len(images)} images; check "
                            f"annotation_free.{method.replace('-', '_')} thresholds and the backbone/UCM inputs.")
    missing_set = set(missing)
    return records, sorted(int(im["id"]) for im in images if im["file_name"] in missing_set)


def _freesolo_records(dataset: dict, images: list[dict], fcfg: dict, run, model_dir, device: str) -> list[dict]:
    from longtail.proposals.annotation_free.freesolo import predict_dataset

    records = predict_dataset(model_dir, dataset, fcfg, device=device)
    _log_counts(run, "solov2-free", records, len(images), None)
    if not records:
        raise LongtailError(f"propose --method solov2-free: the model in {model_dir} predicts no mask with score >= "
                            f"annotation_free.freesolo.score_thr on any of the {len(images)} images; train longer "
                            f"(annotation_free.freesolo.train.max_iters) or lower the threshold.")
    return records


def _load_checked(im: dict) -> np.ndarray:
    """RGB of a dataset image, checked against the size the dataset gives."""
    from longtail.proposals.annotation_free.backbone import load_image

    rgb = load_image(image_path(im["file_name"]))
    if rgb.shape[:2] != (int(im["height"]), int(im["width"])):
        raise LongtailError(f"{im['file_name']}: image is {rgb.shape[1]}x{rgb.shape[0]} but the dataset says "
                            f"{im['width']}x{im['height']}; fix the dataset JSON.")
    return rgb


def _ucm_records(images: list[dict], uc: dict, split: str) -> tuple[list[dict], list[str], list[Path]]:
    """(records, file names of images without a region tree, the tree folders looked in) of ``ucm``."""
    from tqdm import tqdm

    from longtail.proposals.annotation_free.ucm import COLOR_TREES, load_tree, ucm_proposals
    from longtail.proposals.format import make_record

    def _dirs(root):   # <tree_dir>/<split>/ or <tree_dir>/ itself
        return [Path(root) / split, Path(root)] if split else [Path(root)]

    tree_dirs = _dirs(uc["tree_dir"])
    more_dirs = [_dirs(d) for d in uc["more_tree_dirs"]]
    records: list[dict] = []
    missing: list[str] = []
    for im in tqdm(images, desc="propose ucm", unit="img"):
        try:
            tree = load_tree(tree_dirs, im)
            more = [load_tree(d, im) for d in more_dirs]
        except LongtailError:
            if uc["missing_tree"] == "error":
                raise
            missing.append(im["file_name"])
            continue
        hw = (int(im["height"]), int(im["width"]))
        rgb = _load_checked(im) if set(uc["extra_trees"]) & set(COLOR_TREES) else None   # colour trees need it
        masks, scores = ucm_proposals(*tree, hw, image=rgb, more_trees=more, **_ucm_kwargs(uc))
        records += [make_record(im["id"], m, s) for m, s in zip(masks, scores)]
    return records, missing, tree_dirs


def _feature_backbone(cfg: dict, seed: int):
    """The frozen backbone of ``freemask`` / ``spectral`` (torch threads from ``annotation_free.threads``)."""
    from longtail.common.runtime import set_threads
    from longtail.proposals.annotation_free.backbone import build_backbone

    set_threads(cfg["threads"])
    return build_backbone(cfg["backbone"], seed)


def _feature_records(method: str, images: list[dict], cfg: dict, seed: int, backbone) -> list[dict]:
    """Records of the backbone-feature methods (``freemask``, ``spectral``)."""
    from tqdm import tqdm

    from longtail.proposals.format import make_record

    records: list[dict] = []
    for im in tqdm(images, desc=f"propose {method}", unit="img"):
        masks, scores, _ = feature_masks(method, _load_checked(im), backbone, cfg, seed, name=im["file_name"])
        records += [make_record(im["id"], m, s) for m, s in zip(masks, scores)]
    return records


def _ucm_kwargs(uc: dict) -> dict:
    keys = ("num_regions", "pairs", "triples", "extra_trees", "min_area_frac", "max_area_frac", "area_exp",
            "compact_exp", "border_exp", "nms_iou", "pre_nms", "max_masks", "fill_holes", "dilate_px")
    return {k: uc[k] for k in keys}


def _log_counts(run, method: str, records: list[dict], n_images: int, sec_per_image: float | None) -> None:
    m = {f"annotation_free.{method}.masks_per_image": len(records) / max(n_images, 1)}
    if sec_per_image is not None:
        m[f"annotation_free.{method}.seconds_per_image"] = sec_per_image
    log.info("%s: %s", method, m)
    if run is not None:
        run.log_metrics(m)


__all__ = ["METHODS", "feature_masks", "propose_dataset"]
