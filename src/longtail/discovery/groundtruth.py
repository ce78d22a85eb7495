"""The ground truth of `longtail evaluate` held compact (issue 15): the annotations stay the text of the JSON file,
each parsed when a chunk of images needs it.

Parsed whole, a COCO polygon annotation takes ~1.9 KB (dicts, lists, one array a polygon); here it takes the
bytes of its JSON text, its span in that text and two columns (image id, category id): 32 bytes
plus its text. An annotation read from :class:`PackedAnnotations` is what ``json.load`` (with
:func:`compact_polygons`) gives for it, a fresh dict at every read, so masks, IoU and AP are the same to the bit.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError


def compact_polygons(obj: dict) -> dict:
    """``json.load`` object hook: an annotation's polygons (lists of numbers) as float64 arrays, 8 bytes a
    coordinate instead of ~32 as Python floats in a list. pycocotools turns polygons into float64 arrays anyway
    (``frPoly``), so masks, IoU and AP are the same to the bit; RLE and other keys are left as they are."""
    seg = obj.get("segmentation")
    if isinstance(seg, list) and seg and all(isinstance(p, list) and p and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in seg):
        obj["segmentation"] = [np.asarray(p, np.float64) for p in seg]
    return obj


class PackedAnnotations(Sequence):
    """A sequence of annotations kept as spans of one JSON text; item i is parsed when read (a new dict).

    ``columns``: image_id and category_id (int64) of every annotation, without parsing."""

    def __init__(self, text: str, starts: np.ndarray, ends: np.ndarray, columns: dict[str, np.ndarray]):
        self._text, self._starts, self._ends, self.columns = text, starts, ends, columns
        self._decoder = json.JSONDecoder(object_hook=compact_polygons)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._decoder.decode(self._text[self._starts[i]:self._ends[i]])

    def subset(self, positions: np.ndarray) -> PackedAnnotations:
        """The annotations at ``positions`` (in that order), sharing the text."""
        return PackedAnnotations(self._text, self._starts[positions], self._ends[positions],
                                 {k: v[positions] for k, v in self.columns.items()})


def annotation_column(annotations: Sequence[dict], key: str) -> np.ndarray:
    """``[a[key] for a in annotations]`` as int64 (image_id, category_id), from the columns when packed."""
    if isinstance(annotations, PackedAnnotations):
        return annotations.columns[key]
    return np.fromiter((a[key] for a in annotations), np.int64, len(annotations))


class AnnotationsByImage:
    """Positions of every image's annotations in ``annotations`` (in their order): 16 bytes an annotation."""

    def __init__(self, annotations: Sequence[dict]):
        img = annotation_column(annotations, "image_id")
        self._order = np.argsort(img, kind="stable")
        self._sorted = img[self._order]

    def positions(self, img_id: int) -> list[int]:
        lo = int(np.searchsorted(self._sorted, img_id, side="left"))
        hi = int(np.searchsorted(self._sorted, img_id, side="right"))
        return self._order[lo:hi].tolist()


_WS = re.compile(r"[ \t\n\r]*")


def _packed_load(text: str, where: str) -> dict:
    """``json.loads(text, object_hook=compact_polygons)`` with the top-level "annotations" array packed: one
    annotation parsed at a time (to read its span and columns), so the whole parsed list never exists."""
    dec = json.JSONDecoder(object_hook=compact_polygons)
    out: dict = {}

    def at(i: int, ch: str) -> bool:
        return text.startswith(ch, i)

    def expect(i: int, ch: str) -> int:
        if not at(i, ch):
            raise json.JSONDecodeError(f"Expecting {ch!r}", text, i)
        return _WS.match(text, i + 1).end()

    i = expect(_WS.match(text, 0).end(), "{")
    while not at(i, "}"):
        if not at(i, '"'):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = dec.raw_decode(text, i)
        i = expect(_WS.match(text, i).end(), ":")
        if key == "annotations" and at(i, "["):
            starts, ends, img, cat = (array("q") for _ in range(4))   # 8 bytes an entry
            i = expect(i, "[")
            while not at(i, "]"):
                a, j = dec.raw_decode(text, i)
                if not isinstance(a, dict):
                    raise LongtailError(f"{where}: annotation {len(starts)} is not a JSON object")
                starts.append(i)
                ends.append(j)
                img.append(a["image_id"])
                cat.append(a["category_id"])
                i = _WS.match(text, j).end()
                if at(i, ","):
                    i = expect(i, ",")
                elif not at(i, "]"):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
            i += 1
            # the file's text, or (where it is not ASCII: 2-4 bytes a character) the array's own (then ASCII)
            first = 0 if text.isascii() else (starts[0] if starts else i)
            out[key] = PackedAnnotations(text[first:i] if first else text, np.asarray(starts, np.int64) - first,
                                         np.asarray(ends, np.int64) - first,
                                         {"image_id": np.asarray(img, np.int64),
                                          "category_id": np.asarray(cat, np.int64)})
        else:
            out[key], i = dec.raw_decode(text, i)
        i = _WS.match(text, i).end()
        if at(i, ","):
            i = expect(i, ",")
        elif not at(i, "}"):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    if _WS.match(text, i + 1).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, i + 1)
    return out


def read_gt(path, what: str = "ground truth") -> dict:
    """A COCO / LVIS annotation file: its keys parsed (polygons by :func:`compact_polygons`), its
    "annotations" a :class:`PackedAnnotations` over the file's text (parsed per chunk of images)."""
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"{what} not found: {path}. Run the stage that produces it first (see the README's "
                            f"stage map) or fix the path.")
    text = path.read_text()
    try:
        if not text.lstrip(" \t\n\r").startswith("{"):
            return json.loads(text, object_hook=compact_polygons)
        return _packed_load(text, f"{what} {path}")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LongtailError(f"{what} {path} is not valid JSON / COCO annotations ({e!r}); delete it and rerun "
                            f"its stage.") from e


def images_annotations(gt: dict, by_img: AnnotationsByImage, img_ids: Iterable[int]) -> list[dict]:
    """The annotations of ``img_ids`` (ascending image id, each image's in file order), as new dicts (shallow
    copies for a list), so an evaluator's in-place edits (RLE, ignore flags) stay with the caller."""
    anns = gt["annotations"]
    fresh = isinstance(anns, PackedAnnotations)
    return [anns[j] if fresh else dict(anns[j]) for i in sorted({int(i) for i in img_ids})
            for j in by_img.positions(i)]
