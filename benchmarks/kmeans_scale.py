"""HyperbolicKMeans at COCO scale: time per Lloyd iteration for N = 5.9M proposals, K = 1500, d = 2 (CPU).

    nice -n 10 python benchmarks/kmeans_scale.py                      # N = 5.9M, K = 1500, 3 iterations
    nice -n 10 python benchmarks/kmeans_scale.py --assignment matmul  # the chunked matrix-product path

5.9M = 118k COCO train images x 50 proposals (Weng et al. 4.1). Random init (seeding time is reported
separately with --seeding). Results: benchmarks/results/kmeans_scale_<assignment>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main():
    from kmeans_geomstats import inertia_of_centers, points  # noqa: F401

    from longtail.discovery.kmeans import HyperbolicKMeans

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5_900_000)
    ap.add_argument("--k", type=int, default=1500)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--assignment", default="auto", choices=["auto", "kdtree", "matmul"])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--seeding", action="store_true", help="also time k-means++ seeding")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    X = points(a.n, 2, 0)
    res = {"n": a.n, "k": a.k, "iters": a.iters, "assignment": a.assignment, "dtype": a.dtype,
           "threads": torch.get_num_threads()}
    t = time.perf_counter()
    km = HyperbolicKMeans(a.k, init="random", max_iter=a.iters, tol=0.0, assignment=a.assignment,
                          dtype=a.dtype).fit(X)
    res["fit_seconds"] = time.perf_counter() - t
    res["iter_seconds"] = km.iter_seconds_
    res["seconds_per_iter"] = float(np.mean(km.iter_seconds_))
    if a.seeding:
        t = time.perf_counter()
        HyperbolicKMeans(a.k, init="k-means++", max_iter=1, tol=0.0, assignment=a.assignment).fit(X)
        res["kmeans++_fit_1iter_seconds"] = time.perf_counter() - t
    res["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = Path(a.out or HERE / "results" / f"kmeans_scale_{a.assignment}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
