"""Build the pipeline's dataset from the raw sample (COCO instances + COCO panoptic) with a base/novel split.

* instances sources are read as they are (polygons / RLE); panoptic sources are converted to instances for
  the "thing" categories (one RLE mask per segment, id = R + 256 G + 256^2 B in the PNG).
* Images are merged per split and de-duplicated by image id (the first source listing an image wins).
* Every image is validated (exists, decodes, size as declared, not tiny) and every annotation (non-empty
  segmentation, area > 0, box inside the image); bad input is skipped and counted, or fails, by
  ``on_bad_input``.
* base = the configured category names (default: the 20 PASCAL VOC classes), novel = the other things.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from longtail.common.errors import LongtailError
from longtail.common.io import read_json
from longtail.common.masks import encode_mask, rle_for_pycocotools, to_rle

log = logging.getLogger(__name__)


@dataclass
class BadInputCounter:
    policy: str  # skip | fail
    images: list[str] = field(default_factory=list)
    annotations: list[str] = field(default_factory=list)

    def bad(self, kind: str, what: str) -> None:
        if self.policy == "fail":
            raise LongtailError(f"{what}. Fix or remove it, or set data.on_bad_input: skip in params.yaml.")
        log.warning("skipping bad %s: %s", kind, what)
        (self.images if kind == "image" else self.annotations).append(what)


def _load_json(path: Path, what: str) -> dict:
    return read_json(path, what, hint="Run `make data` (dvc pull) or fix data.sources in params.yaml.")


def check_image(path: Path, height: int, width: int, min_size: int) -> str | None:
    """None if the image is usable, else why not."""
    if not path.exists():
        return f"image file missing: {path}"
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
    except Exception as e:  # PIL raises many types for corrupt files
        return f"image file does not decode: {path} ({type(e).__name__}: {e})"
    if (h, w) != (height, width):
        return f"image {path} is {w}x{h} but its annotation file says {width}x{height}"
    if min(h, w) < min_size:
        return f"image {path} is {w}x{h}, smaller than data.min_image_size={min_size}"
    return None


def check_annotation(ann: dict, height: int, width: int, tol: float) -> str | None:
    seg = ann.get("segmentation")
    if not seg or (isinstance(seg, list) and not any(len(p) >= 6 for p in seg)):
        return "empty segmentation"
    try:
        area = float(mask_utils.area(to_rle(seg, height, width)))
    except LongtailError as e:  # malformed: the caller names the file and annotation, on_bad_input decides
        return str(e)
    if area <= 0 or ann.get("area", 0) <= 0:
        return f"area {ann.get('area', 0)} (mask area {area:.0f}) is not positive"
    x, y, w, h = ann["bbox"]
    if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"box {ann['bbox']} is not inside the {width}x{height} image"
    return None


def panoptic_to_instances(pan: dict, masks_dir: Path, thing_ids: set[int], counter: BadInputCounter,
                          progress: bool = True) -> list[dict]:
    """One instance annotation (RLE) per panoptic "thing" segment."""
    anns = []
    for pa in tqdm(pan["annotations"], desc=f"panoptic -> instances ({masks_dir.name})", disable=not progress):
        png = masks_dir / pa["file_name"]
        if not png.exists():
            counter.bad("image", f"panoptic mask missing: {png} (image {pa['image_id']})")
            continue
        rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.uint32)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        for seg in pa["segments_info"]:
            if seg["category_id"] not in thing_ids:
                continue
            m = ids == seg["id"]
            rle = encode_mask(m)
            anns.append({"image_id": pa["image_id"], "category_id": seg["category_id"], "segmentation": rle,
                         "area": float(m.sum()),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle_for_pycocotools(rle))],
                         "iscrowd": int(seg.get("iscrowd", 0))})
    return anns


def build_split(sources: list[dict], cfg: dict, categories: list[dict], counter: BadInputCounter,
                root: Path, progress: bool = True) -> tuple[dict, dict]:
    """Merge the sources of one split; returns (coco dict, counts)."""
    thing_ids = {c["id"] for c in categories}
    images: dict[int, dict] = {}
    anns: list[dict] = []
    duplicates = 0
    for src in sources:
        ann_path = root / src["annotations"]
        raw = _load_json(ann_path, f"annotation file of source {src['name']}/{src['split']}")
        for key in ("images", "annotations", "categories"):
            if key not in raw:
                raise LongtailError(f"{ann_path} has no '{key}' list: not a COCO {src['format']} file")
        if src["format"] == "panoptic":
            if "panoptic_masks" not in src:
                raise LongtailError(f"data.sources[{src['name']}/{src['split']}]: panoptic sources need "
                                    f"'panoptic_masks' (the folder of PNGs)")
            src_anns = panoptic_to_instances(raw, root / src["panoptic_masks"], thing_ids, counter, progress)
        else:
            src_anns = raw["annotations"]
        new_ids = set()
        for im in raw["images"]:
            if im["id"] in images:
                duplicates += 1
                continue
            path = root / src["images"] / Path(im["file_name"]).name
            why = check_image(path, im["height"], im["width"], cfg["min_image_size"])
            if why:
                counter.bad("image", why)
                continue
            images[im["id"]] = {"id": im["id"], "file_name": str(path.relative_to(root)) if path.is_relative_to(
                root) else str(path), "height": im["height"], "width": im["width"], "source": src["name"]}
            new_ids.add(im["id"])
        for a in src_anns:
            if a["image_id"] not in new_ids or a["category_id"] not in thing_ids:
                continue
            im = images[a["image_id"]]
            why = check_annotation(a, im["height"], im["width"], cfg["box_tolerance"])
            if why:
                counter.bad("annotation", f"{ann_path}: annotation {a.get('id', '?')} of image {a['image_id']}: "
                                          f"{why}")
                continue
            anns.append({k: a[k] for k in ("image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")})
    anns.sort(key=lambda a: (a["image_id"], a["category_id"], a["bbox"]))
    for i, a in enumerate(anns, 1):
        a["id"] = i
    coco = {"info": {"description": "longtail sample dataset", "sources": [s["name"] for s in sources]},
            "images": sorted(images.values(), key=lambda im: im["id"]), "annotations": anns,
            "categories": categories}
    return coco, {"duplicate_images": duplicates}


def split_categories(raw_categories: list[dict], base_names: list[str]) -> list[dict]:
    """COCO thing categories with "split": "base" | "novel"."""
    names = {c["name"] for c in raw_categories}
    unknown = [n for n in base_names if n not in names]
    if unknown:
        raise LongtailError(f"data.base_categories: {unknown} are not COCO category names "
                            f"(e.g. 'airplane', 'dining table', 'tv'); fix params.yaml")
    base = set(base_names)
    return [{"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""),
             "split": "base" if c["name"] in base else "novel"} for c in sorted(raw_categories, key=lambda c: c["id"])]


def split_counts(coco: dict) -> dict:
    split_of = {c["id"]: c["split"] for c in coco["categories"]}
    anns = coco["annotations"]
    return {
        "images": len(coco["images"]),
        "images_with_instances": len({a["image_id"] for a in anns}),
        "instances": len(anns),
        "base_instances": sum(split_of[a["category_id"]] == "base" for a in anns),
        "novel_instances": sum(split_of[a["category_id"]] == "novel" for a in anns),
        "base_categories_present": len({a["category_id"] for a in anns if split_of[a["category_id"]] == "base"}),
        "novel_categories_present": len({a["category_id"] for a in anns if split_of[a["category_id"]] == "novel"}),
    }


def prepare(cfg: dict, root: Path, progress: bool = True) -> tuple[dict[str, dict], dict]:
    """Return ({"train": coco, "val": coco, "train_base": coco}, metrics)."""
    sources = cfg["sources"]
    inst = [s for s in sources if s["format"] == "instances"]
    first = inst[0] if inst else sources[0]
    raw_cats = _load_json(root / first["annotations"], f"annotation file of source {first['name']}")["categories"]
    raw_cats = [c for c in raw_cats if c.get("isthing", 1) == 1]
    categories = split_categories(raw_cats, cfg["base_categories"])
    counter = BadInputCounter(cfg["on_bad_input"])
    out: dict[str, dict] = {}
    metrics: dict = {}
    for split in ("train", "val"):
        srcs = [s for s in sources if s["split"] == split]
        if not srcs:
            raise LongtailError(f"data.sources has no source with split: {split}")
        n_img, n_ann = len(counter.images), len(counter.annotations)
        coco, extra = build_split(srcs, cfg, categories, counter, root, progress)
        if not coco["images"]:
            raise LongtailError(f"split {split}: no usable image left (see the warnings above)")
        out[split] = coco
        metrics[split] = {**split_counts(coco), **extra, "skipped_images": len(counter.images) - n_img,
                          "skipped_annotations": len(counter.annotations) - n_ann}
    base_ids = {c["id"] for c in categories if c["split"] == "base"}
    tb = dict(out["train"])
    tb["annotations"] = [a for a in out["train"]["annotations"] if a["category_id"] in base_ids]
    tb["info"] = {**tb["info"], "description": "train, novel annotations removed (for proposal networks)"}
    out["train_base"] = tb
    metrics["num_base_categories"] = len(base_ids)
    metrics["num_novel_categories"] = len(categories) - len(base_ids)
    metrics["skipped"] = {"images": counter.images, "annotations": counter.annotations}
    return out, metrics
