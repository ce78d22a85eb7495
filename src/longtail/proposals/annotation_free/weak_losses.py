"""FreeSOLO's weak mask losses (Wang et al. 2022, Eq. 5-7) and BoxInst's pairwise colour-affinity term
(Tian et al. 2021), in plain torch (used by ``freesolo_head.FreeSOLOv2Head``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def neighbour_offsets(kernel_size: int, dilation: int) -> list[tuple[int, int]]:
    """(dy, dx) of the k*k - 1 neighbours (centre excluded), row-major as in ``F.unfold``."""
    r = kernel_size // 2
    return [(dy * dilation, dx * dilation) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy or dx]


def shifted(xp: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """The neighbour at (dy, dx) of every pixel, from ``xp`` = x zero-padded by ``pad`` on each side."""
    return xp[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def unfold_wo_center(x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, k*k - 1, H, W): the neighbours of every pixel, centre excluded (zero padding).

    Slicing a padded copy instead of ``F.unfold`` (im2col is ~50x slower on CPU for many masks)."""
    h, w = x.shape[-2:]
    pad = (kernel_size // 2) * dilation
    xp = F.pad(x, (pad, pad, pad, pad))
    return torch.stack([shifted(xp, pad, dy, dx, h, w) for dy, dx in neighbour_offsets(kernel_size, dilation)], 2)


def color_similarity(lab: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """(N, 3, H, W) Lab images -> (N, k*k - 1, H, W) similarity exp(-||c_i - c_j|| / 2) to each neighbour."""
    diff = lab[:, :, None] - unfold_wo_center(lab, kernel_size, dilation)
    return torch.exp(-torch.norm(diff, dim=1) * 0.5)


def pairwise_log_same(mask_logits: torch.Tensor, kernel_size: int = 3, dilation: int = 2) -> torch.Tensor:
    """(N, H, W) logits -> (N, k*k - 1, H, W) -log P(pixel and neighbour have the same label)."""
    x = mask_logits[:, None]
    log_fg, log_bg = F.logsigmoid(x), F.logsigmoid(-x)
    same_fg = log_fg[:, :, None] + unfold_wo_center(log_fg, kernel_size, dilation)
    same_bg = log_bg[:, :, None] + unfold_wo_center(log_bg, kernel_size, dilation)
    return -torch.logaddexp(same_fg, same_bg)[:, 0]


def pairwise_loss(mask_logits: torch.Tensor, weights: torch.Tensor, kernel_size: int = 3, dilation: int = 2
                  ) -> torch.Tensor:
    """BoxInst's L_pairwise: sum(w * -log P(same)) / sum(w), ``weights`` (N, k*k - 1, H, W), one neighbour at a
    time (no (N, k*k - 1, H, W) intermediate for the logits)."""
    h, w = mask_logits.shape[-2:]
    pad = (kernel_size // 2) * dilation
    log_fg, log_bg = F.logsigmoid(mask_logits), F.logsigmoid(-mask_logits)
    fg_p, bg_p = F.pad(log_fg, (pad, pad, pad, pad)), F.pad(log_bg, (pad, pad, pad, pad))
    total = mask_logits.new_zeros(())
    for j, (dy, dx) in enumerate(neighbour_offsets(kernel_size, dilation)):
        wj = weights[:, j]
        if not bool((wj > 0).any()):
            continue
        same = torch.logaddexp(log_fg + shifted(fg_p, pad, dy, dx, h, w), log_bg + shifted(bg_p, pad, dy, dx, h, w))
        total = total - (same * wj).sum()
    return total / weights.sum().clamp(min=1.0)


def dice_1d(x: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-instance Dice loss (BoxInst's dice_coefficient) of (N, L) projections."""
    inter = (x * target).sum(1)
    union = (x ** 2).sum(1) + (target ** 2).sum(1) + eps
    return 1.0 - 2.0 * inter / union


def projection_losses(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_max-proj, L_avg-proj) per instance for (N, H, W) mask probabilities and coarse masks (Eq. 5-6)."""
    t = targets.float()
    l_max = dice_1d(probs.amax(1), t.amax(1)) + dice_1d(probs.amax(2), t.amax(2))
    l_avg = dice_1d(probs.mean(1), t.mean(1)) + dice_1d(probs.mean(2), t.mean(2))
    return l_max, l_avg


def box_bitmasks(targets: torch.Tensor) -> torch.Tensor:
    """(N, H, W) binary masks -> (N, H, W) filled bounding boxes."""
    out = torch.zeros_like(targets, dtype=torch.float32)
    for i, t in enumerate(targets):
        ys, xs = torch.nonzero(t, as_tuple=True)
        if len(ys):
            out[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 1.0
    return out


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> Lab (skimage, D65)."""
    from skimage.color import rgb2lab

    arr = (rgb.detach().clamp(0, 255) / 255.0).permute(0, 2, 3, 1).cpu().numpy()
    lab = np.stack([rgb2lab(a) for a in arr]).astype(np.float32)
    return torch.from_numpy(lab).permute(0, 3, 1, 2).to(rgb.device)


