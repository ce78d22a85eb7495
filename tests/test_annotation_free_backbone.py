"""The HED VGG16 trunk as a Free Mask / spectral backbone (annotation_free.backbone.type: hed_vgg16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.common.errors import LongtailError
from longtail.hierarchy.hed import load_hed, preprocess
from longtail.proposals.annotation_free.backbone import build_backbone, load_image, resize_short_side

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image():
    d = json.loads((REPO / "data/coco-mini/annotations/instances_val2017.json").read_text())
    return resize_short_side(load_image(REPO / "data/coco-mini/val2017" / d["images"][0]["file_name"]), 96, 400)


@pytest.mark.parametrize("layer,stride", [("conv3", 4), ("conv4", 8), ("conv5", 16)])
def test_hed_trunk_equals_hed_activations(image, layer, stride):
    """Same numbers as HED's own blocks on HED's own preprocessing (BGR minus the Caffe mean)."""
    torch.set_num_threads(2)
    channels = 256 if layer == "conv3" else 512
    bb = build_backbone({"type": "hed_vgg16", "layer": layer, "checkpoint": None, "stride": stride,
                         "channels": channels})
    f = bb.features(image)
    x = preprocess(image)[None]
    hed = load_hed()
    with torch.no_grad():
        for k, convs in enumerate(hed.blocks[: int(layer[-1])]):
            if k > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in convs:
                x = F.relu(conv(x))
    assert f.shape == x.shape[1:] and f.shape[0] == channels
    assert torch.allclose(f, x[0], atol=1e-3, rtol=1e-4)
    assert float(f.abs().mean()) > 0.01          # not a dead (wrongly normalised) input


def test_hed_trunk_config_errors(image):
    with pytest.raises(LongtailError, match="conv3"):
        build_backbone({"type": "hed_vgg16", "layer": "layer3", "checkpoint": None, "stride": 16, "channels": 512})
    bad = build_backbone({"type": "hed_vgg16", "layer": "conv4", "checkpoint": None, "stride": 16, "channels": 512})
    with pytest.raises(LongtailError, match="not stride 16"):
        bad.features(image)
    assert np.isfinite(build_backbone({"type": "hed_vgg16", "layer": "conv5", "checkpoint": None, "stride": 16,
                                       "channels": 512}).features(image).numpy()).all()
