"""Image lists and loading for the hierarchy stage (COCO JSON of `longtail prepare` or a folder)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class ImageItem:
    key: str          # output file stem (unique within a set)
    path: Path        # image file
    image_id: int | None = None


def load_rgb(path: str | os.PathLike, min_size: int = 32) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grayscale / RGBA / palette images are converted. Bad files raise LongtailError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise LongtailError(f"image {path} not found; fix the path (COCO file_name is relative to the repo root)")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            arr = np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LongtailError(f"image {path} is unreadable ({e}); replace or remove it") from e
    if min(arr.shape[:2]) < min_size:
        raise LongtailError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} px, under the minimum of {min_size} px "
                            f"per side (hierarchy.min_image_size); remove it from the image set")
    return arr


def list_images(images: str | os.PathLike | None = None, coco: str | os.PathLike | None = None,
                root: str | os.PathLike | None = None, max_images: int | None = None) -> list[ImageItem]:
    """Images of a folder (sorted) or of a COCO JSON (``file_name`` relative to ``root``, default the repo root)."""
    from longtail.common.params import project_root

    root = Path(root) if root is not None else project_root()
    items: list[ImageItem] = []
    if coco:
        from longtail.common.io import read_json

        data = read_json(coco, what="COCO dataset JSON")
        if not isinstance(data, dict) or "images" not in data:
            raise LongtailError(f"{coco}: no 'images' list; expected a COCO instances JSON from `longtail prepare`")
        for im in sorted(data["images"], key=lambda r: r.get("id", 0)):
            if "file_name" not in im:
                raise LongtailError(f"{coco}: image entry {im.get('id')} has no file_name")
            p = root / im["file_name"]
            items.append(ImageItem(f"{int(im['id']):012d}" if "id" in im else p.stem, p, im.get("id")))
    elif images:
        d = Path(images)
        if not d.is_dir():
            raise LongtailError(f"image folder {d} not found")
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                items.append(ImageItem(p.stem, p))
        if not items:
            raise LongtailError(f"image folder {d} has no images ({', '.join(IMAGE_EXTS)})")
    else:
        raise LongtailError("give --images DIR or --coco JSON")
    if max_images:
        items = items[:max_images]
    return items
