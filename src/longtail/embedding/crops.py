"""The three crops of a mask proposal (Weng et al. 2021, 3.2).

For proposal j with box B_j and mask M_j:

* ``full``  x_j,full: the whole box B_j,
* ``fg``    x_j,fg:   the box with everything outside M_j blanked (the segmented object),
* ``bg``    x_j,bg:   the box with M_j blanked (box minus mask).

Each crop is resized to ``size`` x ``size`` (aspect ratio not kept, like RoIAlign) and stored as uint8;
blanked pixels get the ImageNet mean colour so that they become 0 after normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from longtail.common.params import project_root
from longtail.common.errors import LongtailError
from longtail.common.masks import decode_mask

CROP_KINDS = ("full", "fg", "bg")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MEAN_U8 = np.round(MEAN * 255).astype(np.uint8)


def resolve_image(file_name: str, source: str = "") -> Path:
    """An image path of the shared formats (relative to the repo root, or absolute)."""
    p = Path(file_name)
    for cand in (p, Path.cwd() / p, project_root() / p):
        if cand.exists():
            return cand
    raise LongtailError(f"{source or 'image'}: image file {file_name} not found (paths are relative to the repo "
                        f"root); pull the data with `dvc pull` or rerun `longtail prepare`.")


def load_image(file_name: str, source: str = "") -> np.ndarray:
    """HxWx3 uint8 RGB."""
    from PIL import Image

    path = resolve_image(file_name, source)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise LongtailError(f"{source or 'image'}: cannot read image {path} ({e}); replace or remove it.") from e


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), exclusive end, of a binary mask; None if the mask is empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if len(ys) == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _resize(patch: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> 3xSxS uint8, bilinear with antialiasing (PIL)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(patch)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


def mask_crops(image: np.ndarray, mask: np.ndarray, size: int,
               kinds: Sequence[str] = CROP_KINDS) -> np.ndarray | None:
    """(len(kinds), 3, size, size) uint8 crops of one mask, or None for an empty mask.

    The box is the mask's tight box (the proposal's own bbox can be looser after RLE rounding).
    """
    if mask.shape != image.shape[:2]:
        raise LongtailError(f"mask of shape {mask.shape} does not match its image {image.shape[:2]}; "
                            f"the proposal set was made for different images - rerun `longtail propose`.")
    box = mask_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    patch = image[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1, None]
    out = []
    for kind in kinds:
        if kind == "full":
            p = patch
        elif kind == "fg":
            p = np.where(m, patch, MEAN_U8)
        elif kind == "bg":
            p = np.where(m, MEAN_U8, patch)
        else:
            raise ValueError(f"unknown crop kind {kind!r}")
        out.append(_resize(p, size))
    return np.stack(out)


def crops_for_records(records: Sequence[dict], images: dict[int, dict], size: int,
                      kinds: Sequence[str] = CROP_KINDS, source: str = "",
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Crops of many proposal records (COCO results with RLE ``segmentation``), image by image.

    ``images`` maps image id -> {"file_name", "height", "width"}. Returns ``(crops, valid)`` with crops
    (N, len(kinds), 3, size, size) uint8 and ``valid`` (N,) bool (False for an empty mask).
    """
    from tqdm import tqdm

    crops = np.zeros((len(records), len(kinds), 3, size, size), dtype=np.uint8)
    valid = np.zeros(len(records), dtype=bool)
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_image.setdefault(int(r["image_id"]), []).append(i)
    for image_id, idx in tqdm(by_image.items(), desc=f"crops {source}".strip(), unit="img", disable=not progress):
        if image_id not in images:
            raise LongtailError(f"{source}: image_id {image_id} of a proposal is not in the image list; "
                                f"the proposal set and its index.json disagree - rerun `longtail propose`.")
        image = load_image(images[image_id]["file_name"], source)
        for i in idx:
            c = mask_crops(image, decode_mask(records[i]["segmentation"]), size, kinds)
            if c is not None:
                crops[i] = c
                valid[i] = True
    return crops, valid


def to_input(crops_u8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> normalised float32 network input."""
    t = torch.as_tensor(crops_u8).float().div_(255.0)
    mean = torch.from_numpy(MEAN).view(3, 1, 1)
    std = torch.from_numpy(STD).view(3, 1, 1)
    return (t - mean) / std
