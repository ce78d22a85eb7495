"""longtail.common.masks on the real sample: multi-part COCO polygons, iscrowd uncompressed RLE, str/bytes counts."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from longtail import REPO_ROOT
from longtail.common.errors import LongtailError
from longtail.common.masks import decode_mask, encode_mask, rle_for_json, rle_for_pycocotools, to_rle

COCO_VAL = REPO_ROOT / "data/coco-mini/annotations/instances_val2017.json"


@pytest.fixture(scope="module")
def coco():
    d = json.loads(COCO_VAL.read_text())
    ims = {im["id"]: im for im in d["images"]}
    return [(a, ims[a["image_id"]]["height"], ims[a["image_id"]]["width"]) for a in d["annotations"]]


def _runs_to_mask(counts: list[int], h: int, w: int) -> np.ndarray:
    """Uncompressed COCO RLE decoded by hand: alternating 0/1 runs over the column-major pixels."""
    return np.repeat(np.arange(len(counts)) % 2, counts).astype(bool).reshape((h, w), order="F")


def test_polygons_are_merged_into_one_mask(coco):
    multi = [(a, h, w) for a, h, w in coco if isinstance(a["segmentation"], list) and len(a["segmentation"]) >= 2]
    assert len(multi) >= 10
    for a, h, w in multi[:20]:
        before = copy.deepcopy(a["segmentation"])
        rle = to_rle(a["segmentation"], h, w)
        assert a["segmentation"] == before                       # input untouched
        assert rle["size"] == [h, w] and isinstance(rle["counts"], bytes)
        m = decode_mask(rle)
        parts = mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w))   # (h, w, parts)
        assert m.shape == (h, w) and m.dtype == bool
        assert np.array_equal(m, parts.any(2))                   # the union of every part, not the first
        assert float(mask_utils.area(rle)) == pytest.approx(a["area"], rel=0.1)   # COCO's polygon area


def test_crowd_uncompressed_rle(coco):
    crowd = [(a, h, w) for a, h, w in coco if a.get("iscrowd")]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a, _, _ in crowd)
    for a, h, w in crowd:
        rle = to_rle(a["segmentation"], h, w)
        assert isinstance(rle["counts"], bytes) and rle["size"] == [h, w]
        ref = _runs_to_mask(a["segmentation"]["counts"], h, w)
        assert np.array_equal(decode_mask(rle), ref)
        assert int(mask_utils.area(rle)) == int(ref.sum()) > 0


def test_str_and_bytes_counts_interchange(coco):
    (a, h, w), (c, ch, cw) = coco[0], next(x for x in coco if x[0].get("iscrowd"))
    for seg, hh, ww in ((a["segmentation"], h, w), (c["segmentation"], ch, cw)):
        rle = to_rle(seg, hh, ww)
        js = rle_for_json(rle)
        assert set(js) == {"size", "counts"} and isinstance(js["counts"], str)
        assert js["counts"].encode("ascii") == rle["counts"]
        back = json.loads(json.dumps(js))                        # JSON-serialisable as is
        assert back == js
        # a compressed RLE with str counts (as read from JSON) goes back to the same bytes
        assert to_rle(back, 1, 1) == rle                          # height/width unused for compressed RLE
        assert rle_for_pycocotools(back) == rle and rle_for_pycocotools(rle) == rle
        assert isinstance(back["counts"], str)                    # inputs are copied, not converted in place
        assert np.array_equal(decode_mask(back), decode_mask(rle))
        # encode_mask is the canonical compressed form: the same string as the converted annotation
        assert encode_mask(decode_mask(rle)) == js
    # extra keys survive rle_for_pycocotools, not rle_for_json
    tagged = {**rle_for_json(to_rle(a["segmentation"], h, w)), "note": 1}
    assert rle_for_pycocotools(tagged)["note"] == 1 and "note" not in rle_for_json(tagged)


def test_empty_polygon_list_is_an_empty_mask():
    rle = to_rle([], 7, 9)
    assert rle["size"] == [7, 9] and not decode_mask(rle).any() and decode_mask(rle).shape == (7, 9)


@pytest.mark.parametrize("seg, match", [
    ("not a mask", "annotation 42 in val.json: segmentation of type str is neither polygons nor RLE"),
    (None, "annotation 42 in val.json: segmentation of type NoneType"),
    ({"counts": "PQ1"}, "annotation 42 in val.json: .*'size' and 'counts'"),
    ([[10, 10, "x", 20, 30, 30]], "annotation 42 in val.json: malformed segmentation"),
    ([[1, 2, 3]], "annotation 42 in val.json: malformed segmentation"),
    ([10, 10, 20, 20, 30, 10], "annotation 42 in val.json: malformed segmentation"),   # not a list of lists
    ({"size": [5, 5], "counts": [3, "x"]}, "annotation 42 in val.json: malformed segmentation"),
])
def test_malformed_segmentation_names_its_source(seg, match):
    with pytest.raises(LongtailError, match=match):
        to_rle(seg, 50, 60, source="annotation 42 in val.json")


def test_prepare_counts_a_malformed_annotation_as_bad_input():
    """`longtail prepare` reports a malformed segmentation through on_bad_input instead of crashing."""
    from longtail.data.prepare import check_annotation

    why = check_annotation({"segmentation": [[10, 10, "x", 20, 30, 30]], "area": 5.0, "bbox": [10, 10, 20, 20]},
                           50, 60, 1.0)
    assert why is not None and "malformed segmentation" in why
