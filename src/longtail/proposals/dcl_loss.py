"""Dense contrastive loss (Chen et al. 2022, eq. 3-5), framework-free: used by ``DCLFCNMaskHead`` (dcl.py).

Normalisation: eq. 3/4 sum over anchor-positive pairs and RoIs; we average them instead, so that lambda = 1.2
balances L_contrast against mmdet's (mean) mask BCE independently of K and of the number of RoIs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_positions(valid: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """(R, L) bool -> (R, k) indices drawn uniformly without replacement from each row's True positions.

    Every row must have at least k True entries.
    """
    noise = torch.rand(valid.shape, device=valid.device, generator=generator)
    noise = torch.where(valid, noise, torch.full_like(noise, -1.0))
    return noise.topk(k, dim=1).indices


def dense_contrastive_loss(feats: Tensor, masks: Tensor, proj: nn.Module, *, num_samples: int,
                           temperature: float, generator: torch.Generator | None = None
                           ) -> tuple[Tensor, int]:
    """InfoNCE over RoI pixels (eq. 3), averaged over valid RoIs.

    feats: (R, C, H, W) RoI features; masks: (R, H, W) binary GT masks in RoI coordinates.
    Returns (loss, number of valid RoIs); loss is 0 (with grad) when no RoI is valid.
    """
    r, c, h, w = feats.shape
    fg = (masks.reshape(r, h * w) >= 0.5)
    n_fg = fg.sum(1)
    ok = (n_fg >= num_samples) & ((h * w - n_fg) >= num_samples)
    if not bool(ok.any()):
        return feats.sum() * 0.0 + sum(p.sum() for p in proj.parameters()) * 0.0, 0
    f = feats[ok].flatten(2).transpose(1, 2)  # (R', HW, C)
    fg = fg[ok]
    a_idx = sample_positions(fg, num_samples, generator)
    p_idx = sample_positions(fg, num_samples, generator)
    n_idx = sample_positions(~fg, num_samples, generator)

    def embed(idx: Tensor) -> Tensor:
        x = torch.gather(f, 1, idx[..., None].expand(-1, -1, c))
        return F.normalize(proj(x), dim=-1)

    za, zp, zn = embed(a_idx), embed(p_idx), embed(n_idx)
    s_ap = za @ zp.transpose(1, 2) / temperature               # (R', K, K): anchor u vs positive v
    s_an = za @ zn.transpose(1, 2) / temperature               # (R', K, K): anchor u vs negative w
    neg = torch.logsumexp(s_an, dim=2, keepdim=True)           # log sum_w exp(s_uw)
    # -log exp(s_uv) / (exp(s_uv) + sum_w exp(s_uw))
    loss = -(s_ap - torch.logaddexp(s_ap, neg.expand_as(s_ap)))
    return loss.mean(dim=(1, 2)).mean(), int(ok.sum())
