"""Pixel embeddings learned from the region hierarchy (Zhang & Maire 2020, §3-4).

* Network (§4.2): ResNet-50 from random init (stride unchanged); the last outputs of res3 (``layer2``) and
  res4 (``layer3``) each go through one 3x3 Conv-BN-ReLU to 256 channels, are upsampled to 1/4 of the input,
  concatenated and projected by one 3x3 conv to a 32-d embedding F.
* Targets (§3): for each image, a region tree T capped at 40 finest regions; ``R`` anchor regions, one anchor
  pixel i each; ``n_pos`` positives by Eq. 2 (region b ~ exp(-d_T(a,b)/sigma_p), self-similarity 1) and
  ``n_neg`` negatives by Eq. 3 (b != a ~ exp(d_T(a,b)/sigma_p)), pixels uniform within the region.
* Augmented references: a second view tau(I) (jittered crop, flip, colour jitter): tau(Pos(i)), tau(Neg(i))
  and tau(i) are read on phi(tau(I)). Cross-image negatives (cns): random reference pixels of other images.
* Objective Eq. 1 with cosine similarity, as a loss: mean over (i, m in Pos+(i)) of
  ``-log(exp(s_im) / (exp(s_im) + sum_n exp(s_in)))`` (optionally s / temperature; the paper uses 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail.common.errors import LongtailError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PixelEmbeddingNet(nn.Module):
    """ResNet-50 hypercolumn network: image (B, 3, H, W), ImageNet-normalised -> F (B, dim, H/4, W/4).

    ``self.backbone`` is a torchvision ResNet-50 (key names as mmdet's ResNet: conv1, bn1, layer1..layer4);
    ``layer4`` is kept for checkpoint compatibility but not used by the embedding.
    """

    def __init__(self, dim: int = 32, proj: int = 256):
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Identity()
        self.res3 = _conv_bn_relu(512, proj)
        self.res4 = _conv_bn_relu(1024, proj)
        self.head = nn.Conv2d(2 * proj, dim, 3, padding=1)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        size = ((x.shape[-2] + 3) // 4, (x.shape[-1] + 3) // 4)
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        f3 = F.interpolate(self.res3(c3), size=size, mode="bilinear", align_corners=False)
        f4 = F.interpolate(self.res4(c4), size=size, mode="bilinear", align_corners=False)
        return self.head(torch.cat([f3, f4], 1))


def normalize(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) ImageNet-normalised float."""
    t = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (t - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def load_pixel_embedding(path: str | os.PathLike, map_location: str = "cpu") -> PixelEmbeddingNet:
    """The feature network saved by ``longtail train-pixel-embedding`` (eval mode).

    ``net(x)`` -> (B, 32, H/4, W/4); ``net.backbone`` is the ResNet-50 (mmdet/torchvision key names). The same
    file holds ``ckpt["backbone"]``, the ResNet-50 state dict alone, for ``init_cfg=dict(type='Pretrained')``.
    """
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"pixel-embedding checkpoint {path} not found; run `longtail train-pixel-embedding`")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        cfg = ckpt["config"]   # the net's own sizes (hierarchy.pixel_embedding.dim / proj when it was trained)
        net = PixelEmbeddingNet(dim=int(cfg["dim"]), proj=int(cfg["proj"]))
        net.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # unpickling / key / shape errors of a foreign or truncated file
        raise LongtailError(f"pixel-embedding checkpoint {path} is not a `longtail train-pixel-embedding` "
                            f"checkpoint ({e}); delete it and retrain") from e
    return net.eval()


# ------------------------------------------------------------------------------------------------ sampling

@dataclass
class Sample:
    view_a: torch.Tensor   # (3, S, S)
    view_b: torch.Tensor   # (3, S, S)
    grid_a: torch.Tensor   # (R, 1 + P + N, 2) normalised coords of anchor, positives, negatives in view a
    grid_b: torch.Tensor   # same points in view b


def pair_probabilities(d: np.ndarray, a: int, sigma_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 2 and Eq. 3 for anchor region ``a`` given the (M, M) region distances d_T."""
    pos = np.exp(-d[a] / sigma_p)
    pos[a] = 1.0                      # self-similarity cast to one
    pos = pos / pos.sum()
    neg = np.exp(d[a] / sigma_p)
    neg[a] = 0.0
    s = neg.sum()
    neg = neg / s if s > 0 else neg
    return pos, neg


def region_distances(tree, norm: str = "raw") -> np.ndarray:
    """d_T between the finest regions of ``tree`` on the scale Eq. 2/3 are applied to.

    ``raw``: the UCM merge heights as they are. ``minmax``: the off-diagonal heights stretched to [0, 1] per tree
    (lowest merge -> 0, root -> 1). ``rank``: each merge height replaced by its rank among the tree's merges,
    in (0, 1]. Both rescalings keep the hierarchy (a monotone map of an ultrametric is an ultrametric); they
    are needed because HED-based OWT-UCM heights of a 40-region tree crowd into ~[0.77, 0.97], where
    exp(-d/0.8) is nearly flat and Eq. 2/3 degenerate to uniform sampling over regions.
    """
    d = tree.leaf_distances()
    if norm == "raw" or d.shape[0] < 2:
        return d
    off = ~np.eye(d.shape[0], dtype=bool)
    if norm == "minmax":
        lo, hi = d[off].min(), d[off].max()
        out = (d - lo) / (hi - lo) if hi > lo else np.ones_like(d)
    elif norm == "rank":
        vals = np.unique(d[off])
        out = (np.searchsorted(vals, d) + 1) / len(vals)
    else:
        raise LongtailError(f"unknown region distance normalisation {norm!r} (raw | minmax | rank)")
    out[~off] = 0.0
    return out


def _random_box(rng, h, w, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    area = h * w
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        bw, bh = round(float(np.sqrt(a * r))), round(float(np.sqrt(a / r)))
        if 0 < bw <= w and 0 < bh <= h:
            return rng.integers(0, w - bw + 1), rng.integers(0, h - bh + 1), bw, bh
    return 0, 0, w, h


def _jitter_box(rng, box, h, w, amount=0.15):
    x0, y0, bw, bh = box
    s = rng.uniform(1 - amount, 1 + amount)
    nw, nh = min(int(bw * s), w), min(int(bh * s), h)
    cx = x0 + bw / 2 + rng.uniform(-amount, amount) * bw
    cy = y0 + bh / 2 + rng.uniform(-amount, amount) * bh
    nx = int(np.clip(cx - nw / 2, 0, w - nw))
    ny = int(np.clip(cy - nh / 2, 0, h - nh))
    return nx, ny, nw, nh


def _jitter_factors(rng, jitter: float) -> tuple[float, float, float] | None:
    """Brightness, contrast and saturation factors of one view (drawn in this order)."""
    if jitter <= 0:
        return None
    return tuple(float(rng.uniform(1 - jitter, 1 + jitter)) for _ in range(3))


def _view(rgb, box, flip, size, factors):
    x0, y0, bw, bh = box
    crop = torch.from_numpy(np.ascontiguousarray(rgb[y0:y0 + bh, x0:x0 + bw])).permute(2, 0, 1).float()[None]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0] / 255.0
    if flip:
        crop = crop.flip(-1)
    if factors is not None:  # colour jitter: brightness, contrast, saturation
        crop = crop * factors[0]
        m = crop.mean()
        crop = (crop - m) * factors[1] + m
        g = crop.mean(0, keepdim=True)
        crop = (crop - g) * factors[2] + g
        crop = crop.clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (crop - mean) / std


def _to_grid(xy, box, flip):
    """Pixel centres (x, y) in the image -> grid_sample coords in the view of ``box``."""
    x0, y0, bw, bh = box
    gx = 2 * (xy[..., 0] + 0.5 - x0) / bw - 1
    gy = 2 * (xy[..., 1] + 0.5 - y0) / bh - 1
    if flip:
        gx = -gx
    return np.stack([gx, gy], -1)


@dataclass
class Plan:
    """Every random draw of one sample (boxes, flips, pixel pairs, colour jitter): what :func:`render` needs
    besides the image. Planning reads only the region tree, so a DDP rank can follow a step's draws without
    decoding the images of the other ranks."""
    box_a: tuple
    box_b: tuple
    flip_a: bool
    flip_b: bool
    pts: np.ndarray          # (R, 1 + P + N, 2) pixel centres (x, y) in the image
    jitter_a: tuple | None
    jitter_b: tuple | None


def plan_sample(tree, rng: np.random.Generator, n_regions: int = 7, n_pos: int = 10, n_neg: int = 5,
                sigma_p: float = 0.8, jitter: float = 0.4, dist: np.ndarray | None = None) -> Plan | None:
    """The draws of :func:`sample_image` for an image of ``tree.leaf_labels``' size (None: no usable view pair)."""
    h, w = tree.leaf_labels.shape
    box_a = _random_box(rng, h, w)
    box_b = _jitter_box(rng, box_a, h, w)
    flip_a, flip_b = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    # pixels visible in both views
    x0 = max(box_a[0], box_b[0])
    y0 = max(box_a[1], box_b[1])
    x1 = min(box_a[0] + box_a[2], box_b[0] + box_b[2])
    y1 = min(box_a[1] + box_a[3], box_b[1] + box_b[3])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    labels = tree.leaf_labels[y0:y1, x0:x1]
    present = np.unique(labels)
    if len(present) < 2:
        return None
    d = tree.leaf_distances() if dist is None else dist
    d = d[np.ix_(present, present)]
    lab_local = np.searchsorted(present, labels)
    pix = [np.flatnonzero(lab_local.ravel() == k) for k in range(len(present))]
    ww = x1 - x0

    def pick(region, n):
        idx = rng.choice(pix[region], size=n)
        return np.stack([idx % ww + x0, idx // ww + y0], -1).astype(np.float64)

    anchors = rng.choice(len(present), size=n_regions, replace=len(present) < n_regions)
    pts = []
    for a in anchors:
        p_pos, p_neg = pair_probabilities(d, int(a), sigma_p)
        pos_r = rng.choice(len(present), size=n_pos, p=p_pos)
        neg_r = rng.choice(len(present), size=n_neg, p=p_neg)
        pts.append(np.concatenate([pick(a, 1)] + [pick(r, 1) for r in pos_r] + [pick(r, 1) for r in neg_r]))
    jit_a = _jitter_factors(rng, jitter)
    jit_b = _jitter_factors(rng, jitter)
    return Plan(box_a, box_b, flip_a, flip_b, np.stack(pts), jit_a, jit_b)


def render(rgb: np.ndarray, plan: Plan, size: int = 224) -> Sample:
    """The two views of ``plan`` cut from ``rgb`` and the grids of its pixel pairs in each."""
    return Sample(_view(rgb, plan.box_a, plan.flip_a, size, plan.jitter_a),
                  _view(rgb, plan.box_b, plan.flip_b, size, plan.jitter_b),
                  torch.from_numpy(_to_grid(plan.pts, plan.box_a, plan.flip_a)).float(),
                  torch.from_numpy(_to_grid(plan.pts, plan.box_b, plan.flip_b)).float())


def sample_image(rgb: np.ndarray, tree, rng: np.random.Generator, size: int = 224, n_regions: int = 7,
                 n_pos: int = 10, n_neg: int = 5, sigma_p: float = 0.8, jitter: float = 0.4,
                 dist: np.ndarray | None = None) -> Sample | None:
    """Two augmented views of one image and the pixel pairs of Eq. 2/3 drawn from its region tree
    (:func:`plan_sample` then :func:`render`).

    ``dist``: the (n_leaves, n_leaves) d_T to use (``region_distances``); default the raw UCM heights."""
    plan = plan_sample(tree, rng, n_regions, n_pos, n_neg, sigma_p, jitter, dist)
    return None if plan is None else render(rgb, plan, size)


def _gather(feat: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """feat (B, D, h, w), grid (B, R, K, 2) -> L2-normalised (B, R, K, D)."""
    g = F.grid_sample(feat, grid, mode="bilinear", align_corners=False)  # (B, D, R, K)
    return F.normalize(g.permute(0, 2, 3, 1), dim=-1)


def hierarchy_contrastive_loss(fa: torch.Tensor, fb: torch.Tensor, grid_a: torch.Tensor, grid_b: torch.Tensor,
                               n_pos: int, cns: int = 5, temperature: float = 1.0,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 1 with Pos+ = Pos u tau(Pos) u {tau(i)}, Neg+ = Neg u tau(Neg) u Neg_cns."""
    ea = _gather(fa, grid_a)  # (B, R, 1+P+N, D)
    eb = _gather(fb, grid_b)
    B, R = ea.shape[:2]
    anchor = ea[:, :, 0]                                              # (B, R, D)
    pos = torch.cat([ea[:, :, 1:1 + n_pos], eb[:, :, 1:1 + n_pos], eb[:, :, :1]], 2)
    neg = torch.cat([ea[:, :, 1 + n_pos:], eb[:, :, 1 + n_pos:]], 2)
    if cns > 0 and B > 1:
        # random reference pixels of the other images of the batch
        pool = ea.reshape(B, -1, ea.shape[-1])                        # (B, R*K, D)
        K = pool.shape[1]
        other = (torch.arange(B)[:, None, None] + torch.randint(1, B, (B, R, cns), generator=generator)) % B
        idx = torch.randint(0, K, (B, R, cns), generator=generator)
        neg = torch.cat([neg, pool[other.to(pool.device), idx.to(pool.device)]], 2)
    s_pos = (anchor[:, :, None] * pos).sum(-1) / temperature         # (B, R, P+)
    s_neg = (anchor[:, :, None] * neg).sum(-1) / temperature         # (B, R, N+)
    lse_neg = torch.logsumexp(s_neg, -1, keepdim=True)
    # -log(e^sp / (e^sp + sum e^sn)) = logaddexp(sp, lse_neg) - sp
    return (torch.logaddexp(s_pos, lse_neg) - s_pos).mean()


# ------------------------------------------------------------------------------------------------ evaluation

@torch.no_grad()
def embed_image(net: PixelEmbeddingNet, rgb: np.ndarray, max_side: int = 320) -> np.ndarray:
    """(H', W', D) embedding of an image resized so that its longer side is ``max_side``."""
    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    x = normalize(rgb)[None].to(next(net.parameters(), torch.zeros(0)).device)
    if s != 1:
        x = F.interpolate(x, size=(max(int(h * s), 32), max(int(w * s), 32)), mode="bilinear", align_corners=False)
    f = F.normalize(net(x), dim=1)[0]
    return f.permute(1, 2, 0).cpu().numpy()


def kmeans_segments(emb: np.ndarray, shape: tuple[int, int], k: int, seed: int = 0) -> np.ndarray:
    """K-means (sklearn) on the pixel embeddings, labels 1..k upsampled (nearest) to ``shape``."""
    from sklearn.cluster import KMeans

    h, w, dim = emb.shape
    lab = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb.reshape(-1, dim).astype(np.float64))
    lab = lab.reshape(h, w)
    yi = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    xi = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return lab[np.ix_(yi, xi)] + 1


# ------------------------------------------------------------------------------------------------ training data

class ImageList:
    """In-RAM training images: (RGB, region tree) pairs (small sets, tests, benchmarks), with the interface of
    :class:`TreeImages` (``rgb(j)``, ``tree(j)`` -> (tree, d_T), ``name(j)``, ``fingerprint()``)."""

    def __init__(self, data: list[tuple[np.ndarray, object]], distance_norm: str = "raw"):
        self.data = list(data)
        self.dists = [region_distances(tree, distance_norm) for _, tree in self.data]

    def __len__(self) -> int:
        return len(self.data)

    def rgb(self, j: int) -> np.ndarray:
        return self.data[j][0]

    def tree(self, j: int):
        return self.data[j][1], self.dists[j]

    def name(self, j: int) -> str:
        return f"training image {j}"

    def fingerprint(self) -> list:
        return [[int(t.n_leaves), round(float(t.altitudes.sum()), 6), list(im.shape)] for im, t in self.data]


class TreeImages(torch.utils.data.Dataset):
    """The training images of a `longtail ucm` folder (``index.json``), read per item: ``self[j]`` decodes image
    j and its region tree (cut to ``max_regions`` finest regions) -> (RGB, tree, d_T). Images are not kept
    between items; the last ``tree_cache`` cut trees with their d_T are (per process: a DataLoader worker has its
    own), as cutting a tree is ~0.1 s of CPU and every training step draws trees again (memory: ``tree_cache``
    trees of one image's size, whatever the number of images; 0 = none)."""

    def __init__(self, trees_dir: str | os.PathLike, max_regions: int, min_size: int = 32,
                 distance_norm: str = "raw", tree_cache: int = 32):
        from collections import OrderedDict

        from longtail.hierarchy.process import load_index
        from longtail.hierarchy.shards import hierarchy_dir

        self.dir = hierarchy_dir(trees_dir)               # the folder or its index.json
        self.entries = load_index(self.dir, "region tree")
        self.max_regions, self.min_size, self.norm = int(max_regions or 0), int(min_size), distance_norm
        self.tree_cache, self._trees = int(tree_cache), OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def rgb(self, j: int) -> np.ndarray:
        from longtail.hierarchy.images import load_rgb

        return load_rgb(self.entries[j]["image"], self.min_size)

    def tree(self, j: int):
        from longtail.hierarchy.tree import load_region_tree
        from longtail.hierarchy.ucm import rebuild

        if j in self._trees:                              # LRU of the cut trees (read-only for the callers)
            self._trees.move_to_end(j)
            return self._trees[j]
        tree = load_region_tree(self.dir / self.entries[j]["tree"])
        if self.max_regions and tree.n_leaves > self.max_regions:
            tree = rebuild(tree, tree.cut_regions(self.max_regions))
        out = tree, region_distances(tree, self.norm)
        if self.tree_cache > 0:
            self._trees[j] = out
            if len(self._trees) > self.tree_cache:
                self._trees.popitem(last=False)
        return out

    def name(self, j: int) -> str:
        return f"{self.dir / self.entries[j]['tree']} (image {self.entries[j]['image']})"

    def __getitem__(self, j: int):
        rgb, (tree, dist) = self.rgb(j), self.tree(j)
        check_sizes(self, j, rgb, tree)
        return rgb, tree, dist

    def fingerprint(self) -> list:
        """The image and tree files trained on (with the trees' sizes: a recomputed tree changes the key)."""
        def size(e):
            f = self.dir / e["tree"]
            return f.stat().st_size if f.exists() else None

        return [[e["image"], e["tree"], size(e)] for e in self.entries]


def check_sizes(images, j: int, rgb: np.ndarray, tree) -> None:
    if rgb.shape[:2] != tree.leaf_labels.shape:
        raise LongtailError(f"{images.name(j)}: the region tree is {tree.leaf_labels.shape} but the image is "
                            f"{rgb.shape[:2]}; rerun `longtail ucm` on these images")


class PixelSteps(torch.utils.data.Dataset):
    """Item ``step`` = this rank's share of that training step, cut from the images it draws.

    The draws are those of the in-RAM loop before the streaming path (so its results are unchanged):
    ``rng = default_rng([seed, step])`` picks an image, plans a sample on its region tree (:func:`plan_sample`;
    an unusable view pair draws another image) until the step has ``batch_size`` samples. Under DDP every rank
    follows the same draws on the trees alone and decodes and renders only the samples ``rank::world`` (the
    global batch is kept; a step with fewer samples than ranks repeats some). Memory per item: the step's
    trees and this rank's images."""

    def __init__(self, images, cfg: dict, seed: int, rank: int = 0, world: int = 1):
        self.images, self.cfg, self.seed, self.rank, self.world = images, cfg, int(seed), int(rank), int(world)

    def __len__(self) -> int:
        return int(self.cfg["steps"])

    def plans(self, step: int) -> tuple[list, dict]:
        """The step's (image, :class:`Plan`) list in draw order and its trees (image -> (tree, d_T))."""
        c = self.cfg
        rng = np.random.default_rng([self.seed, step])
        trees: dict = {}
        out: list = []
        misses = 0
        while len(out) < c["batch_size"]:
            j = int(rng.integers(len(self.images)))
            if j not in trees:
                trees[j] = self.images.tree(j)
            tree, dist = trees[j]
            plan = plan_sample(tree, rng, n_regions=c["regions_per_image"], n_pos=c["positives"],
                               n_neg=c["negatives"], sigma_p=c["sigma_p"], jitter=c["color_jitter"], dist=dist)
            if plan is not None:
                out.append((j, plan))
                misses = 0
            elif (misses := misses + 1) > 1000:
                raise LongtailError("train-pixel-embedding: 1000 draws in a row without two regions in the views; "
                                    "the region trees are (nearly) single-region - check `longtail ucm`'s output")
        return out, trees

    def __getitem__(self, step: int) -> dict:
        plans, trees = self.plans(step)
        if len(plans) < self.world:
            plans = (plans * self.world)[:self.world]
        rgbs: dict[int, np.ndarray] = {}
        samples = []
        for j, plan in plans[self.rank::self.world]:
            if j not in rgbs:
                rgbs[j] = self.images.rgb(j)
                check_sizes(self.images, j, rgbs[j], trees[j][0])
            samples.append(render(rgbs[j], plan, self.cfg["crop_size"]))
        return {"step": step, **{k: torch.stack([getattr(b, k) for b in samples])
                                 for k in ("view_a", "view_b", "grid_a", "grid_b")}}


# ------------------------------------------------------------------------------------------------ training

def save_checkpoint(path, net, opt, step, config, losses) -> None:
    from longtail.common.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "backbone": net.backbone.state_dict(),
                    "optimizer": opt.state_dict() if opt is not None else None, "step": step,
                    "config": config, "losses": losses}, tmp)


def train_pixel_embedding(data, cfg: dict, ckpt_path: str | os.PathLike, seed: int = 0, on_step=None,
                          progress: bool = True, device: str | torch.device | None = None,
                          num_workers: int = 0) -> tuple[PixelEmbeddingNet, list]:
    """Train from random init on ``data``: a :class:`TreeImages` (read per item: the stage) or a list of
    (RGB image, RegionTree capped at ``max_regions``) pairs (in RAM). Both give the same steps.

    A ``DataLoader`` with ``num_workers`` worker processes prepares the steps (:class:`PixelSteps`); the network
    runs on ``device``. Under an initialised process group (torchrun) the network is wrapped in DDP (gloo on the
    CPU, nccl on GPUs), each rank computes its share of every step's samples, the loss logged is the mean over
    the ranks, and only rank 0 writes the checkpoint. Resumes from ``ckpt_path`` if it exists (written every
    ``checkpoint_interval`` steps, at the end, and on SIGUSR1 / SIGTERM, after which the run stops with
    :class:`~longtail.common.preemption.Preempted`). ``on_step(step, loss)`` is called after every step. Returns
    the network (eval mode, on ``device``) and the loss per step.
    """
    import warnings

    import torch.distributed as dist
    from tqdm import tqdm

    from longtail.common.params import params_hash
    from longtail.common.preemption import StopSignals, world as _world, worker_init

    images = data if isinstance(data, TreeImages) else ImageList(data, cfg.get("distance_norm", "raw"))
    if len(images) == 0:
        raise LongtailError("train-pixel-embedding: no training images with region trees")
    rank, world = _world()
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    net = PixelEmbeddingNet(dim=cfg["dim"], proj=cfg["proj"]).to(device)
    net.backbone.layer4.requires_grad_(False)    # not in the embedding (kept for the checkpoint): no DDP grads
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    milestones = [int(m * cfg["steps"]) for m in cfg["lr_decay_at"]]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)

    start, losses = 0, []
    ckpt_path = Path(ckpt_path)
    # resume only a run of the same settings, training trees and world size (steps / checkpoint_interval may change)
    key = params_hash([seed, images.fingerprint(), {k: v for k, v in cfg.items() if k not in (
        "steps", "checkpoint_interval", "eval_images", "eval_k")}] + ([world] if world > 1 else []))
    ck = torch.load(ckpt_path, map_location=device, weights_only=False) if ckpt_path.exists() else None
    if ck is not None and ck.get("config", {}).get("key") == key and int(ck["step"]) <= cfg["steps"]:
        net.load_state_dict(ck["state_dict"])
        if ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        start, losses = int(ck["step"]), list(ck.get("losses", []))
        for g in opt.param_groups:       # the saved lr is already decayed: replay the schedule from the start
            g["lr"] = g.get("initial_lr", cfg["lr"])
        with warnings.catch_warnings():  # fast-forward the schedule to the resumed step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                sched.step()
    config = {"dim": cfg["dim"], "proj": cfg["proj"], "key": key}

    def save(step: int) -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, net, opt, step, config, losses)

    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        PixelSteps(images, cfg, seed, rank, world), batch_size=None, sampler=range(start, cfg["steps"]),
        num_workers=int(num_workers), worker_init_fn=worker_init if num_workers else None,
        pin_memory=device.type == "cuda")
    net.train()
    bar = tqdm(total=cfg["steps"], initial=start, desc="train-pixel-embedding", disable=not progress or rank != 0)
    with StopSignals() as sig:
        for batch in loader:
            step = batch["step"]
            gen = torch.Generator().manual_seed(seed * 100003 + step)
            va, vb = batch["view_a"].to(device, non_blocking=True), batch["view_b"].to(device, non_blocking=True)
            f = model(torch.cat([va, vb]))
            n = len(va)
            loss = hierarchy_contrastive_loss(f[:n], f[n:], batch["grid_a"].to(device), batch["grid_b"].to(device),
                                              n_pos=cfg["positives"], cns=cfg["cns"],
                                              temperature=cfg["temperature"], generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            value, stop = loss.item(), sig.received is not None
            if world > 1:                            # the loss: mean over the ranks; stop: any rank signalled
                vec = torch.tensor([value, float(stop)], dtype=torch.float64, device=device)
                dist.all_reduce(vec)
                value, stop = float(vec[0]) / world, bool(vec[1] > 0)
            losses.append(value)
            if on_step:
                on_step(step, value)
            bar.update(1)
            if stop or ((step + 1) % cfg["checkpoint_interval"] == 0 and step + 1 < cfg["steps"]):
                save(step + 1)
            if stop and step + 1 < cfg["steps"]:
                sig.preempt("train-pixel-embedding", step + 1, cfg["steps"], ckpt_path, world)
    bar.close()
    save(cfg["steps"])
    if world > 1:
        dist.barrier()
    return net.eval(), losses


K_GRID = (2, 3, 4, 6, 8, 12, 16, 24, 32)


def eval_k_grid(max_k: int) -> list[int]:
    """The k-means k values scored for ``hierarchy.pixel_embedding.eval_k`` = ``max_k``: K_GRID up to it."""
    return [k for k in K_GRID if k < max_k] + [int(max_k)]


def evaluate_segments(net: PixelEmbeddingNet, items: list[tuple[np.ndarray, object]], k, seed: int = 0,
                      max_side: int = 320) -> dict:
    """K-means segments of the (L2-normalised) embeddings vs BSDS ground truth (``bench.region_counts`` /
    ``collect_region``).

    ``k``: one number of clusters, or a list of them (each image is clustered at every k; like the UCM
    thresholds of the BSDS benchmark, ODS = the one k best for the whole set, OIS = the best k per image).
    Returns covering / PRI / VI at ODS (``covering`` ...), ``k`` (the ODS k), ``covering_OIS`` and ``curve``.
    """
    from longtail.hierarchy import bench

    ks = [int(k)] if np.ndim(k) == 0 else [int(x) for x in k]
    per = []
    for rgb, gt in items:
        emb = embed_image(net, rgb, max_side)
        per.append(bench.region_counts([kmeans_segments(emb, rgb.shape[:2], kk, seed) for kk in ks], gt))
    r = bench.collect_region(per, np.array(ks, float))
    return {"covering": r["covering_ODS"], "PRI": r["PRI_ODS"], "VI": r["VI_ODS"],
            "k": int(r["covering_ODS_threshold"]), "covering_OIS": r["covering_OIS"],
            "curve": {"k": ks, "covering": r["curve"]["covering"], "PRI": r["curve"]["PRI"],
                      "VI": r["curve"]["VI"]}}
