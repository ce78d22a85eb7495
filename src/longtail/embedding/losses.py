"""Triplet losses of Weng et al. 2021, Eq. 1, 3, 4, 5.

All three are hinge losses with margin alpha, averaged (the paper sums over proposals; the mean keeps the
learning rate independent of the batch size):

* Eq. 1  L_mask   = mean_j max(0, alpha - d(z_full, z_bg) + d(z_full, z_fg))
* Eq. 3  L_object = mean_{j,n} max(0, alpha + d(z_fg, z^+_fg) - d(z_fg, z^-_fg,n)), one term per negative.
  The paper prints the signs of the two distances swapped (that version would pull negatives in and push
  positives out); we use the standard triplet form, like Eq. 1.
* Eq. 4  L_hier   = mean_j max(0, alpha - d(z_child, o) + d(z_fg, o)): the parent is nearer the origin.
* Eq. 5  L = beta L_mask + gamma L_object + L_hier (a term can be switched off for the ablations).

Inputs are cast to float64 and projected strictly inside the ball first, so points on or next to the
boundary (norm 1 - 1e-7) give finite losses and gradients.
"""

from __future__ import annotations

import torch

from longtail.embedding.model import Space

LOSS_TERMS = ("mask", "object", "hierarchical")


def _prep(space: Space, *zs: torch.Tensor) -> list[torch.Tensor]:
    return [space.project(z.double()) for z in zs]


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else x.sum()  # empty -> 0 with a graph


def loss_mask(space: Space, z_full: torch.Tensor, z_fg: torch.Tensor, z_bg: torch.Tensor,
              alpha: float) -> torch.Tensor:
    """Eq. 1."""
    z_full, z_fg, z_bg = _prep(space, z_full, z_fg, z_bg)
    return _mean(torch.relu(alpha - space.dist(z_full, z_bg) + space.dist(z_full, z_fg)))


def loss_object(space: Space, z_anchor: torch.Tensor, z_pos: torch.Tensor, z_neg: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """Eq. 3 (standard sign). z_anchor, z_pos: (A, d); z_neg: (A, n, d)."""
    z_anchor, z_pos, z_neg = _prep(space, z_anchor, z_pos, z_neg)
    d_pos = space.dist(z_anchor, z_pos)[:, None]
    d_neg = space.dist(z_anchor[:, None, :].expand_as(z_neg), z_neg)
    return _mean(torch.relu(alpha + d_pos - d_neg))


def loss_hierarchical(space: Space, z_parent: torch.Tensor, z_child: torch.Tensor,
                      alpha: float) -> torch.Tensor:
    """Eq. 4: the child at least alpha farther from the origin than its parent."""
    z_parent, z_child = _prep(space, z_parent, z_child)
    return _mean(torch.relu(alpha - space.dist0(z_child) + space.dist0(z_parent)))


def total_loss(terms: dict[str, torch.Tensor], beta: float, gamma: float,
               enabled: tuple[str, ...] = LOSS_TERMS) -> torch.Tensor:
    """Eq. 5 over the enabled terms."""
    weight = {"mask": beta, "object": gamma, "hierarchical": 1.0}
    out = None
    for name in enabled:
        t = weight[name] * terms[name]
        out = t if out is None else out + t
    if out is None:
        raise ValueError("no loss term enabled")
    return out
