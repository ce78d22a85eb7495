"""The `longtail bsds` benchmark over an image set: HED edges and the pipeline's OWT-UCM trees per image, each
row (``hed``, ``hed_nms``, ``ucm``, optionally ``gpb_owt_ucm``) scored with :mod:`longtail.hierarchy.bench`,
then aggregated over the set.

The trees are those of the pipeline (:func:`~longtail.hierarchy.process.tree_from_edges`); the edge record is
kept in float64 (``edge_record(e, compact=False)``) rather than the float16 of the files `longtail edges`
writes, so the benchmark scores the tree of the raw edge map, as before this function was shared.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longtail.common.errors import LongtailError


def check_groundtruth(items, gt_dir: Path) -> None:
    """Fail before any work when an image has no ``<gt_dir>/<id>.mat``."""
    for it in items:
        if not (gt_dir / f"{it.key}.mat").exists():
            raise LongtailError(f"BSDS ground truth {gt_dir / (it.key + '.mat')} is missing for image {it.path}")


def edge_and_ucm_tasks(model, items, cfg: dict, device, gt_dir: Path, ref_dir: Path | None,
                       th: np.ndarray) -> tuple[list[tuple], float, float]:
    """(one scoring task per image, seconds in HED, seconds in OWT-UCM); ``cfg`` is the hierarchy section."""
    from scipy.io import loadmat

    from longtail.hierarchy.process import edge_record, iter_edges, tree_from_edges

    ec, uc, bc = cfg["edges"], cfg["ucm"], cfg["bench"]
    tasks, t_edges, t_ucm = [], 0.0, 0.0
    t = time.time()
    for item, e in tqdm(iter_edges(model, items, ec["batch_size"], device, tuple(ec["scales"]),
                                   cfg["min_image_size"]), total=len(items), desc="bsds edges+ucm"):
        t_edges += time.time() - t
        t = time.time()
        tree = tree_from_edges(edge_record(e, compact=False), uc["max_leaves"], uc["use_orientation"],
                               uc["boundary"], uc["mix_weight"])
        u = tree.ucm2()
        t_ucm += time.time() - t
        ref = None
        if ref_dir is not None:
            rp = ref_dir / f"{item.key}.mat"
            if not rp.exists():
                raise LongtailError(f"reference ucm2 {rp} is missing for image {item.path}")
            ref = loadmat(str(rp))["ucm2"].astype(np.float64)
        tasks.append((item.key, e.astype(np.float64), u, ref, str(gt_dir / f"{item.key}.mat"), th, bc))
        t = time.time()
    return tasks, t_edges, t_ucm


def score_image(task):
    """Score one image (all rows); runs in a worker process."""
    from longtail.hierarchy import bench
    from longtail.hierarchy.ucm import edge_nms

    key, edges, ucm2, ref, gt_path, th, bc = task
    gt = bench.load_groundtruth(gt_path)
    out = {}
    maps = {"hed": edges, "hed_nms": edge_nms(edges), "ucm": ucm2[2::2, 2::2]}
    if ref is not None:
        maps["gpb_owt_ucm"] = ref[2::2, 2::2]
    for name, pb in maps.items():
        if name in bc["rows"] or (name == "gpb_owt_ucm" and ref is not None):
            out[name] = {"boundary": bench.boundary_counts(pb, gt, th, bc["max_dist"], bc["thin"])}
    for name, u in (("ucm", ucm2), ("gpb_owt_ucm", ref)):
        if name in out and u is not None:
            out[name]["region"] = bench.region_counts(bench.segs_from_ucm2(u, th), gt)
    return key, out


def score_images(tasks: list[tuple], nproc: int) -> dict:
    """{key: per-row counts} of every task, over ``nproc`` worker processes when > 1."""
    from concurrent.futures import ProcessPoolExecutor

    results = {}
    if nproc > 1:
        with ProcessPoolExecutor(nproc) as ex:
            for key, r in tqdm(ex.map(score_image, tasks), total=len(tasks), desc="bsds scoring"):
                results[key] = r
    else:
        for task in tqdm(tasks, desc="bsds scoring"):
            key, r = score_image(task)
            results[key] = r
    return results


def summarize(results: dict, keys: list[str], th: np.ndarray, bc: dict, t_edges: float, t_ucm: float
              ) -> tuple[dict, dict]:
    """(metrics JSON with per-row boundary / region scores and curves, flat numbers for MLflow)."""
    from longtail.hierarchy import bench

    n = len(keys)
    metrics = {"n_images": n, "thresholds": int(bc["thresholds"]), "max_dist": bc["max_dist"],
               "thin": bc["thin"], "seconds_per_image_edges": t_edges / max(n, 1),
               "seconds_per_image_ucm": t_ucm / max(n, 1), "rows": {}}
    for name in results[keys[0]]:
        row = bench.collect_boundary([results[k][name]["boundary"] for k in keys], th)
        curves = {"boundary": row.pop("curve")}
        out = {"boundary": row}
        if "region" in results[keys[0]][name]:
            reg = bench.collect_region([results[k][name]["region"] for k in keys], th)
            curves["region"] = reg.pop("curve")
            out["region"] = reg
        out["curves"] = curves
        metrics["rows"][name] = out
    flat = {"n_images": n, "seconds_per_image_edges": metrics["seconds_per_image_edges"],
            "seconds_per_image_ucm": metrics["seconds_per_image_ucm"]}
    for name, r in metrics["rows"].items():
        flat.update({f"{name}.{k}": v for k, v in r["boundary"].items()})
        flat.update({f"{name}.{k}": v for k, v in r.get("region", {}).items()})
    return metrics, flat
