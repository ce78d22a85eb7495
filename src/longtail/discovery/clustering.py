"""Clustering of the proposal embeddings (Weng et al. 3.3, 4.3): k fixed or by the elbow over a grid, and the
``clusters.npz`` that `longtail cluster` writes and `longtail evaluate` reads."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.common import LongtailError

log = logging.getLogger(__name__)


def choose_k(Z: np.ndarray, space: str, curvature: float, cfg: dict, seed: int) -> tuple[int, dict, object]:
    """k fixed (discovery.k = int) or by the elbow over discovery.k_grid; returns (k, elbow dict, model)."""
    from longtail.discovery.elbow import elbow_curve
    from longtail.discovery.spaces import make_kmeans, total_var

    models: dict[int, object] = {}
    grid_labels: dict[int, np.ndarray] = {}
    k_cfg = cfg["k"]
    if k_cfg != "elbow" and int(k_cfg) > len(Z):
        raise LongtailError(f"discovery.k = {k_cfg} is larger than the number of proposals ({len(Z)}); "
                            f"lower it or use k: elbow")
    grid = sorted(k for k in cfg["k_grid"] if k <= len(Z))
    if len(grid) < len(cfg["k_grid"]):
        log.warning("discovery.k_grid: dropped k > %d (number of points) from the elbow curve", len(Z))
    if len(grid) < 3:
        raise LongtailError(f"discovery.k_grid: fewer than 3 values of k are <= the number of proposals "
                            f"({len(Z)}); lower the grid")
    bar = tqdm(total=len(grid), desc="elbow", unit="k", leave=False)

    def fit(k):
        m = make_kmeans(space, k, cfg, seed).fit(Z)
        # one int32 copy of the labels (scikit-learn's KMeans dtype), shared by the model and the grid
        m.labels_ = grid_labels[k] = np.asarray(m.labels_, np.int32)
        models[k] = m
        bar.update(1)
        return m.inertia_

    elbow = elbow_curve(Z, grid, fit, total_var(Z, space, curvature))
    bar.close()
    k = elbow["k_star"] if k_cfg == "elbow" else int(k_cfg)
    model = models.get(k) or make_kmeans(space, k, cfg, seed).fit(Z)
    elbow["labels"] = {kk: grid_labels[kk] for kk in elbow["k"]}
    return k, elbow, model


def load_clusters(path: str | Path, emb: dict, emb_path: str | Path = "the embeddings"
                  ) -> tuple[np.ndarray, int, dict[int, np.ndarray] | None]:
    """(labels, k, {k: labels} over the elbow grid or None) of a ``clusters.npz`` made from ``emb``."""
    cpath = Path(path)
    if not cpath.exists():
        raise LongtailError(f"clusters not found: {cpath}; run `longtail cluster` first")
    with np.load(cpath, allow_pickle=False) as f:
        labels, k = f["labels"].astype(np.int64), int(f["k"])
        grid = ({int(kk): f["grid_labels"][i] for i, kk in enumerate(f["grid_k"])} if "grid_k" in f.files
                else None)
        if not np.array_equal(f["proposal_ids"], emb["proposal_ids"]):
            raise LongtailError(f"{cpath} was made from other embeddings than {emb_path}; re-run "
                                f"`longtail cluster`")
    return labels, k, grid
