"""The two embedding spaces of the paper (Poincaré ball, Euclidean ablation): distances, k-means, variation."""

from __future__ import annotations

import numpy as np
import torch

from longtail.common.errors import LongtailError
from longtail.discovery.kmeans import (CHUNK_ROWS, HyperbolicKMeans, check_points, poincare_dist,
                                      total_variation)

SPACES = ("poincare", "euclidean")


def check_space(space: str) -> str:
    if space not in SPACES:
        raise LongtailError(f"embedding space {space!r} unknown; expected one of {SPACES}")
    return space


def check_embeddings(Z: np.ndarray, space: str, curvature: float = 1.0, what: str = "embeddings") -> None:
    Zt = torch.as_tensor(np.asarray(Z, np.float64))
    if space == "poincare":
        check_points(Zt, curvature, what)
    else:
        if Zt.ndim != 2 or Zt.shape[0] == 0:
            raise LongtailError(f"{what}: expected a non-empty (N, d) array, got shape {tuple(Zt.shape)}")
        bad = ~torch.isfinite(Zt).all(1)
        if bad.any():
            raise LongtailError(f"{what}: {int(bad.sum())} rows contain NaN/inf; re-run the embedding stage")


def pairwise_dist(A: np.ndarray, B: np.ndarray, space: str, curvature: float = 1.0) -> np.ndarray:
    """(len(A), len(B)) distances in the given space (float64)."""
    a = torch.as_tensor(np.asarray(A, np.float64))
    b = torch.as_tensor(np.asarray(B, np.float64))
    if space == "poincare":
        return poincare_dist(a[:, None, :], b[None, :, :], curvature).numpy()
    return torch.cdist(a, b).numpy()


def make_kmeans(space: str, k: int, cfg: dict, seed: int):
    """HyperbolicKMeans for the Poincaré ball, scikit-learn KMeans for the Euclidean ablation.

    ``cfg`` = the ``discovery`` section (every key the schema requires; no defaults here)."""
    if space == "poincare":
        return HyperbolicKMeans(k, init=cfg["init"], n_init=cfg["n_init"], max_iter=cfg["max_iter"], tol=cfg["tol"],
                                random_state=seed, centroid=cfg["centroid"], device=cfg["device"],
                                dtype=cfg["dtype"], max_chunk_bytes=int(cfg["max_chunk_mb"]) << 20)
    from sklearn.cluster import KMeans

    return KMeans(k, init=cfg["init"], n_init=cfg["n_init"], max_iter=cfg["max_iter"], tol=cfg["tol"],
                  random_state=seed)


def total_var(Z: np.ndarray, space: str, curvature: float = 1.0) -> float:
    if space == "poincare":
        return total_variation(Z, curvature)
    Z = np.asarray(Z, np.float64)
    return float(((Z - Z.mean(0)) ** 2).sum())


def random_like(Z: np.ndarray, space: str, seed: int, curvature: float = 1.0) -> np.ndarray:
    """Random-embedding baseline with the same spread: Gaussian in the tangent space at 0 (mapped into the
    ball for the Poincaré space) with the per-axis std of the real embeddings. The (N, d) temporaries come
    ``CHUNK_ROWS`` rows at a time (the same draws and values as one pass)."""
    rng = np.random.default_rng(seed)
    Z = np.asarray(Z, np.float64)
    out = np.empty(Z.shape)
    if space == "poincare":
        import geoopt

        ball = geoopt.PoincareBall(c=curvature)
        v = np.empty(Z.shape)
        for s in range(0, len(Z), CHUNK_ROWS):
            v[s:s + CHUNK_ROWS] = ball.logmap0(torch.as_tensor(Z[s:s + CHUNK_ROWS])).numpy()
        sd, mu = v.std(0), v.mean(0)
        del v
        for s in range(0, len(Z), CHUNK_ROWS):
            r = rng.normal(size=out[s:s + CHUNK_ROWS].shape) * sd + mu
            out[s:s + CHUNK_ROWS] = ball.projx(ball.expmap0(torch.as_tensor(r))).numpy()
        return out
    sd, mu = Z.std(0), Z.mean(0)
    for s in range(0, len(Z), CHUNK_ROWS):
        out[s:s + CHUNK_ROWS] = rng.normal(size=out[s:s + CHUNK_ROWS].shape) * sd + mu
    return out
