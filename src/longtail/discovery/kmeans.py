"""Hyperbolic k-means in the Poincaré ball (Weng et al. 2021, §3.3), scikit-learn style.

* Distance (Eq. 2, curvature -c): d(x, y) = arcosh(1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2))) / sqrt(c).
* Assignment: for a fixed x, d(x, c_k) is monotone in the surrogate s(x, c_k) = |x - c_k|^2 / (1 - c|c_k|^2),
  which is one matrix product of augmented vectors  [x, |x|^2, 1] . [-2c_k, 1, |c_k|^2] / (1 - c|c_k|^2),
  computed in row chunks so memory stays bounded (``max_chunk_bytes``). On the CPU in low dimension an exact
  k-d tree search (``assign_kdtree``) is used instead: same answer, far less work.
* Update: Einstein midpoint in the Klein model (closed form, O(N d)); ``centroid="frechet"`` refines it to
  the Fréchet (Karcher) mean with geoopt's exp/log maps.
* Seeding: k-means++ with the hyperbolic distance.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from longtail.common.errors import LongtailError

# Points are kept strictly inside the ball (radius 1/sqrt(c)) by this margin on |x|^2 c.
BALL_EPS = {torch.float32: 1e-6, torch.float64: 1e-12}

#: rows per chunk of every O(N) temporary of the CPU loop and the checks (k-d tree, centres, inertia, seeding)
CHUNK_ROWS = 1 << 16


def _as_tensor(X, device, dtype) -> torch.Tensor:
    if isinstance(X, torch.Tensor):
        return X.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(X), device=device, dtype=dtype)


def check_points(X: torch.Tensor, c: float = 1.0, what: str = "X") -> None:
    """Finite, 2-D, inside the ball of curvature -c; LongtailError otherwise."""
    if X.ndim != 2:
        raise LongtailError(f"{what}: expected an (N, d) array of points, got shape {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise LongtailError(f"{what}: no points to cluster (0 rows); check the embeddings/proposals upstream")
    # row chunks: no (N, d) temporaries
    bad = torch.cat([~torch.isfinite(x).all(dim=1) for x in X.split(CHUNK_ROWS)])
    if bad.any():
        raise LongtailError(f"{what}: {int(bad.sum())} of {X.shape[0]} points contain NaN/inf (first row "
                            f"{int(bad.nonzero()[0])}); re-run the embedding stage or drop those rows")
    n2 = torch.cat([(x * x).sum(1) * c for x in X.split(CHUNK_ROWS)])
    if (n2 >= 1).any():
        raise LongtailError(f"{what}: {int((n2 >= 1).sum())} points lie on/outside the Poincaré ball "
                            f"(max c|x|^2 = {float(n2.max()):.6g}); embeddings must be in the open ball")


def sqnorm(x):
    """|x|^2 over the last axis (column by column for small d: much faster than .sum(-1) there)."""
    d = x.shape[-1]
    if d > 8:
        return (x * x).sum(-1)
    out = x[..., 0] * x[..., 0]
    for j in range(1, d):
        out = out + x[..., j] * x[..., j]
    return out


def poincare_dist(x: torch.Tensor, y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """Elementwise (broadcast) Poincaré distance, Eq. 2, numerically safe near the boundary."""
    diff2 = sqnorm(x - y)
    eps = BALL_EPS.get(x.dtype, 1e-6)
    den = (1 - c * sqnorm(x)).clamp_min(eps) * (1 - c * sqnorm(y)).clamp_min(eps)
    z = 2 * c * diff2 / den
    # arcosh(1 + z) = log(1 + z + sqrt(z (z + 2))): exact for small z
    return torch.log1p(z + torch.sqrt(z * (z + 2))) / math.sqrt(c)


def klein_to_poincare(k: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    return k / (1 + torch.sqrt((1 - c * (k * k).sum(-1, keepdim=True)).clamp_min(0)))


def einstein_midpoints(X: torch.Tensor, labels: torch.Tensor, n_clusters: int, c: float = 1.0,
                       weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Einstein midpoint of every cluster, returned in the Poincaré ball; also the cluster sizes.

    In the Klein model m = sum(g_i k_i) / sum(g_i) with the Lorentz factor g_i = 1/sqrt(1 - c|k_i|^2).
    From a Poincaré point x: g = (1 + c|x|^2)/(1 - c|x|^2) and g k = 2x/(1 - c|x|^2) (no cancellation).
    ``CHUNK_ROWS`` rows at a time (``index_add_`` adds in row order: on the CPU the same sums as one pass).
    """
    num = torch.zeros(n_clusters, X.shape[1], dtype=X.dtype, device=X.device)
    den = torch.zeros(n_clusters, dtype=X.dtype, device=X.device)
    counts = torch.zeros(n_clusters, dtype=torch.long, device=X.device)
    for s in range(0, X.shape[0], CHUNK_ROWS):
        x, lab = X[s:s + CHUNK_ROWS], labels[s:s + CHUNK_ROWS]
        n2 = c * sqnorm(x)
        inv = 1.0 / (1 - n2).clamp_min(BALL_EPS.get(X.dtype, 1e-6))
        g = (1 + n2) * inv
        gk = 2 * x * inv[:, None]
        if weights is not None:
            g = g * weights[s:s + CHUNK_ROWS]
            gk = gk * weights[s:s + CHUNK_ROWS, None]
        num.index_add_(0, lab, gk)
        den.index_add_(0, lab, g)
        counts += torch.bincount(lab, minlength=n_clusters)
    k = num / den.clamp_min(torch.finfo(X.dtype).tiny)[:, None]
    return klein_to_poincare(k, c), counts


