"""Figures of the report as PNG bytes (matplotlib, Agg): Poincaré-disk scatter, elbow curves, mask gallery."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plane_view(Z: np.ndarray, poincare: bool, curvature: float = 1.0) -> np.ndarray:
    """A 2-d view of (N, d) embeddings for the scatter: unchanged for d <= 2; otherwise the tangent vectors at the
    origin (geoopt's logmap0 on the ball) projected on their top-2 principal directions (uncentred, so the origin
    stays the origin) and mapped back into the 2-d ball (expmap0). Norms shrink in the projection: points look
    nearer the origin than they are."""
    if Z.ndim != 2 or Z.shape[1] <= 2 or len(Z) == 0:
        return Z
    import geoopt
    import torch

    ball = geoopt.PoincareBall(c=curvature)
    T = ball.logmap0(torch.from_numpy(Z).double()).numpy() if poincare else np.asarray(Z, np.float64)
    _, _, vt = np.linalg.svd(T, full_matrices=False)
    P = T @ vt[:2].T
    return (ball.expmap0(torch.from_numpy(P)).numpy() if poincare else P).astype(Z.dtype)


def disk_scatter(Z: np.ndarray, cls: np.ndarray, names: dict[int, str], A: np.ndarray | None = None,
                 Acat: np.ndarray | None = None, title: str = "", max_points: int = 20000, top: int = 15,
                 seed: int = 0, disk: bool = True) -> bytes:
    """Embeddings coloured by the GT category of their proposal (top categories; grey = other / background)."""
    plt = _plt()
    rng = np.random.default_rng(seed)
    if len(Z) > max_points:
        keep = rng.choice(len(Z), max_points, replace=False)
        Z, cls = Z[keep], cls[keep]
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    if disk:
        t = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(t), np.sin(t), color="black", lw=0.8)
    bg = cls < 0
    ax.scatter(Z[bg, 0], Z[bg, 1], s=3, c="#cccccc", label="no GT match", linewidths=0)
    vals, counts = np.unique(cls[~bg], return_counts=True)
    order = vals[np.argsort(-counts)]
    cmap = plt.get_cmap("tab20")
    shown = order[:top]
    other = ~bg & ~np.isin(cls, shown)
    ax.scatter(Z[other, 0], Z[other, 1], s=4, c="#888888", label="other categories", linewidths=0)
    for i, c in enumerate(shown):
        m = cls == c
        ax.scatter(Z[m, 0], Z[m, 1], s=6, color=cmap(i % 20), label=names.get(int(c), str(c)), linewidths=0)
        if A is not None and Acat is not None:
            a = Acat == c
            ax.scatter(A[a, 0], A[a, 1], s=60, marker="*", color=cmap(i % 20), edgecolors="black",
                       linewidths=0.4)
    ax.set_aspect("equal")
    if disk:
        ax.set_xlim(-1.02, 1.02)
        ax.set_ylim(-1.02, 1.02)
    ax.set_title(title + "  (stars: GT anchors)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2)
    return _png(fig)


def elbow_plot(curves: dict[str, dict]) -> bytes:
    """Explained variation vs k for each run, the elbow k* marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, e in curves.items():
        ax.plot(e["k"], e["explained_variation"], marker="o", ms=3, label=name)
        if e.get("k_star") in e["k"]:
            i = e["k"].index(e["k_star"])
            ax.scatter([e["k"][i]], [e["explained_variation"][i]], s=80, facecolors="none", edgecolors="red")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("explained variation 1 - W_k / T")
    ax.set_title("Elbow method (red circle: knee k*)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def mask_tile(image_path: Path, rle: dict, size: int) -> np.ndarray:
    """Crop of the proposal's box with the mask highlighted (other pixels dimmed), size x size RGB."""
    from PIL import Image

    from longtail.common.masks import decode_mask

    img = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)
    m = decode_mask(rle)
    if m.shape != img.shape[:2] or not m.any():
        return np.full((size, size, 3), 255, np.uint8)
    ys, xs = np.nonzero(m)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad = int(0.1 * max(y1 - y0, x1 - x0))
    y0, x0 = max(0, y0 - pad), max(0, x0 - pad)
    y1, x1 = min(img.shape[0], y1 + pad), min(img.shape[1], x1 + pad)
    crop = img[y0:y1, x0:x1].copy()
    mc = m[y0:y1, x0:x1]
    crop[~mc] = crop[~mc] * 0.3 + 255 * 0.1
    tile = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
    scale = size / max(tile.width, tile.height)   # up- or down-scale to the tile, keeping the aspect ratio
    tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))))
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(tile, ((size - tile.width) // 2, (size - tile.height) // 2))
    return np.asarray(out)


def gallery(rows: Sequence[tuple[str, list[np.ndarray]]], size: int) -> bytes:
    """One row per cluster: its title and its mask tiles."""
    plt = _plt()
    n = max(1, max((len(t) for _, t in rows), default=1))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * size / 60, len(rows) * size / 55), squeeze=False)
    for r, (title, tiles) in enumerate(rows):
        for j in range(n):
            ax = axes[r][j]
            ax.axis("off")
            if j < len(tiles):
                ax.imshow(tiles[j])
        axes[r][0].set_title(title, fontsize=7, loc="left")
    return _png(fig)
