"""HyperbolicKMeans, assignment paths, centroids, elbow (Weng et al. 3.3)."""

import geoopt
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from longtail.common.errors import LongtailError
from longtail.discovery.elbow import elbow_curve, knee_point
from longtail.discovery.kmeans import (
    HyperbolicKMeans,
    assign_kdtree,
    assign_matmul,
    einstein_midpoints,
    frechet_means,
    poincare_dist,
    total_variation,
)

BALL = geoopt.PoincareBall(c=1.0)


def planted(n_clusters=8, per=150, spread=0.12, radius=2.5, seed=0):
    """Clusters of wrapped-normal points around centres at hyperbolic distance ~radius from the origin."""
    rng = np.random.default_rng(seed)
    ang = np.linspace(0, 2 * np.pi, n_clusters, endpoint=False)
    r = radius * (0.6 + 0.4 * (np.arange(n_clusters) % 2))
    cen = BALL.expmap0(torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1) * r[:, None]))
    X, y = [], []
    for k in range(n_clusters):
        c = cen[k].expand(per, 2)
        v = torch.tensor(rng.normal(size=(per, 2)) * spread)
        X.append(BALL.expmap(c, BALL.transp0(c, v)))
        y += [k] * per
    return torch.cat(X).numpy(), np.array(y)


@pytest.mark.parametrize("centroid", ["einstein", "frechet"])
def test_recovers_planted_clusters(centroid):
    X, y = planted()
    km = HyperbolicKMeans(8, n_init=3, random_state=0, centroid=centroid)
    labels = km.fit_predict(X)
    assert adjusted_rand_score(y, labels) > 0.95
    assert km.cluster_centers_.shape == (8, 2) and km.labels_.shape == (len(X),)
    assert np.all((km.cluster_centers_ ** 2).sum(1) < 1)
    assert 1 <= km.n_iter_ <= km.max_iter
    # inertia = sum of squared hyperbolic distances to the assigned centre
    d = poincare_dist(torch.tensor(X), torch.tensor(km.cluster_centers_[km.labels_]))
    assert km.inertia_ == pytest.approx(float((d ** 2).sum()), rel=1e-9)
    assert np.array_equal(km.predict(X), km.labels_)
    # far below the variation around one centre
    assert km.inertia_ < 0.05 * total_variation(X)


@pytest.mark.parametrize("path", ["matmul", "torch_loop"])
def test_matmul_and_gpu_loop_agree_with_kdtree(path):
    """The matrix-product assignment and the torch (GPU) loop, run on the CPU, give the k-d tree result."""
    X, y = planted(seed=6)
    ref = HyperbolicKMeans(8, random_state=1).fit(X)
    km = HyperbolicKMeans(8, random_state=1, assignment="matmul")
    if path == "torch_loop":
        km._torch_loop = True
    km.fit(X)
    assert np.array_equal(km.labels_, ref.labels_)
    assert km.inertia_ == pytest.approx(ref.inertia_, rel=1e-9)
    assert np.allclose(km.cluster_centers_, ref.cluster_centers_, atol=1e-9)
    assert adjusted_rand_score(y, km.labels_) > 0.95


def test_greedy_kmeanspp_seeding():
    X, y = planted(n_clusters=10, per=60, seed=8)
    km = HyperbolicKMeans(10, n_init=1, n_local_trials=5, random_state=0).fit(X)
    assert adjusted_rand_score(y, km.labels_) > 0.95
    assert km.inertia_ <= HyperbolicKMeans(10, n_init=1, init="random", random_state=0).fit(X).inertia_ + 1e-9


def test_deterministic_for_a_seed():
    X, _ = planted(seed=3)
    a = HyperbolicKMeans(6, random_state=7).fit(X)
    b = HyperbolicKMeans(6, random_state=7).fit(X)
    assert np.array_equal(a.labels_, b.labels_) and a.inertia_ == b.inertia_


