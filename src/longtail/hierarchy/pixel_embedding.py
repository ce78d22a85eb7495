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


def _view(rgb, box, flip, size, rng, jitter):
    x0, y0, bw, bh = box
    crop = torch.from_numpy(np.ascontiguousarray(rgb[y0:y0 + bh, x0:x0 + bw])).permute(2, 0, 1).float()[None]
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0] / 255.0
    if flip:
        crop = crop.flip(-1)
    if jitter > 0:  # colour jitter: brightness, contrast, saturation
        crop = crop * rng.uniform(1 - jitter, 1 + jitter)
        m = crop.mean()
        crop = (crop - m) * rng.uniform(1 - jitter, 1 + jitter) + m
        g = crop.mean(0, keepdim=True)
        crop = (crop - g) * rng.uniform(1 - jitter, 1 + jitter) + g
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


def sample_image(rgb: np.ndarray, tree, rng: np.random.Generator, size: int = 224, n_regions: int = 7,
                 n_pos: int = 10, n_neg: int = 5, sigma_p: float = 0.8, jitter: float = 0.4,
                 dist: np.ndarray | None = None) -> Sample | None:
    """Two augmented views of one image and the pixel pairs of Eq. 2/3 drawn from its region tree.

    ``dist``: the (n_leaves, n_leaves) d_T to use (``region_distances``); default the raw UCM heights."""
    h, w = rgb.shape[:2]
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
    pts = np.stack(pts)  # (R, 1 + P + N, 2)
    return Sample(_view(rgb, box_a, flip_a, size, rng, jitter), _view(rgb, box_b, flip_b, size, rng, jitter),
                  torch.from_numpy(_to_grid(pts, box_a, flip_a)).float(),
                  torch.from_numpy(_to_grid(pts, box_b, flip_b)).float())


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
        neg = torch.cat([neg, pool[other, idx]], 2)
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
    x = normalize(rgb)[None]
    if s != 1:
        x = F.interpolate(x, size=(max(int(h * s), 32), max(int(w * s), 32)), mode="bilinear", align_corners=False)
    f = F.normalize(net(x), dim=1)[0]
    return f.permute(1, 2, 0).numpy()


def kmeans_segments(emb: np.ndarray, shape: tuple[int, int], k: int, seed: int = 0) -> np.ndarray:
    """K-means (sklearn) on the pixel embeddings, labels 1..k upsampled (nearest) to ``shape``."""
    from sklearn.cluster import KMeans

    h, w, dim = emb.shape
    lab = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(emb.reshape(-1, dim).astype(np.float64))
    lab = lab.reshape(h, w)
    yi = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    xi = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return lab[np.ix_(yi, xi)] + 1


# ------------------------------------------------------------------------------------------------ training

def save_checkpoint(path, net, opt, step, config, losses) -> None:
    from longtail.common.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "backbone": net.backbone.state_dict(),
                    "optimizer": opt.state_dict() if opt is not None else None, "step": step,
                    "config": config, "losses": losses}, tmp)


def train_pixel_embedding(data: list[tuple[np.ndarray, object]], cfg: dict, ckpt_path: str | os.PathLike,
                          seed: int = 0, on_step=None, progress: bool = True) -> tuple[PixelEmbeddingNet, list]:
    """Train from random init on (RGB image, RegionTree capped at ``max_regions``) pairs.

    Resumes from ``ckpt_path`` if it exists (written every ``checkpoint_interval`` steps and at the end).
    ``on_step(step, loss)`` is called after every step. Returns the network and the loss per step.
    """
    from tqdm import tqdm

    if not data:
        raise LongtailError("train-pixel-embedding: no training images with region trees")
    torch.manual_seed(seed)
    net = PixelEmbeddingNet(dim=cfg["dim"], proj=cfg["proj"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    milestones = [int(m * cfg["steps"]) for m in cfg["lr_decay_at"]]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    from longtail.common.params import params_hash

    start, losses = 0, []
    ckpt_path = Path(ckpt_path)
    # resume only a run of the same settings and training trees (steps / checkpoint_interval may change)
    trees = [[int(t.n_leaves), round(float(t.altitudes.sum()), 6), list(im.shape)] for im, t in data]
    key = params_hash([seed, trees, {k: v for k, v in cfg.items() if k not in ("steps", "checkpoint_interval",
                                                                              "eval_images", "eval_k")}])
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    if ck is not None and ck.get("config", {}).get("key") == key and int(ck["step"]) <= cfg["steps"]:
        net.load_state_dict(ck["state_dict"])
        if ck.get("optimizer"):
            opt.load_state_dict(ck["optimizer"])
        start, losses = int(ck["step"]), list(ck.get("losses", []))
        import warnings

        with warnings.catch_warnings():  # fast-forward the schedule to the resumed step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                sched.step()
    net.train()
    norm = cfg.get("distance_norm", "raw")
    dists = [region_distances(tree, norm) for _, tree in data]
    config = {"dim": cfg["dim"], "proj": cfg["proj"], "key": key}
    for step in tqdm(range(start, cfg["steps"]), desc="train-pixel-embedding", disable=not progress,
                     initial=start, total=cfg["steps"]):
        rng = np.random.default_rng([seed, step])
        gen = torch.Generator().manual_seed(seed * 100003 + step)
        batch = []
        while len(batch) < cfg["batch_size"]:
            j = int(rng.integers(len(data)))
            rgb, tree = data[j]
            s = sample_image(rgb, tree, rng, size=cfg["crop_size"], n_regions=cfg["regions_per_image"],
                             n_pos=cfg["positives"], n_neg=cfg["negatives"], sigma_p=cfg["sigma_p"],
                             jitter=cfg["color_jitter"], dist=dists[j])
            if s is not None:
                batch.append(s)
        va = torch.stack([b.view_a for b in batch])
        vb = torch.stack([b.view_b for b in batch])
        f = net(torch.cat([va, vb]))
        fa, fb = f[:len(batch)], f[len(batch):]
        loss = hierarchy_contrastive_loss(fa, fb, torch.stack([b.grid_a for b in batch]),
                                          torch.stack([b.grid_b for b in batch]), n_pos=cfg["positives"],
                                          cns=cfg["cns"], temperature=cfg["temperature"], generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
        if (step + 1) % cfg["checkpoint_interval"] == 0 and step + 1 < cfg["steps"]:
            save_checkpoint(ckpt_path, net, opt, step + 1, config, losses)
    save_checkpoint(ckpt_path, net, opt, cfg["steps"], config, losses)
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
