"""Instance masks as COCO run-length encodings (RLE): the one module that converts between their forms.

A COCO ``segmentation`` comes in three forms:

* **polygons**: ``[[x1, y1, x2, y2, ...], ...]``, one object, possibly in several parts (ordinary annotations);
* **uncompressed RLE**: ``{"size": [h, w], "counts": [int, ...]}`` (COCO ``iscrowd`` annotations);
* **compressed RLE**: ``{"size": [h, w], "counts": <LEB128-like string>}`` (LVIS, panoptic conversions, every
  proposal this project writes). pycocotools' C functions (``area``, ``iou``, ``toBbox``, ``decode``) want the
  ``counts`` as ``bytes``; JSON can only hold ``str``. The two spellings are the same mask.

Everything in ``src/`` and ``benchmarks/`` converts through these functions; nothing else calls
``pycocotools.mask.frPyObjects`` or re-encodes ``counts`` by hand:

* :func:`to_rle`: any of the three forms -> compressed RLE ready for pycocotools (``bytes`` counts);
* :func:`rle_for_pycocotools` / :func:`rle_for_json`: the two spellings of a compressed RLE;
* :func:`encode_mask` / :func:`decode_mask`: a binary ``(H, W)`` array <-> compressed RLE.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from longtail.common.errors import LongtailError


def to_rle(segmentation, height: int, width: int, *, source: str = "segmentation") -> dict:
    """A COCO segmentation of any form -> one compressed RLE ``{"size": [h, w], "counts": bytes}``.

    ``segmentation`` is a polygon list (the parts are merged into one mask; an empty list is an empty
    ``height`` x ``width`` mask), an uncompressed RLE (``counts`` a list of run lengths) or a compressed RLE
    (``counts`` ``str`` or ``bytes``; returned as a copy with ``bytes`` counts, its ``size`` as given).
    ``height``/``width`` are the image's and only used for polygons and uncompressed RLE.
    The result goes straight into ``pycocotools.mask.area/iou/toBbox/decode``; :func:`rle_for_json` makes it
    JSON-safe. ``source`` names the annotation (and file) in the :class:`LongtailError` raised for
    anything that is not a segmentation, e.g. ``"annotation 42 in results/data/train.json"``.
    """
    try:
        if isinstance(segmentation, list):
            if not segmentation:
                return mask_utils.encode(np.zeros((height, width), np.uint8, order="F"))
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
    except Exception as e:  # pycocotools raises TypeError, ValueError or a bare Exception on bad input
        raise LongtailError(f"{source}: malformed segmentation ({type(e).__name__}: {e}); polygons must be "
                            f"lists of >= 6 numbers, RLE a dict with 'size' and 'counts'") from e
    if isinstance(segmentation, dict) and "size" in segmentation and isinstance(segmentation.get("counts"),
                                                                                (str, bytes)):
        return rle_for_pycocotools(segmentation)
    raise LongtailError(f"{source}: segmentation of type {type(segmentation).__name__} is neither polygons nor "
                        f"RLE (a dict with 'size' and 'counts')")


def rle_for_pycocotools(rle: dict) -> dict:
    """A copy of the compressed RLE ``rle`` with ``bytes`` counts, as pycocotools' C functions want it.

    Other keys are kept; ``rle`` itself is not modified. ``str`` counts are ASCII by construction.
    """
    out = dict(rle)
    if isinstance(out["counts"], str):
        out["counts"] = out["counts"].encode("ascii")
    return out


def rle_for_json(rle: dict) -> dict:
    """The compressed RLE ``rle`` as a new JSON-safe ``{"size": [h, w], "counts": str}`` (other keys dropped)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode_mask(mask: np.ndarray) -> dict:
    """A binary ``(H, W)`` mask (any dtype; nonzero is foreground) -> JSON-safe compressed RLE (``str`` counts)."""
    return rle_for_json(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def decode_mask(rle: dict) -> np.ndarray:
    """A compressed RLE (``str`` or ``bytes`` counts) -> ``(H, W)`` bool mask."""
    return mask_utils.decode(rle_for_pycocotools(rle)).astype(bool)
