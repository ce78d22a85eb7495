"""HyperbolicKMeans vs geomstats' RiemannianKMeans (Poincaré ball, d = 2): wall time and inertia.

    nice -n 10 python benchmarks/kmeans_geomstats.py                # N = 100k, K = 1500, 10 iterations
    nice -n 10 python benchmarks/kmeans_geomstats.py --n 20000 --k 300 --iters 5   # quick check

geomstats needs numpy < 2, so it runs in its own venv (built here on first use: benchmarks/.venv-geomstats,
git-ignored). Both get the same points; the inertia of both results is computed by the same code (sum of
squared Poincaré distances of every point to its nearest centre), so "equal or lower inertia" is checked
on equal terms. Results: benchmarks/results/kmeans_geomstats.json; numbers in docs/benchmarks-discovery.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

GEOMSTATS_SCRIPT = r"""
import sys, time, json, random
import numpy as np
from geomstats.geometry.poincare_ball import PoincareBall
from geomstats.learning.kmeans import RiemannianKMeans
X = np.load(sys.argv[1]); K = int(sys.argv[2]); iters = int(sys.argv[3]); seed = int(sys.argv[4])
random.seed(seed); np.random.seed(seed)
km = RiemannianKMeans(PoincareBall(dim=X.shape[1]), n_clusters=K, init="random", tol=0.0, max_iter=iters)
t = time.perf_counter(); c = time.process_time(); km.fit(X)
dt, dc = time.perf_counter() - t, time.process_time() - c
np.save(sys.argv[5], np.asarray(km.cluster_centers_))
print(json.dumps({"seconds": dt, "cpu_seconds": dc}))
"""


def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if py.exists():
        return py
    print(f"building {venv} (geomstats needs numpy<2) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy<2", "geomstats", "scipy", "scikit-learn"],
                   check=True)
    return py


def points(n: int, d: int, seed: int) -> np.ndarray:
    """Wrapped normal in the Poincaré ball: tangent N(0, I) at the origin, exp-mapped (|x| up to ~0.999)."""
    import geoopt

    rng = np.random.default_rng(seed)
    return geoopt.PoincareBall().expmap0(torch.tensor(rng.normal(size=(n, d)))).numpy()


def inertia_of_centers(X: np.ndarray, C: np.ndarray) -> float:
    """Sum of squared hyperbolic distances to the nearest centre (exact assignment)."""
    from longtail.discovery.kmeans import assign_matmul, poincare_dist

    Xt, Ct = torch.tensor(X), torch.tensor(C)
    lab = assign_matmul(Xt, Ct)
    return float((poincare_dist(Xt, Ct[lab]) ** 2).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=1500)
    ap.add_argument("--d", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venv", default=str(HERE / ".venv-geomstats"))
    ap.add_argument("--skip-geomstats", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "kmeans_geomstats.json"))
    a = ap.parse_args()
    from longtail.discovery.kmeans import HyperbolicKMeans

    X = points(a.n, a.d, a.seed)
    res = {"n": a.n, "k": a.k, "d": a.d, "iters": a.iters, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count()}
    # default (k-means++, Einstein midpoint); geomstats' own setting (random init) with both centroids
    configs = {"ours_k-means++": ("k-means++", "einstein"), "ours_random": ("random", "einstein"),
               "ours_random_frechet": ("random", "frechet")}
    for name, (init, centroid) in configs.items():
        t, c = time.perf_counter(), time.process_time()
        km = HyperbolicKMeans(a.k, init=init, centroid=centroid, max_iter=a.iters, tol=0.0,
                              random_state=a.seed).fit(X)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        res[name] = {"init": init, "centroid": centroid, "seconds": dt, "cpu_seconds": dc,
                     "seconds_per_iter": float(np.mean(km.iter_seconds_)),
                     "seeding_and_final_assign_seconds": dt - float(np.sum(km.iter_seconds_)),
                     "n_iter": km.n_iter_, "inertia": inertia_of_centers(X, km.cluster_centers_)}
        print(f"{name}: {dt:.2f} s, inertia {res[name]['inertia']:.1f}", flush=True)
    if not a.skip_geomstats:
        py = ensure_venv(Path(a.venv))
        with tempfile.TemporaryDirectory() as td:
            xp, cp = Path(td) / "x.npy", Path(td) / "c.npy"
            np.save(xp, X)
            out = subprocess.run([str(py), "-c", GEOMSTATS_SCRIPT, str(xp), str(a.k), str(a.iters), str(a.seed),
                                  str(cp)], check=False, capture_output=True, text=True, env={**os.environ,
                                                                                "GEOMSTATS_BACKEND": "numpy"})
            if out.returncode != 0:
                sys.exit(f"geomstats failed:\n{out.stderr[-3000:]}")
            g = json.loads(out.stdout.strip().splitlines()[-1])
            g["inertia"] = inertia_of_centers(X, np.load(cp))
        res["geomstats"] = g
        print(f"geomstats: {g['seconds']:.2f} s, inertia {g['inertia']:.1f}", flush=True)
        for name in configs:
            o = res[name]
            o["speedup_vs_geomstats"] = g["seconds"] / o["seconds"]
            o["cpu_speedup_vs_geomstats"] = g["cpu_seconds"] / o["cpu_seconds"]
            o["inertia_ratio_vs_geomstats"] = o["inertia"] / g["inertia"]
            print(f"{name}: {o['speedup_vs_geomstats']:.1f}x faster (wall), {o['cpu_speedup_vs_geomstats']:.1f}x "
                  f"(CPU time), inertia ratio {o['inertia_ratio_vs_geomstats']:.4f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
