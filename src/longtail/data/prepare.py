"""Build the pipeline's dataset from the raw data (COCO instances, COCO panoptic, LVIS) with a base/novel split.

* instances sources are read as they are (polygons / RLE); panoptic sources are converted to instances for
  the "thing" categories (one RLE mask per segment, id = R + 256 G + 256^2 B in the PNG).
* Images are merged per split and de-duplicated by image id (the first source listing an image wins).
* Every image is validated (exists, decodes, size as declared, not tiny) and every annotation (non-empty
  segmentation, area > 0, box inside the image); bad input is skipped and counted, or fails, by
  ``on_bad_input``.
* base = the configured category names (default: the 20 PASCAL VOC classes), novel = the other things.
* With an ``lvis`` source (v0.5 or v1, :mod:`longtail.data.lvis`) the label space is LVIS's (the COCO -> LVIS
  protocol of Weng et al. 2021, Table 1): train.json / val.json are the lvis sources of their split (anchors
  from LVIS train, evaluation on LVIS val), train_base.json (the proposal networks) the instances / panoptic
  sources of the train split mapped into LVIS ids through the synsets and cut to the base categories.
* ``disjoint_images``: no image of val.json stays in train.json or train_base.json (LVIS v1 val images come
  from COCO train2017 and val2017); overlapping images are dropped and counted (``on_bad_input: skip``) or
  fail; false keeps them (counted too).
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
from longtail.data.lvis import (LVIS_IMAGE_KEYS, LabelSpace, category_counts, image_folders, image_key,
                                resolve_image)
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


def build_split(sources: list[dict], cfg: dict, space: LabelSpace, counter: BadInputCounter,
                root: Path, progress: bool = True) -> tuple[dict, dict]:
    """Merge the sources of one split into the label space; returns (coco dict, counts)."""
    images: dict[int, dict] = {}
    anns: list[dict] = []
    duplicates = unmapped = 0
    for src in sources:
        ann_path = root / src["annotations"]
        where = f"data.sources[{src['name']}/{src['split']}]"
        raw = _load_json(ann_path, f"annotation file of source {src['name']}/{src['split']}")
        for key in ("images", "annotations", "categories"):
            if key not in raw:
                raise LongtailError(f"{ann_path} has no '{key}' list: not a COCO {src['format']} file")
        id_map = space.id_map(src, raw, ann_path)
        thing_ids = {c["id"] for c in space.categories} if id_map is None else set(id_map)
        raw_ids = {c["id"] for c in raw["categories"]}
        if src["format"] == "panoptic":
            if "panoptic_masks" not in src:
                raise LongtailError(f"{where}: panoptic sources need 'panoptic_masks' (the folder of PNGs)")
            pan_ids = thing_ids if id_map is None else {c["id"] for c in raw["categories"] if c.get("isthing", 1)}
            src_anns = panoptic_to_instances(raw, root / src["panoptic_masks"], pan_ids, counter, progress)
        else:
            src_anns = raw["annotations"]
        folders = [root / f for f in image_folders(src)]
        new_ids = set()
        looked_up = not_found = 0
        for im in raw["images"]:
            if im["id"] in images:
                duplicates += 1
                continue
            looked_up += 1
            path = resolve_image(im, folders)
            if path is None:
                not_found += 1
                key = image_key(im)
                counter.bad("image", f"{ann_path}: image {im['id']} ({key}: {im[key]}) is not in {where}.images "
                                     f"({', '.join(str(f) for f in folders)})")
                continue
            why = check_image(path, im["height"], im["width"], cfg["min_image_size"])
            if why:
                counter.bad("image", why)
                continue
            rec = {"id": im["id"], "file_name": str(path.relative_to(root)) if path.is_relative_to(
                root) else str(path), "height": im["height"], "width": im["width"], "source": src["name"]}
            if space.kind == "lvis":   # federated ground truth: what LVISEval needs of every image
                if im.get("coco_url"):
                    rec["coco_url"] = im["coco_url"]
                rec.update({k: list(im.get(k, [])) for k in LVIS_IMAGE_KEYS})
            images[im["id"]] = rec
            new_ids.add(im["id"])
        if looked_up and not_found == looked_up:
            raise LongtailError(f"{ann_path}: none of its {looked_up} images is in {where}.images "
                                f"({', '.join(str(f) for f in folders)}), looked up by the file name of "
                                f"'{image_key(raw['images'][0])}'; set {where}.images to the COCO image folder(s) "
                                f"(LVIS v1 val: train2017 and val2017)")
        for a in src_anns:
            if a["image_id"] not in new_ids:
                continue
            if a["category_id"] not in thing_ids:
                unmapped += id_map is not None and a["category_id"] in raw_ids
                continue
            im = images[a["image_id"]]
            why = check_annotation(a, im["height"], im["width"], cfg["box_tolerance"])
            if why:
                counter.bad("annotation", f"{ann_path}: annotation {a.get('id', '?')} of image {a['image_id']}: "
                                          f"{why}")
                continue
            anns.append({"image_id": a["image_id"],
                         "category_id": a["category_id"] if id_map is None else id_map[a["category_id"]],
                         **{k: a[k] for k in ("segmentation", "area", "bbox")}, "iscrowd": int(a.get("iscrowd", 0))})
    if unmapped:
        log.warning("%d annotations of COCO categories without an LVIS category of their synset (%s) left out",
                    unmapped, cfg["synsets"])
    anns.sort(key=lambda a: (a["image_id"], a["category_id"], a["bbox"]))
    for i, a in enumerate(anns, 1):
        a["id"] = i
    coco = {"info": {"description": "longtail dataset", "label_space": space.kind,
                     "sources": [s["name"] for s in sources]},
            "images": sorted(images.values(), key=lambda im: im["id"]), "annotations": anns,
            "categories": space.categories}
    extra = {"duplicate_images": duplicates}
    if space.kind == "lvis":
        extra["unmapped_annotations"] = unmapped
    return coco, extra


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


def output_sources(sources: list[dict], kind: str) -> dict[str, list[dict]]:
    """Which sources make which output file (see the module docstring)."""
    by_split = {}
    for split in ("train", "val"):
        by_split[split] = [s for s in sources if s["split"] == split]
        if not by_split[split]:
            raise LongtailError(f"data.sources has no source with split: {split}")
    if kind == "coco":
        return by_split
    plan = {}
    for split, srcs in by_split.items():
        lv = [s for s in srcs if s["format"] == "lvis"]
        co = [s for s in srcs if s["format"] != "lvis"]
        if split == "val" and lv and co:
            raise LongtailError("data.sources: the val split mixes lvis and instances/panoptic sources; with an "
                                "lvis source val.json is the LVIS evaluation set alone: remove the others")
        plan[split] = lv or co
        if split == "train" and lv and co:
            plan["train_base"] = co
    return plan


def exclude_eval_images(out: dict[str, dict], plan: dict[str, list[dict]], cfg: dict, root: Path) -> dict:
    """Drop the images of val.json from train.json and train_base.json (``data.disjoint_images``); counts."""
    eval_ids = {im["id"] for im in out["val"]["images"]}
    res: dict = {"enabled": bool(cfg["disjoint_images"]), "eval_images": len(eval_ids)}
    for name in ("train", "train_base"):
        coco = out[name]
        overlap = sorted({im["id"] for im in coco["images"]} & eval_ids)
        r = {"overlap_images": len(overlap), "removed_images": 0, "removed_annotations": 0}
        if overlap and cfg["disjoint_images"]:
            drop = set(overlap)
            srcs = {im["source"] for im in coco["images"] if im["id"] in drop}
            files = sorted({str(root / s["annotations"]) for s in plan.get(name, plan["train"])
                            if s["name"] in srcs})
            evals = ", ".join(str(root / s["annotations"]) for s in plan["val"])
            what = (f"{len(overlap)} images of the evaluation set ({evals}) are also in {name}.json (from "
                    f"{', '.join(files)}; e.g. image ids {overlap[:5]})")
            if cfg["on_bad_input"] == "fail":
                raise LongtailError(f"{what}, and data.disjoint_images is true. Set data.on_bad_input: skip "
                                    f"to drop them from {name}.json (counted in metrics.json), or "
                                    f"data.disjoint_images: false to keep them.")
            log.warning("%s: dropped from %s.json (data.disjoint_images)", what, name)
            n_ann = len(coco["annotations"])
            out[name] = coco = {**coco, "images": [im for im in coco["images"] if im["id"] not in drop],
                                "annotations": [a for a in coco["annotations"] if a["image_id"] not in drop]}
            r.update(removed_images=len(drop), removed_annotations=n_ann - len(coco["annotations"]))
            if not coco["images"]:
                raise LongtailError(f"{name}.json: no image left once the evaluation images are dropped "
                                    f"(data.disjoint_images)")
        res[name] = r
    return res


def categories_summary(datasets: dict[str, dict]) -> dict:
    """categories.json: the base / novel ids, the counts of the label space, every category."""
    cats = datasets["train"]["categories"]
    return {"label_space": datasets["train"]["info"]["label_space"],
            "base": [c["id"] for c in cats if c["split"] == "base"],
            "novel": [c["id"] for c in cats if c["split"] == "novel"],
            "counts": category_counts(cats, datasets["train"]), "categories": cats}


def prepare(cfg: dict, root: Path, progress: bool = True) -> tuple[dict[str, dict], dict]:
    """Return ({"train": coco, "val": coco, "train_base": coco}, metrics)."""
    sources = cfg["sources"]
    space = LabelSpace(cfg, root, _load_json)
    if space.kind == "coco":
        inst = [s for s in sources if s["format"] == "instances"]
        first = inst[0] if inst else sources[0]
        raw_cats = _load_json(root / first["annotations"], f"annotation file of source {first['name']}")["categories"]
        raw_cats = [c for c in raw_cats if c.get("isthing", 1) == 1]
        space.categories = split_categories(raw_cats, cfg["base_categories"])
    plan = output_sources(sources, space.kind)
    counter = BadInputCounter(cfg["on_bad_input"])
    out: dict[str, dict] = {}
    metrics: dict = {"label_space": space.kind}
    # lvis outputs first: the first lvis file read sets the categories the mapped COCO sources need
    for name in sorted(plan, key=lambda n: not any(s["format"] == "lvis" for s in plan[n])):
        n_img, n_ann = len(counter.images), len(counter.annotations)
        coco, extra = build_split(plan[name], cfg, space, counter, root, progress)
        if not coco["images"]:
            raise LongtailError(f"{name}.json: no usable image left (see the warnings above)")
        out[name] = coco
        metrics[name] = {**extra, "skipped_images": len(counter.images) - n_img,
                         "skipped_annotations": len(counter.annotations) - n_ann}
    categories = space.categories
    base_ids = {c["id"] for c in categories if c["split"] == "base"}
    tb = dict(out.get("train_base", out["train"]))
    tb["annotations"] = [a for a in tb["annotations"] if a["category_id"] in base_ids]
    tb["info"] = {**tb["info"], "description": f"{'+'.join(tb['info']['sources'])}, base annotations only (for "
                                               f"proposal networks)"}
    out["train_base"] = tb
    metrics.setdefault("train_base", {})
    metrics["disjoint_images"] = exclude_eval_images(out, plan, cfg, root)
    for name in ("train", "val", "train_base"):
        metrics[name] = {**split_counts(out[name]), **metrics[name]}
    metrics["num_base_categories"] = len(base_ids)
    metrics["num_novel_categories"] = len(categories) - len(base_ids)
    metrics["categories"] = {k: v for k, v in category_counts(categories, out["train"]).items()
                             if not k.endswith("_ids")}
    metrics["skipped"] = {"images": counter.images, "annotations": counter.annotations}
    return out, metrics
