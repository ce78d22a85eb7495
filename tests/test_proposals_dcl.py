"""Dense contrastive loss (Chen et al. 2022, eq. 3-5) on constructed features with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from longtail.proposals.dcl_loss import dense_contrastive_loss, sample_positions


def test_sample_positions_uniform_without_replacement():
    g = torch.Generator().manual_seed(0)
    valid = torch.zeros(3, 100, dtype=torch.bool)
    valid[0, :40] = True
    valid[1, 50:] = True
    valid[2, ::3] = True
    idx = sample_positions(valid, 32, g)
    assert idx.shape == (3, 32)
    for r in range(3):
        assert valid[r, idx[r]].all()
        assert len(set(idx[r].tolist())) == 32
    # uniform: over many draws every valid position of row 0 is hit about equally often
    counts = torch.zeros(100)
    for _ in range(400):
        counts.index_add_(0, sample_positions(valid[:1], 32, g)[0], torch.ones(32))
    assert counts[40:].sum() == 0
    assert counts[:40].min() > 0.6 * 400 * 32 / 40


def _features(same: bool, k: int = 32, h: int = 14, c: int = 8):
    feats = torch.zeros(2, c, h, h)
    masks = torch.zeros(2, h, h)
    masks[:, :7, :] = 1.0                 # 98 foreground, 98 background pixels per RoI
    feats[:, 0] = 1.0                     # every pixel e_0 ...
    if not same:
        feats[:, 0] = masks               # ... or foreground e_0, background e_1 (orthogonal)
        feats[:, 1] = 1.0 - masks
    return feats, masks


def test_loss_known_values():
    k, tau = 32, 0.07
    feats, masks = _features(same=False)
    loss, n = dense_contrastive_loss(feats, masks, nn.Identity(), num_samples=k, temperature=tau)
    # s_ap = 1/tau, s_an = 0  ->  -log(e^{1/tau} / (e^{1/tau} + K)) = log(1 + K e^{-1/tau})
    assert n == 2
    assert loss.item() == pytest.approx(math.log1p(k * math.exp(-1 / tau)), abs=1e-6)  # float32
    feats, masks = _features(same=True)
    loss, n = dense_contrastive_loss(feats, masks, nn.Identity(), num_samples=k, temperature=tau)
    # indistinguishable foreground/background: s_ap = s_an = 1/tau  ->  log(1 + K)
    assert loss.item() == pytest.approx(math.log(1 + k), rel=1e-5)


def test_invalid_rois_are_skipped_and_projection_learns():
    torch.manual_seed(0)
    feats = torch.randn(3, 16, 14, 14, requires_grad=True)
    masks = torch.zeros(3, 14, 14)
    masks[0, :7] = 1.0                    # valid
    masks[1, :2, :10] = 1.0               # |M| = 20 < K: skipped
    masks[2] = 1.0                        # |M bar| = 0 < K: skipped
    masks[2, 0, :3] = 0.0
    proj = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    loss, n = dense_contrastive_loss(feats, masks, proj, num_samples=32, temperature=0.07)
    assert n == 1
    loss.backward()
    assert feats.grad[0].abs().sum() > 0
    assert feats.grad[1:].abs().sum() == 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    # no valid RoI: zero loss that still backpropagates (DDP-safe)
    loss, n = dense_contrastive_loss(feats[1:], masks[1:], proj, num_samples=32, temperature=0.07)
    assert n == 0 and loss.item() == 0.0 and loss.requires_grad


def test_optimising_the_loss_separates_instance_from_background():
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 14, 14)
    masks = torch.zeros(2, 14, 14)
    masks[:, 3:11, 3:11] = 1.0
    feats = feats + 0.5 * masks[:, None]          # weak signal in every channel
    proj = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    opt = torch.optim.Adam(proj.parameters(), lr=2e-2)
    first = None
    for _ in range(50):
        loss, _ = dense_contrastive_loss(feats, masks, proj, num_samples=32, temperature=0.07)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