def test_sklearn_estimator_contract():
    """get_params / set_params / clone (scikit-learn's BaseEstimator): a clone is unfitted, has the same
    parameters and, with the same seed, gives the same clustering; set_params changes what fit does."""
    from sklearn.base import clone, is_clusterer

    X, y = planted(seed=4)
    km = HyperbolicKMeans(6, n_init=2, random_state=5, centroid="frechet", frechet_steps=3, tol=1e-8)
    params = km.get_params()
    assert params["n_clusters"] == 6 and params["centroid"] == "frechet" and params["frechet_steps"] == 3
    assert params["random_state"] == 5 and params["tol"] == 1e-8 and params["n_init"] == 2
    assert is_clusterer(km)
    km.fit(X)
    twin = clone(km)
    assert not hasattr(twin, "labels_") and twin.get_params() == params
    assert np.array_equal(twin.fit_predict(X), km.labels_)
    assert np.allclose(twin.cluster_centers_, km.cluster_centers_, atol=1e-12)
    assert twin.inertia_ == pytest.approx(km.inertia_, rel=1e-12)
    # set_params reaches fit: 8 clusters recover the 8 planted ones, 6 cannot
    twin.set_params(n_clusters=8, centroid="einstein")
    assert twin.get_params()["n_clusters"] == 8
    assert twin.fit(X).cluster_centers_.shape == (8, 2)
    assert adjusted_rand_score(y, twin.labels_) > 0.95 > adjusted_rand_score(y, km.labels_)
    # an init array is a parameter too: cloned by value
    init = km.cluster_centers_.copy()
    seeded = clone(HyperbolicKMeans(6, init=init, random_state=5))
    assert seeded.init is not init and np.array_equal(seeded.init, init)


def test_assignment_paths_match_brute_force(monkeypatch):
    import longtail.discovery.kmeans as KM

    monkeypatch.setattr(KM, "CHUNK_ROWS", 1500)   # several row chunks
    rng = np.random.default_rng(1)
    X = BALL.expmap0(torch.tensor(rng.normal(size=(4000, 2)) * 2.5)).double()   # up to |x| ~ 0.9999
    C = X[torch.tensor(rng.choice(4000, 300, replace=False))]
    brute = poincare_dist(X[:, None], C[None]).argmin(1).numpy()
    # ties aside, the three must pick a centre at the same hyperbolic distance
    for lab in (assign_matmul(X, C, max_chunk_bytes=50_000).numpy(), assign_kdtree(X.numpy(), C.numpy())):
        d_b = poincare_dist(X, C[brute])
        d_l = poincare_dist(X, C[torch.as_tensor(lab)])
        assert float((d_l - d_b).abs().max()) < 1e-7
        assert (lab == brute).mean() > 0.999
    # bounds: exact distance to the assigned centre, and a true lower bound for every other centre
    lab, upper, lower = assign_kdtree(X.numpy(), C.numpy(), return_bounds=True)
    D = poincare_dist(X[:, None], C[None]).numpy()
    assert np.allclose(upper, D[np.arange(len(X)), lab], atol=1e-9)
    D[np.arange(len(X)), lab] = np.inf
    assert np.all(lower <= D.min(1) + 1e-9)


def test_curvature_scales_distance_not_clusters():
    X, y = planted(seed=2)
    c = 4.0
    Xc = X / np.sqrt(c)   # same configuration in the ball of curvature -4
    km = HyperbolicKMeans(8, n_init=3, curvature=c).fit(Xc)
    assert adjusted_rand_score(y, km.labels_) > 0.95


def test_einstein_midpoint_of_two_points_is_geodesic_midpoint():
    x = torch.tensor([[0.5, 0.1], [-0.2, 0.7]], dtype=torch.float64)
    m, counts = einstein_midpoints(x, torch.tensor([0, 0]), 1)
    geo = BALL.geodesic(torch.tensor(0.5, dtype=torch.float64), x[0], x[1])
    assert torch.allclose(m[0], geo, atol=1e-10)
    assert counts.tolist() == [2]
    # the two distances to the midpoint are equal
    assert float(poincare_dist(m[0], x[0])) == pytest.approx(float(poincare_dist(m[0], x[1])), rel=1e-9)


def test_frechet_mean_minimises_sum_of_squares():
    X, _ = planted(n_clusters=1, per=200, spread=0.6, seed=5)
    Xt = torch.tensor(X)
    lab = torch.zeros(len(X), dtype=torch.long)
    e, _ = einstein_midpoints(Xt, lab, 1)
    f = frechet_means(Xt, lab, e, n_steps=50)
    # Riemannian gradient of sum d^2 vanishes at the Fréchet mean
    grad = BALL.logmap(f[0].expand_as(Xt), Xt).mean(0)
    assert float(grad.norm()) < 1e-6
    cost = lambda m: float((poincare_dist(Xt, m) ** 2).sum())
    assert cost(f[0]) <= cost(e[0]) + 1e-12
    for _ in range(5):
        assert cost(f[0]) < cost(f[0] + torch.randn(2, dtype=torch.float64) * 1e-3)