def _einstein_np(X: np.ndarray, labels: np.ndarray, K: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of ``einstein_midpoints``, ``CHUNK_ROWS`` rows at a time: ``np.add.at`` adds in row order
    as one ``bincount`` over all rows would, so the centres do not depend on the chunking (to the bit)."""
    den = np.zeros(K)
    num = np.zeros((X.shape[1], K))
    for s in range(0, len(X), CHUNK_ROWS):
        x, lab = X[s:s + CHUNK_ROWS], labels[s:s + CHUNK_ROWS]
        n2 = c * np.einsum("nd,nd->n", x, x)
        inv = 1.0 / np.maximum(1 - n2, 1e-300)
        np.add.at(den, lab, (1 + n2) * inv)
        for j in range(X.shape[1]):
            np.add.at(num[j], lab, 2 * x[:, j] * inv)
    k = num.T / np.maximum(den, 1e-300)[:, None]
    p = k / (1 + np.sqrt(np.maximum(1 - c * np.einsum("kd,kd->k", k, k), 0)))[:, None]
    return p, np.bincount(labels, minlength=K)


def _pdist_np(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Rowwise Poincaré distance of two (N, d) float64 arrays."""
    diff = x - y
    den = np.maximum(1 - c * np.einsum("nd,nd->n", x, x), 1e-300) * \
        np.maximum(1 - c * np.einsum("nd,nd->n", y, y), 1e-300)
    z = 2 * c * np.einsum("nd,nd->n", diff, diff) / den
    return np.log1p(z + np.sqrt(z * (z + 2))) / math.sqrt(c)


def frechet_means(X: torch.Tensor, labels: torch.Tensor, init: torch.Tensor, c: float = 1.0,
                  n_steps: int = 10, tol: float = 1e-7) -> torch.Tensor:
    """Fréchet (Karcher) mean of every cluster: m <- exp_m(mean_i log_m(x_i)), all clusters at once (geoopt)."""
    import geoopt

    ball = geoopt.PoincareBall(c=c)
    m = init.clone()
    K = init.shape[0]
    counts = torch.bincount(labels, minlength=K).clamp_min(1).to(X.dtype)
    for _ in range(n_steps):
        v = ball.logmap(m[labels], X)
        step = torch.zeros_like(m).index_add_(0, labels, v) / counts[:, None]
        m = ball.projx(ball.expmap(m, step))
        if float(ball.norm(m, step).max()) < tol:
            break
    return m


def _augmented_centers(C: torch.Tensor, c: float) -> torch.Tensor:
    """(K, d+2): rows [-2 c_k, 1, |c_k|^2] / (1 - c|c_k|^2) so that [x, |x|^2, 1] @ row = s(x, c_k)."""
    n2 = (C * C).sum(1, keepdim=True)
    inv = 1.0 / (1 - c * n2).clamp_min(BALL_EPS.get(C.dtype, 1e-6))
    return torch.cat([-2 * C, torch.ones_like(n2), n2], dim=1) * inv


def assign_matmul(X: torch.Tensor, C: torch.Tensor, c: float = 1.0, max_chunk_bytes: int = 256 << 20,
                  Xaug: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest centre (hyperbolic distance) for every row of X by chunked matrix products (CPU or GPU)."""
    N, K = X.shape[0], C.shape[0]
    if Xaug is None:
        Xaug = augment_points(X)
    Caug_t = _augmented_centers(C, c).T.contiguous()
    chunk = max(1, int(max_chunk_bytes // (K * X.element_size())))
    labels = torch.empty(N, dtype=torch.long, device=X.device)
    for s in range(0, N, chunk):
        labels[s:s + chunk] = torch.argmin(Xaug[s:s + chunk] @ Caug_t, dim=1)
    return labels


#: Euclidean nearest centres checked exactly by the k-d tree assignment
KDTREE_CANDIDATES = 4


def _nearest_np(X: np.ndarray, C: np.ndarray, max_chunk_bytes: int) -> np.ndarray:
    """numpy version of ``assign_matmul`` (unit ball), for the few rows the k-d tree cannot certify."""
    Caug = _augmented_centers(torch.from_numpy(C), 1.0).numpy().T
    Xaug = np.concatenate([X, np.einsum("nd,nd->n", X, X)[:, None], np.ones((len(X), 1))], 1)
    chunk = max(1, int(max_chunk_bytes // (len(C) * 8)))
    return np.concatenate([np.argmin(Xaug[s:s + chunk] @ Caug, 1) for s in range(0, len(X), chunk)]
                          ).astype(np.int64)


def _lower_bound_at_euclid(e: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Smallest hyperbolic distance (unit ball) from a point of norm s to any point at Euclidean distance >= e.

    For a fixed |x - y| = e, d(x, y) grows with |y|, so the minimum is at |y| = |s - e| (the inward point),
    and it grows with e. Infinite when no point of the ball is that far (e >= 1 + s).
    """
    y2 = (s - e) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = 2 * e * e / (np.maximum(1 - s * s, 1e-300) * (1 - y2))
    z = np.where(y2 < 1, z, np.inf)
    return np.log1p(z + np.sqrt(z * (z + 2)))


def assign_kdtree(X: np.ndarray, C: np.ndarray, c: float = 1.0, max_chunk_bytes: int = 64 << 20,
                  workers: int = -1, return_bounds: bool = False):
    """Exact nearest centre for low dimension on the CPU, via a Euclidean k-d tree in the Poincaré ball.

    The ``KDTREE_CANDIDATES`` Euclidean-nearest centres are ranked by the exact hyperbolic distance (best: r).
    Every other centre is at Euclidean distance >= e (the farthest candidate's), hence at hyperbolic distance
    >= L(e) = arcosh(1 + 2e^2 / ((1 - s^2)(1 - (s - e)^2))) (s = |x|, ``_lower_bound_at_euclid``). If r <= L(e)
    the answer is exact; the other rows (rare) go through the matrix-product assignment.

    ``return_bounds``: also the distance to the assigned centre and a lower bound of the distance to every
    other centre.
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(C, np.float64) * math.sqrt(c))
    parts = [_assign_kdtree_rows(X[s:s + CHUNK_ROWS], C, c, tree, max_chunk_bytes, workers)
             for s in range(0, len(X), CHUNK_ROWS)]
    labels = np.concatenate([p[0] for p in parts])
    if not return_bounds:
        return labels
    return labels, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _assign_kdtree_rows(X, C, c, tree, max_chunk_bytes, workers):
    sc = math.sqrt(c)
    X = np.asarray(X, np.float64) * sc
    C = np.asarray(C, np.float64) * sc
    N, K = len(X), len(C)
    kq = min(KDTREE_CANDIDATES, K)
    dE, idx = tree.query(X, k=kq, workers=workers if N >= 20000 else 1)   # threads only pay off on large N
    if kq == 1:
        idx, dE = idx[:, None], dE[:, None]
    # exact distances to the candidates (unit ball)
    Cn = C[idx]                                             # (N, kq, d)
    diff = X[:, None, :] - Cn
    x2 = np.einsum("nd,nd->n", X, X)
    z = 2 * np.einsum("nkd,nkd->nk", diff, diff) / (np.maximum(1 - x2, 1e-300)[:, None] *
                                                      np.maximum(1 - np.einsum("nkd,nkd->nk", Cn, Cn), 1e-300))
    dh = np.log1p(z + np.sqrt(z * (z + 2)))
    order = np.argsort(dh, axis=1, kind="stable")
    rows = np.arange(N)
    labels = idx[rows, order[:, 0]].astype(np.int64)
    r = dh[rows, order[:, 0]]
    second = dh[rows, order[:, 1]] if kq > 1 else np.full(N, np.inf)
    if kq < K:
        beyond = _lower_bound_at_euclid(dE[:, -1], np.sqrt(x2))
        lower = np.minimum(second, beyond)
        unsure = np.flatnonzero(r > beyond)
        if len(unsure):
            lab = _nearest_np(X[unsure], C, max_chunk_bytes)
            labels[unsure] = lab
            r[unsure] = _pdist_np(X[unsure], C[lab])
            lower[unsure] = r[unsure]   # no second-nearest bound computed there
    else:
        lower = second
    return labels, r / sc, lower / sc


def augment_points(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, (X * X).sum(1, keepdim=True), torch.ones_like(X[:, :1])], dim=1)


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, c: float, generator: torch.Generator,
                    n_local_trials: int = 1) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with D(x) = hyperbolic distance to the nearest seed.

    Distances to each new seed on the hyperboloid: cosh d = X0 C0 - Xv . Cv (float64 numpy, O(N d) a seed).
    Held: the hyperboloid points and D (cosh D, D^2); every other temporary is ``CHUNK_ROWS`` rows.
    """
    Xs = X.detach().cpu().numpy()
    N = X.shape[0]
    H0, Hv = np.empty(N), np.empty((N, X.shape[1]))
    for s in range(0, N, CHUNK_ROWS):
        x = np.asarray(Xs[s:s + CHUNK_ROWS], np.float64) * math.sqrt(c)
        n2 = (x * x).sum(1)
        inv = 1.0 / np.maximum(1 - n2, 1e-300)
        H0[s:s + CHUNK_ROWS], Hv[s:s + CHUNK_ROWS] = (1 + n2) * inv, 2 * x * inv[:, None]
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator).item()))

    def cosh_to(j, s):
        return H0[s:s + CHUNK_ROWS] * H0[j] - Hv[s:s + CHUNK_ROWS] @ Hv[j]

    def d2(u):
        return np.arccosh(np.maximum(u, 1.0)) ** 2 / c

    # block sums make each D^2 draw O(N / B + B) instead of a full cumsum
    B = max(1, int(math.sqrt(N)))
    nb = -(-N // B)
    full = N // B * B

    def draw(closest, r):
        # the sums of a zero-padded (nb, B) copy, without the copy: only the last block is padded
        blocks = np.concatenate([closest[:full].reshape(-1, B).sum(1),
                                 np.pad(closest[full:], (0, nb * B - N)).reshape(-1, B).sum(1)])
        cb = np.cumsum(blocks)
        out = []
        for u in r * cb[-1]:
            b = min(int(np.searchsorted(cb, u, side="right")), nb - 1)
            rest = u - (cb[b - 1] if b else 0.0)
            seg = closest[b * B:(b + 1) * B]
            out.append(min(b * B + int(np.searchsorted(np.cumsum(seg), rest, side="right")), N - 1))
        return out, cb[-1]

    idx = int(rng.integers(N))
    centers = [idx]
    closest_u, closest = np.empty(N), np.empty(N)
    for s in range(0, N, CHUNK_ROWS):
        closest_u[s:s + CHUNK_ROWS] = cosh_to(idx, s)
        closest[s:s + CHUNK_ROWS] = d2(closest_u[s:s + CHUNK_ROWS])
    for _ in range(1, n_clusters):
        cand, pot = draw(closest, rng.random(n_local_trials))
        if not np.isfinite(pot) or pot <= 0:  # every point coincides with a seed: take unused points
            rest = np.ones(N, bool)
            rest[centers] = False
            cand = [int(np.flatnonzero(rest)[0])]
        best = None
        for j in cand:
            new = closest.copy() if n_local_trials > 1 else closest
            new_u = closest_u.copy() if n_local_trials > 1 else closest_u
            for s in range(0, N, CHUNK_ROWS):
                u = cosh_to(j, s)
                closer = np.flatnonzero(u < new_u[s:s + CHUNK_ROWS])   # cosh space (monotone): arccosh there
                new[s + closer] = d2(u[closer])
                new_u[s + closer] = u[closer]
            p = new.sum() if n_local_trials > 1 else 0.0
            if best is None or p < best[1]:
                best = (j, p, new, new_u)
        centers.append(best[0])
        closest, closest_u = best[2], best[3]
    return X[torch.as_tensor(centers, device=X.device)].clone()


class HyperbolicKMeans(ClusterMixin, BaseEstimator):
    """K-means in the Poincaré ball (curvature -c).

    Parameters follow ``sklearn.cluster.KMeans``: ``n_clusters``, ``init`` ("k-means++" | "random" | array
    (K, d)), ``n_init``, ``max_iter``, ``tol`` (largest centre shift, in hyperbolic distance, to stop),
    ``random_state``; plus ``centroid`` ("einstein" | "frechet"), ``curvature``, ``device``, ``dtype``
    ("float32" | "float64"), ``assignment`` ("auto" | "matmul" | "kdtree"; auto = k-d tree on the CPU for
    d <= 8 (exact, see ``assign_kdtree``), else the chunked matrix product), ``max_chunk_bytes``
    (memory of one matrix-product chunk), ``n_local_trials`` (greedy k-means++: seeds tried per step, 1 =
    plain k-means++).

    After ``fit``: ``cluster_centers_`` (K, d), ``labels_`` (N,), ``inertia_`` (sum of squared hyperbolic
    distances to the assigned centre), ``n_iter_``, ``iter_seconds_`` (wall time of each Lloyd iteration),
    ``n_features_in_``.

    A scikit-learn estimator (``BaseEstimator`` + ``ClusterMixin``): the constructor only stores its
    arguments, so ``get_params``/``set_params``/``sklearn.base.clone`` work, and ``fit_predict`` is the
    mixin's (``fit(X).labels_``).
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init: int = 1, max_iter: int = 100,
                 tol: float = 1e-6, random_state: int | None = 0, centroid: str = "einstein",
                 frechet_steps: int = 10, curvature: float = 1.0, device: str = "cpu",
                 dtype: str = "float64", assignment: str = "auto", max_chunk_bytes: int = 64 << 20,
                 n_local_trials: int = 1, verbose: bool = False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.centroid = centroid
        self.frechet_steps = frechet_steps
        self.curvature = curvature
        self.device = device
        self.dtype = dtype
        self.assignment = assignment
        self.max_chunk_bytes = max_chunk_bytes
        self.n_local_trials = n_local_trials
        self.verbose = verbose

    # -- helpers -----------------------------------------------------------------------------------------
    def _torch_dtype(self):
        if self.dtype not in ("float32", "float64"):
            raise LongtailError(f"HyperbolicKMeans.dtype={self.dtype!r}: use 'float32' or 'float64'")
        return getattr(torch, self.dtype)

    def _validate(self, X) -> None:
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise LongtailError(f"n_clusters={self.n_clusters!r}: must be a positive integer")
        if self.n_clusters > X.shape[0]:
            raise LongtailError(f"n_clusters={self.n_clusters} is larger than the number of points "
                                f"({X.shape[0]}); lower k (discovery.k / discovery.k_grid)")
        if self.assignment not in ("auto", "matmul", "kdtree"):
            raise LongtailError(f"assignment={self.assignment!r}: use 'auto', 'matmul' or 'kdtree'")
        if self.centroid not in ("einstein", "frechet"):
            raise LongtailError(f"centroid={self.centroid!r}: use 'einstein' or 'frechet'")

    # The loop runs in numpy on the CPU (X: float64 ndarray) and in torch on a GPU (X: cuda tensor).
    def _centers(self, X, labels, prev):
        K, c = self.n_clusters, self.curvature
        if isinstance(X, np.ndarray):
            C, counts = _einstein_np(X, labels, K, c)
            if self.centroid == "frechet":
                C = frechet_means(torch.from_numpy(X), torch.from_numpy(labels), torch.from_numpy(C), c,
                                  self.frechet_steps).numpy()
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                # empty clusters: re-seed at the points farthest from their centre (as scikit-learn does)
                far = np.argsort(-_pdist_np(X, prev[labels], c), kind="stable")[:len(empty)]
                C[empty] = X[far]
            return C
        C, counts = einstein_midpoints(X, labels, K, c)
        if self.centroid == "frechet":
            C = frechet_means(X, labels, C, c, self.frechet_steps)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            far = torch.topk(poincare_dist(X, prev[labels], c), len(empty)).indices
            C[empty] = X[far]
        return C

    def _method(self, X) -> str:
        if self.assignment != "auto":
            return self.assignment
        return "matmul" if isinstance(X, torch.Tensor) or X.shape[1] > 8 else "kdtree"   # torch = GPU loop

    def _assign(self, X, C, Xaug):
        if isinstance(X, np.ndarray):
            if self._method(X) == "kdtree":
                return assign_kdtree(X, C, self.curvature, self.max_chunk_bytes)
            dt = self._torch_dtype()
            return assign_matmul(torch.from_numpy(X).to(dt), torch.from_numpy(C).to(dt), self.curvature,
                                 self.max_chunk_bytes, Xaug).numpy()
        return assign_matmul(X, C, self.curvature, self.max_chunk_bytes, Xaug)

    def _dist(self, A, B):
        if isinstance(A, np.ndarray):
            return _pdist_np(A, B, self.curvature)
        return poincare_dist(A, B, self.curvature)

    def _inertia(self, X, C, labels):
        if isinstance(X, np.ndarray):   # CPU: C[labels] and the distance's temporaries a row chunk at a time
            d = np.empty(len(X))
            for s in range(0, len(X), CHUNK_ROWS):
                d[s:s + CHUNK_ROWS] = self._dist(X[s:s + CHUNK_ROWS], C[labels[s:s + CHUNK_ROWS]])
            return float((d ** 2).sum())
        return float(self._dist(X, C[labels]).double().pow(2).sum())

    def _init_centers(self, X, gen):
        K = self.n_clusters
        if isinstance(self.init, str):
            if self.init == "k-means++":
                Xt = torch.from_numpy(X) if isinstance(X, np.ndarray) else X
                C = kmeans_plusplus(Xt, K, self.curvature, gen, self.n_local_trials)
            elif self.init == "random":
                C = X[torch.randperm(X.shape[0], generator=gen)[:K].numpy()].copy() if isinstance(X, np.ndarray) \
                    else X[torch.randperm(X.shape[0], generator=gen)[:K].to(X.device)].clone()
            else:
                raise LongtailError(f"init={self.init!r}: use 'k-means++', 'random' or an array (K, d)")
        else:
            C = _as_tensor(self.init, "cpu", torch.float64)
            if C.shape != (K, X.shape[1]):
                raise LongtailError(f"init array has shape {tuple(C.shape)}, expected {(K, X.shape[1])}")
            check_points(C, self.curvature, "init")
        if isinstance(X, np.ndarray):
            return np.asarray(C.numpy() if isinstance(C, torch.Tensor) else C, np.float64).copy()
        return C.to(X.device, X.dtype)

    def _single_run(self, X, Xaug, gen):
        C = self._init_centers(X, gen)
        labels = None
        times = []
        n_iter = 0
        for it in range(self.max_iter):
            t0 = time.perf_counter()
            new_labels = self._assign(X, C, Xaug)
            C_new = self._centers(X, new_labels, C)
            delta = self._dist(C, C_new)
            shift = float(delta.max())
            if isinstance(X, torch.Tensor) and X.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            n_iter = it + 1
            same = labels is not None and bool((labels == new_labels).all())
            labels, C = new_labels, C_new
            if self.verbose:
                print(f"iter {n_iter}: shift {shift:.3g} ({times[-1]:.3f}s)")
            if same or shift <= self.tol:
                break
        labels = self._assign(X, C, Xaug)
        return C, labels, self._inertia(X, C, labels), n_iter, times

    def _prepare(self, X):
        Xt = _as_tensor(X, self.device, self._torch_dtype())
        check_points(Xt, self.curvature)
        if Xt.device.type != "cpu" or getattr(self, "_torch_loop", False):   # GPU loop (tests run it on CPU)
            return Xt
        return Xt.numpy().astype(np.float64, copy=False)   # the CPU loop works in float64 numpy

    # -- sklearn API -------------------------------------------------------------------------------------
    def fit(self, X, y=None):
        X = self._prepare(X)
        self._validate(X)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if self.random_state is None else int(self.random_state))
        Xaug = None
        if self._method(X) == "matmul":
            Xt = X if isinstance(X, torch.Tensor) else torch.from_numpy(X).to(self._torch_dtype())
            Xaug = augment_points(Xt)
        best = None
        for _ in range(max(1, int(self.n_init))):
            run = self._single_run(X, Xaug, gen)
            if best is None or run[2] < best[2]:
                best = run
        C, labels, inertia, n_iter, times = best
        tonp = lambda a: a.cpu().numpy() if isinstance(a, torch.Tensor) else a
        self.cluster_centers_ = tonp(C)
        self.labels_ = tonp(labels).astype(np.int64)
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self.iter_seconds_ = times
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "cluster_centers_"):
            raise LongtailError("HyperbolicKMeans.predict called before fit")
        X = self._prepare(X)
        return np.asarray(self._assign(X, self._fitted_centers(X), None).cpu().numpy()
                          if isinstance(X, torch.Tensor) else self._assign(X, self._fitted_centers(X), None))

    def _fitted_centers(self, X):
        C = np.asarray(self.cluster_centers_, np.float64)
        return torch.as_tensor(C, device=X.device, dtype=X.dtype) if isinstance(X, torch.Tensor) else C

    def score(self, X, y=None) -> float:
        """Negative inertia of X under the fitted centres (scikit-learn convention)."""
        X = self._prepare(X)
        C = self._fitted_centers(X)
        return -self._inertia(X, C, self._assign(X, C, None))


def total_variation(X, curvature: float = 1.0, device: str = "cpu") -> float:
    """Sum of squared hyperbolic distances to the (Einstein) centre of all points: inertia at k = 1."""
    X = _as_tensor(X, device, torch.float64)
    labels = torch.zeros(1, dtype=torch.long, device=X.device).expand(X.shape[0])   # no (N,) array
    C, _ = einstein_midpoints(X, labels, 1, curvature)
    d = torch.empty(X.shape[0], dtype=X.dtype, device=X.device)
    for s in range(0, X.shape[0], CHUNK_ROWS):   # the distance's temporaries a chunk at a time
        d[s:s + CHUNK_ROWS] = poincare_dist(X[s:s + CHUNK_ROWS], C, curvature)
    return float((d ** 2).sum())
