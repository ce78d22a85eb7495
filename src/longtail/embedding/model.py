"""Embedding network f (Weng et al. 2021, 4.1) and its embedding space.

ResNet-18 (torchvision, random init unless a checkpoint is given) -> FC 256 -> ReLU -> FC 64 -> ReLU ->
linear projection 64 -> ``dim`` (our choice: the paper maps "the features" of the FC 64 layer into a 2-D
ball, so a last linear layer brings the 64 features to the ball's dimension) -> exponential map at the
origin of geoopt's PoincareBall(c) (curvature -c, paper: c = 1, dim = 2). The Euclidean ablation uses the
projection output directly.

The tangent vector is clipped to norm ``max_tangent_norm`` before the exponential map (0 = off): this keeps
points away from the ball's boundary where tanh saturates and gradients vanish (a point's distance to the
origin is then at most 2 * max_tangent_norm / sqrt(c)). The map and everything after it run in float64.
"""

from __future__ import annotations

from pathlib import Path

import geoopt
import torch
import torchvision
from torch import nn

from longtail.common.errors import LongtailError

SPACES = ("poincare", "euclidean")


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


class EmbeddingNet(nn.Module):
    """Crops (B, 3, S, S) normalised -> points (B, dim) float64 in the embedding space."""

    def __init__(self, dim: int = 2, space: str = "poincare", curvature: float = 1.0,
                 hidden: tuple[int, ...] = (256, 64), max_tangent_norm: float = 0.0,
                 backbone_checkpoint: str | None = None):
        super().__init__()
        self.dim = int(dim)
        self.space = Space(space, curvature)
        self.max_tangent_norm = float(max_tangent_norm)
        self.backbone = torchvision.models.resnet18(weights=None)
        feat = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        if backbone_checkpoint:
            load_backbone(self.backbone, backbone_checkpoint)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(feat, h), nn.ReLU(inplace=True)]
            feat = h
        layers.append(nn.Linear(feat, self.dim))
        self.head = nn.Sequential(*layers)

    def tangent(self, x: torch.Tensor) -> torch.Tensor:
        v = self.head(self.backbone(x)).double()
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
