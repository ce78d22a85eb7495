"""Free Mask (Wang et al. 2022, FreeSOLO §3.2): coarse object masks from query-key feature similarity.

    M = NMS(Maskness(Norm(Q' (*) K')))                                   (Eq. 4)

* keys K = the dense features I (E, h, w); queries Q = I bilinearly downsampled by each pyramid scale
  [1.0, 0.5, 0.25], flattened and concatenated; both l2-normalised, S = Q' K'^T (cosine similarity, Eq. 2-3);
* Norm: each query's score map min-max normalised to [0, 1] (soft mask p);
* maskness = mean of p over its foreground pixels p > tau (SOLO's non-parametric score);
* Matrix NMS (SOLOv2) on the binary masks, then keep masks whose decayed maskness >= 0.7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from longtail.common.errors import LongtailError


@dataclass
class FreeMaskResult:
    masks: np.ndarray        # (n, H, W) bool at the requested output size
    scores: np.ndarray       # (n,) maskness after matrix NMS
    queries: np.ndarray      # (n, E) the query features (semantic embeddings, FreeSOLO §3.3)
    num_queries: int
    num_before_nms: int


def pyramid_queries(feat: torch.Tensor, scales, image_name: str = "image") -> torch.Tensor:
    """(N, E) queries: ``feat`` (E, h, w) bilinearly downsampled per scale, flattened, concatenated."""
    e, h, w = feat.shape
    qs = []
    for s in scales:
        qh, qw = int(h * s), int(w * s)
        if qh < 1 or qw < 1:
            raise LongtailError(f"{image_name}: feature map {h}x{w} is smaller than the coarsest query grid "
                                f"(scale {s} gives {qh}x{qw}); the image is too small for Free Mask. Use a larger "
                                f"annotation_free.image.short_side or drop scale {s} from "
                                f"annotation_free.freemask.scales.")
        q = feat if (qh, qw) == (h, w) else F.interpolate(feat[None], size=(qh, qw), mode="bilinear",
                                                           align_corners=False)[0]
        qs.append(q.reshape(e, -1).T)
    return torch.cat(qs, 0)


def matrix_nms(masks: torch.Tensor, scores: torch.Tensor, kernel: str = "gaussian", sigma: float = 2.0
               ) -> torch.Tensor:
    """Class-agnostic Matrix NMS (SOLOv2): decayed scores for binary masks (N, P) sorted by descending score.

    decay_j = min_i f(iou_ij) / f(max_k iou_ki), i ranked above j; f = exp(-sigma iou^2) or (1 - iou).
    """
    n = masks.shape[0]
    if n == 0:
        return scores
    m = masks.float()
    area = m.sum(1)
    inter = m @ m.T
    union = area[:, None] + area[None, :] - inter
    iou = (inter / union.clamp(min=1e-6)).triu(diagonal=1)
    comp = iou.max(0).values[:, None].expand(n, n)     # how much each i itself was suppressed
    if kernel == "gaussian":
        decay = (torch.exp(-sigma * iou ** 2) / torch.exp(-sigma * comp ** 2)).min(0).values
    elif kernel == "linear":
        decay = ((1 - iou) / (1 - comp).clamp(min=1e-6)).min(0).values
    else:
        raise LongtailError(f"annotation_free.freemask.nms_kernel: unknown {kernel!r} (gaussian | linear)")
    return scores * decay


def free_mask(feat: torch.Tensor, out_hw: tuple[int, int], *, scales=(1.0, 0.5, 0.25), tau: float = 0.5,
              maskness_thr: float = 0.7, nms_pre: int = 500, nms_kernel: str = "gaussian",
              nms_sigma: float = 2.0, max_masks: int = 100, min_area: int = 0,
              image_name: str = "image") -> FreeMaskResult:
    """Free Mask on features ``feat`` (E, h, w); masks returned at ``out_hw`` (the image size)."""
    e, h, w = feat.shape
    keys = F.normalize(feat.reshape(e, -1).T, dim=1)                    # K' (P, E)
    queries = pyramid_queries(feat, scales, image_name)                 # Q (N, E)
    sim = F.normalize(queries, dim=1) @ keys.T                          # S (N, P), Eq. 2-3
    lo, hi = sim.min(1, keepdim=True).values, sim.max(1, keepdim=True).values
    soft = (sim - lo) / (hi - lo).clamp(min=1e-6)                       # Norm
    fg = soft > tau
    n_fg = fg.sum(1)
    maskness = (soft * fg).sum(1) / n_fg.clamp(min=1)
    maskness[n_fg == 0] = 0
    order = torch.argsort(maskness, descending=True, stable=True)[:nms_pre]
    order = order[maskness[order] > 0]
    scores = matrix_nms(fg[order], maskness[order], nms_kernel, nms_sigma)
    keep = scores >= maskness_thr
    order, scores = order[keep], scores[keep]
    resort = torch.argsort(scores, descending=True, stable=True)[:max_masks]
    order, scores = order[resort], scores[resort]
    if len(order):
        up = F.interpolate(soft[order].reshape(-1, 1, h, w), size=out_hw, mode="bilinear",
                           align_corners=False)[:, 0]
        masks = (up > tau).numpy()
    else:
        masks = np.zeros((0, *out_hw), bool)
    area_ok = masks.reshape(len(masks), -1).sum(1) > min_area if len(masks) else np.zeros(0, bool)
    return FreeMaskResult(masks=masks[area_ok], scores=scores.numpy()[area_ok],
                          queries=queries[order].numpy()[area_ok], num_queries=int(queries.shape[0]),
                          num_before_nms=len(fg))
