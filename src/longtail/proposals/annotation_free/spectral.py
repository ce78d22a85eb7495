"""Multi-k spectral masks (Engstler et al. 2023, §4 and A.2-A.3).

1. affinity W = max(0, cos(f_i, f_j)) between the feature vectors of all cells of the feature map;
2. k-way spectral clustering of W for every k in K = {2, 3, 4, 5} (spectral embedding + k-means);
3. every cluster split into its connected components (non-connected component splitting, NCCS);
4. saliency: of the k = 2 segments, the one sharing fewer pixels with the image border is foreground;
   candidates with |m & fg| / |m| < 0.5 are discarded;
5. mask NMS at IoU 0.8 removes duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.cluster import KMeans
from sklearn.manifold import spectral_embedding
from threadpoolctl import threadpool_limits

from longtail.common.errors import LongtailError


@dataclass
class SpectralResult:
    masks: np.ndarray          # (n, H, W) bool
    scores: np.ndarray         # (n,)
    ks: np.ndarray             # (n,) the k that produced each mask
    saliency: np.ndarray       # (H, W) bool foreground of the k = 2 partition
    num_candidates: int


def feature_affinity(feat: torch.Tensor) -> np.ndarray:
    """(P, P) non-negative cosine affinity of the (E, h, w) feature cells."""
    e = feat.shape[0]
    x = F.normalize(feat.reshape(e, -1).T, dim=1)
    w = (x @ x.T).clamp(min=0).double().numpy()
    return w


def spectral_partitions(affinity: np.ndarray, ks, seed: int = 0) -> dict[int, np.ndarray]:
    """k -> (P,) cluster labels, from one spectral embedding with max(ks) eigenvectors (Ng-Jordan-Weiss)."""
    kmax = max(ks)
    if affinity.shape[0] <= kmax:
        raise LongtailError(f"spectral clustering needs more than {kmax} feature cells, got {affinity.shape[0]}; "
                            f"the image is too small for annotation_free.spectral.ks.")
    emb = spectral_embedding(affinity, n_components=kmax, norm_laplacian=True, drop_first=False,
                             random_state=seed)
    out = {}
    # one OpenMP thread: k-means on ~10^3 points is 50x slower with threads fighting over shared cores
    with threadpool_limits(1):
        for k in ks:
            v = emb[:, :k]
            v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(min=1e-12)
            out[k] = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(v)
    return out


def upsample_labels(labels: np.ndarray, k: int, hw_feat, out_hw) -> np.ndarray:
    """Cluster label map at feature resolution -> (H, W) labels via bilinear one-hot + argmax (smooth edges)."""
    onehot = torch.from_numpy(np.eye(k, dtype=np.float32)[labels].T.reshape(1, k, *hw_feat))
    up = F.interpolate(onehot, size=out_hw, mode="bilinear", align_corners=False)
    return up[0].argmax(0).numpy()


def border_fraction(mask: np.ndarray) -> float:
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    return float(border.mean())


def split_components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    lab, n = ndimage.label(mask)
    if n == 0:
        return []
    areas = np.bincount(lab.ravel())[1:]
    return [lab == i + 1 for i in np.flatnonzero(areas >= max(min_area, 1))]


def spectral_masks(feat: torch.Tensor, out_hw: tuple[int, int], *, ks=(2, 3, 4, 5), saliency_thr: float = 0.5,
                   nms_iou: float = 0.8, min_area: int = 0, split: bool = True, seed: int = 0) -> SpectralResult:
    """Mask proposals from multi-k spectral clustering of features ``feat`` (E, h, w), at size ``out_hw``."""
    from longtail.common.masks import encode_mask
    from longtail.proposals.format import mask_nms

    h, w = feat.shape[1:]
    ks = sorted({int(k) for k in ks} | {2})           # k = 2 is always needed for the saliency map
    parts = spectral_partitions(feature_affinity(feat), ks, seed)
    label_maps = {k: upsample_labels(parts[k], k, (h, w), out_hw) for k in ks}
    # saliency: the k = 2 segment touching the border less is foreground
    segs = [label_maps[2] == c for c in range(2)]
    fg = min(segs, key=border_fraction)
    cand, cand_k = [], []
    for k in ks:
        for c in range(k):
            m = label_maps[k] == c
            comps = split_components(m, min_area) if split else ([m] if m.sum() >= max(min_area, 1) else [])
            cand += comps
            cand_k += [k] * len(comps)
    inter = np.array([(m & fg).sum() / max(m.sum(), 1) for m in cand])
    keep = np.flatnonzero(inter >= saliency_thr)
    masks = [cand[i] for i in keep]
    # score: the saliency intersection (ties keep the order of k, coarse first; NMS keeps the most salient)
    scores = inter[keep]
    if len(masks):
        kept = mask_nms([encode_mask(m) for m in masks], scores, nms_iou)
    else:
        kept = []
    return SpectralResult(masks=np.stack([masks[i] for i in kept]) if kept else np.zeros((0, *out_hw), bool),
                          scores=np.asarray([scores[i] for i in kept], float),
                          ks=np.asarray([cand_k[keep[i]] for i in kept], int), saliency=fg,
                          num_candidates=len(cand))
