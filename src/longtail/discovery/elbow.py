"""Elbow method (Weng et al. §4.3, [46]): explained variation as a function of k, knee by Kneedle.

explained(k) = 1 - W_k / T, with W_k the k-means inertia (sum of squared distances to the assigned centre)
and T the total variation (inertia at k = 1). The knee is the k of maximal distance between the
normalised curve and the chord from its first to its last point (Satopaa et al. 2011, "Kneedle").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from longtail.common.errors import LongtailError


def knee_point(ks: Sequence[float], values: Sequence[float]) -> int:
    """Index of the knee of an increasing, concave-ish curve (Kneedle on the normalised curve)."""
    x = np.asarray(ks, float)
    y = np.asarray(values, float)
    if len(x) != len(y) or len(x) < 3:
        raise LongtailError(f"elbow: need at least 3 values of k (got {len(x)}); extend discovery.k_grid")
    if not np.all(np.diff(x) > 0):
        raise LongtailError(f"elbow: k grid must be strictly increasing, got {list(ks)}")
    if not np.all(np.isfinite(y)):
        raise LongtailError("elbow: explained-variation curve contains NaN/inf")
    xn = (x - x[0]) / (x[-1] - x[0])
    span = y[-1] - y[0]
    if span <= 0:  # flat curve: no knee, take the smallest k
        return 0
    yn = (y - y[0]) / span
    return int(np.argmax(yn - xn))


def elbow_curve(X, ks: Sequence[int], fit: Callable[[int], float], total: float) -> dict:
    """Run ``fit(k) -> inertia`` over ``ks``; return the curve and the chosen k."""
    ks = sorted({int(k) for k in ks})
    n = len(X)
    too_big = [k for k in ks if k > n]
    if too_big:
        raise LongtailError(f"discovery.k_grid has k = {too_big} larger than the number of points ({n}); "
                            f"lower the grid")
    if total <= 0:
        raise LongtailError("elbow: total variation is 0 (all embeddings identical); the embedding collapsed")
    inertia = [float(fit(k)) for k in ks]
    explained = [1.0 - w / total for w in inertia]
    i = knee_point(ks, explained)
    return {"k": ks, "inertia": inertia, "explained_variation": explained, "total_variation": float(total),
            "k_star": int(ks[i])}
