"""Report picture: image | edges | UCM | regions at three levels, one row per image."""

from __future__ import annotations

import os

import numpy as np

from longtail.hierarchy.tree import RegionTree


def mean_color(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Paint every region with its mean colour."""
    n = int(labels.max()) + 1
    flat = labels.ravel()
    cnt = np.maximum(np.bincount(flat, minlength=n), 1)
    out = np.stack([np.bincount(flat, image[..., c].ravel().astype(float), n) / cnt for c in range(3)], 1)
    return out[labels].astype(np.uint8)


def hierarchy_grid(rows: list[tuple[str, np.ndarray, np.ndarray, RegionTree]], levels: list[float],
                   path: str | os.PathLike) -> None:
    """rows: (title, RGB image, edge map, tree); ``levels``: UCM thresholds of the cuts. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longtail.common.io import atomic_path

    ncol = 3 + len(levels)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.2 * ncol, 1.8 * len(rows) + 0.3), squeeze=False)
    for r, (title, im, edges, tree) in enumerate(rows):
        ucm = tree.ucm2()[2::2, 2::2]
        panels = [(im, "image"), (edges, "HED edges"), (ucm, "OWT-UCM")]
        for t in levels:
            lab = tree.cut(t)
            panels.append((mean_color(im, lab), f"UCM <= {t:g}: {int(lab.max()) + 1} regions"))
        for c, (p, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(p, cmap="gray" if p.ndim == 2 else None, vmin=0, vmax=1 if p.ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=7)
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