def test_bad_input_raises_clear_errors():
    X, _ = planted(n_clusters=2, per=5)
    with pytest.raises(LongtailError, match="larger than the number of points"):
        HyperbolicKMeans(11).fit(X)
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(LongtailError, match="NaN"):
        HyperbolicKMeans(2).fit(bad)
    with pytest.raises(LongtailError, match="outside the Poincaré ball"):
        HyperbolicKMeans(2).fit(X * 10)
    with pytest.raises(LongtailError, match="no points"):
        HyperbolicKMeans(2).fit(np.zeros((0, 2)))


def test_empty_cluster_is_reseeded():
    X, _ = planted(n_clusters=3, per=30)
    init = np.vstack([X[:2], [[0.0, 0.95]]])   # third centre far from every point
    km = HyperbolicKMeans(3, init=init, max_iter=20).fit(X)
    assert len(np.unique(km.labels_)) == 3


def test_knee_point_hand_computed():
    # normalised: x = [0, .2, .4, .6, .8, 1], y = [0, .5, .9, .92, .94, 1] - max(y - x) at index 2
    assert knee_point([1, 2, 3, 4, 5, 6], [0.0, 0.5, 0.9, 0.92, 0.94, 1.0]) == 2
    assert knee_point([1, 2, 3], [0.3, 0.3, 0.3]) == 0
    with pytest.raises(LongtailError):
        knee_point([1, 2], [0, 1])


def test_elbow_finds_planted_k():
    X, _ = planted(n_clusters=6, per=100, spread=0.08, seed=4)
    grid = [2, 3, 4, 5, 6, 8, 10, 12, 16]
    res = elbow_curve(X, grid, lambda k: HyperbolicKMeans(k, n_init=3).fit(X).inertia_, total_variation(X))
    assert res["k_star"] == 6
    ev = np.array(res["explained_variation"])
    assert ev[-1] > 0.99 and np.all(np.diff(ev) > -1e-6)


def test_row_chunks_change_nothing(monkeypatch, params):
    """The CPU loop's O(N) temporaries come in row chunks (issue 15): with 97-row chunks (many, the last one
    short) seeding, centres, labels, inertia, the total variation, the random baseline's points and the GPU
    loop's Einstein midpoints are those of one chunk, to the bit; grid labels above 127 survive (int32)."""
    import longtail.discovery.kmeans as KM
    import longtail.discovery.spaces as SP
    from longtail.discovery.clustering import choose_k
    from longtail.discovery.spaces import random_like

    X, _ = planted(seed=3)
    lab = torch.as_tensor(np.arange(len(X)) % 5)

    def everything():
        fits = [HyperbolicKMeans(8, n_init=2, random_state=0, n_local_trials=t).fit(X) for t in (1, 3)]
        w = torch.linspace(0.5, 2, len(X), dtype=torch.float64)
        mids = einstein_midpoints(torch.tensor(X), lab, 5, weights=w)
        return ([(m.labels_, m.cluster_centers_, m.inertia_) for m in fits], total_variation(X), mids,
                [random_like(X, space, 7) for space in ("poincare", "euclidean")])

    one = everything()
    for mod in (KM, SP):
        monkeypatch.setattr(mod, "CHUNK_ROWS", 97)
    assert len(X) // 97 > 10 and len(X) % 97
    many = everything()
    for (la, ca, ia), (lb, cb, ib) in zip(one[0], many[0]):
        assert np.array_equal(la, lb) and np.array_equal(ca, cb) and ia == ib
    assert one[1] == many[1]
    assert all(torch.equal(a, b) for a, b in zip(one[2], many[2]))
    assert all(np.array_equal(a, b) for a, b in zip(one[3], many[3]))
    cfg = {**params["discovery"], "k": 200, "k_grid": [4, 130, 200], "n_init": 1, "max_iter": 3, "device": "cpu"}
    k, elbow, model = choose_k(X, "poincare", 1.0, cfg, 0)
    assert k == 200 and elbow["labels"][200].max() > 127 and np.array_equal(elbow["labels"][200], model.labels_)
