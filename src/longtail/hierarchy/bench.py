"""BSDS500 benchmarks: boundaries (ODS/OIS/AP) with pyEdgeEval, regions (covering, PRI, VI) ported from the
BSDS ``evaluation_reg_image.m`` / ``collect_eval_reg.m``.

Per image, the benchmarks produce counts per threshold; :func:`collect_boundary` / :func:`collect_region`
aggregate them over a data set exactly as the MATLAB ``collect_eval_*`` scripts do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError


@dataclass
class GroundTruth:
    boundaries: list[np.ndarray]    # bool (H, W), one per annotator
    segmentations: list[np.ndarray]  # int (H, W), labels 1..K, one per annotator


def load_groundtruth(path: str | os.PathLike) -> GroundTruth:
    """BSDS ``groundTruth/<id>.mat`` (cell array of structs with Segmentation and Boundaries)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.exists():
        raise LongtailError(f"BSDS ground truth {path} not found; every image needs groundTruth/<id>.mat")
    try:
        gt = loadmat(str(path))["groundTruth"]
        b = [np.asarray(gt[0, i]["Boundaries"][0, 0]).astype(bool) for i in range(gt.shape[1])]
        s = [np.asarray(gt[0, i]["Segmentation"][0, 0]).astype(np.int64) for i in range(gt.shape[1])]
    except Exception as e:  # scipy raises MatReadError, ValueError, KeyError... for bad files
        raise LongtailError(f"BSDS ground truth {path}: not a readable BSDS groundTruth .mat ({e}); "
                            f"replace it with the file of the BSDS500 release") from e
    if not b:
        raise LongtailError(f"BSDS ground truth {path}: no human segmentation in it")
    return GroundTruth(b, s)


def thresholds(n: int) -> np.ndarray:
    """The BSDS thresholds: ``linspace(1/(n+1), 1-1/(n+1), n)``."""
    return np.linspace(1.0 / (n + 1), 1.0 - 1.0 / (n + 1), n)


# ----------------------------------------------------------------------------------------------- boundaries

def boundary_counts(pb: np.ndarray, gt: GroundTruth, thresh: np.ndarray, max_dist: float = 0.0075,
                    thin: bool = True) -> np.ndarray:
    """(n_thresh, 4) array of cntR, sumR, cntP, sumP for one image (``evaluation_bdry_image.m``).

    ``pb`` is a soft boundary map in [0, 1] at image resolution (for a ucm2, pass ``ucm2[2::2, 2::2]``).
    """
    from pyEdgeEval.common.binary_label.evaluate_boundaries import evaluate_boundaries_threshold_multiple_gts

    if pb.shape != gt.boundaries[0].shape:
        raise LongtailError(f"boundary map of shape {pb.shape} does not match the ground truth "
                            f"{gt.boundaries[0].shape}")
    cr, sr, cp, sp = evaluate_boundaries_threshold_multiple_gts(
        thresholds=np.asarray(thresh, float), pred=pb.astype(np.float64),
        gts=[g.astype(np.float64) for g in gt.boundaries], max_dist=max_dist, apply_thinning=thin)
    return np.stack([cr, sr, cp, sp], 1)


def _rpf(cr, sr, cp, sp):
    r = cr / (sr + (sr == 0))
    p = cp / (sp + (sp == 0))
    f = 2 * p * r / (p + r + ((p + r) == 0))
    return r, p, f


def collect_boundary(counts: list[np.ndarray], thresh: np.ndarray) -> dict:
    """ODS/OIS/AP over images as ``collect_eval_bdry.m`` (interpolated ODS, Area_PR over recall 0:0.01:1)."""
    from pyEdgeEval.common.metrics import interpolated_max_scores

    thresh = np.asarray(thresh, float)
    tot = np.sum(counts, 0)
    best = np.zeros(4)
    for c in counts:
        _, _, f = _rpf(*c.T)
        best += c[int(np.argmax(f))]
    R, P, F = _rpf(*tot.T)
    bt, br, bp, bf = interpolated_max_scores(thresh, R, P)
    ois_r, ois_p, ois_f = _rpf(*best)
    # Area_PR: interp1(R, P, 0:0.01:1) on unique recalls, NaN -> 0
    ru, idx = np.unique(R, return_index=True)
    ap = 0.0
    if len(ru) > 1:
        ap = float(np.interp(np.linspace(0, 1, 101), ru, P[idx], left=0.0, right=0.0).sum() * 0.01)
    return {"ODS": float(bf), "ODS_threshold": float(bt), "ODS_recall": float(br), "ODS_precision": float(bp),
            "OIS": float(ois_f), "OIS_recall": float(ois_r), "OIS_precision": float(ois_p), "AP": ap,
            "curve": {"threshold": thresh.tolist(), "recall": R.tolist(), "precision": P.tolist(),
                      "f": F.tolist()}}


# ----------------------------------------------------------------------------------------------- regions

def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Joint histogram n[u, v] of two label maps (labels >= 0)."""
    a = a.ravel().astype(np.int64)
    b = b.ravel().astype(np.int64)
    nb = int(b.max()) + 1
    return np.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).reshape(-1, nb).astype(np.float64)


def rand_index_voi(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Rand index and variation of information (``compare_segmentations.m``; labels shifted to start at 1)."""
    seg = seg - seg.min()
    gt = gt - gt.min()
    n = _contingency(seg, gt)
    N = n.sum()
    nu, nv = n.sum(1), n.sum(0)
    ri = 1 - ((nu * nu).sum() / 2 + (nv * nv).sum() / 2 - (n * n).sum()) / (N * (N - 1) / 2)
    joint = n / N
    m1, m2 = joint.sum(1), joint.sum(0)
    h1 = -np.sum(m1 * np.log2(m1 + (m1 == 0)))
    h2 = -np.sum(m2 * np.log2(m2 + (m2 == 0)))
    outer = np.outer(m1, m2)
    nz = joint > 0
    mi = np.sum(joint[nz] * np.log2(joint[nz] / outer[nz]))
    return float(ri), float(h1 + h2 - 2 * mi)


def segs_from_ucm2(ucm2: np.ndarray, thresh: np.ndarray) -> list[np.ndarray]:
    """``bwlabel(ucm2 <= t)`` (8-connectivity) sampled at the pixel centres ``[1::2, 1::2]``."""
    from scipy import ndimage

    out = []
    for t in thresh:
        lab, _ = ndimage.label(ucm2 <= t, structure=np.ones((3, 3), bool))
        out.append(lab[1::2, 1::2])
    return out


def region_counts(segs: list[np.ndarray], gt: GroundTruth) -> dict:
    """Covering / PRI / VI counts of one image for a list of segmentations (one per threshold).

    Returns ``{"cover": (n, 4) cntR, sumR, cntP, sumP, "cover_best": cntR_best, "ri": (n,), "voi": (n,)}``
    as ``evaluation_reg_image.m``.
    """
    gts = gt.segmentations
    areas_gt = np.concatenate([np.bincount(g.ravel(), minlength=int(g.max()) + 1)[1:] for g in gts])
    best_gt = np.zeros(len(areas_gt))
    cover = np.zeros((len(segs), 4))
    ri = np.zeros(len(segs))
    voi = np.zeros(len(segs))
    for t, seg in enumerate(segs):
        if seg.shape != gts[0].shape:
            raise LongtailError(f"segmentation of shape {seg.shape} does not match the ground truth "
                                f"{gts[0].shape}")
        rv = [rand_index_voi(seg, g) for g in gts]
        ri[t] = np.mean([r for r, _ in rv])
        voi[t] = np.mean([v for _, v in rv])
        # Jaccard of every (GT region, seg region) pair; label 0 (none in BSDS) excluded as in MATLAB
        ns = int(seg.max())
        matches = []
        for g in gts:
            conf = np.zeros((int(g.max()) + 1, ns + 1))
            c = _contingency(g, seg)
            conf[:c.shape[0], :c.shape[1]] = c
            gj = conf.sum(1, keepdims=True)
            rj = conf.sum(0, keepdims=True)
            acc = conf / np.maximum(gj + rj - conf, 1e-300)
            matches.append(acc[1:, 1:])
        matches = np.concatenate(matches, 0)  # (total_gt, ns)
        area_seg = np.bincount(seg.ravel(), minlength=ns + 1)[1:]
        m_seg = matches.max(0) if matches.size else np.zeros(ns)
        m_gt = matches.max(1) if matches.size else np.zeros(len(areas_gt))
        cover[t] = [(areas_gt * m_gt).sum(), areas_gt.sum(), (area_seg * m_seg).sum(), area_seg.sum()]
        best_gt = np.maximum(best_gt, m_gt)
    return {"cover": cover, "cover_best": float((areas_gt * best_gt).sum()), "ri": ri, "voi": voi}


def collect_region(per_image: list[dict], thresh: np.ndarray) -> dict:
    """Covering ODS/OIS/best, PRI and VI at ODS/OIS over images (``collect_eval_reg.m``)."""
    thresh = np.asarray(thresh, float)
    tot = np.zeros((len(thresh), 4))
    best = np.zeros(4)
    best_total = 0.0
    ri_sum = np.zeros(len(thresh))
    voi_sum = np.zeros(len(thresh))
    ri_best = voi_best = 0.0
    for r in per_image:
        c = r["cover"]
        R = c[:, 0] / (c[:, 1] + (c[:, 1] == 0))
        best += c[int(np.argmax(R))]
        tot += c
        best_total += r["cover_best"]
        ri_sum += r["ri"]
        voi_sum += r["voi"]
        ri_best += r["ri"].max()
        voi_best += r["voi"].min()
    n = len(per_image)
    R = tot[:, 0] / (tot[:, 1] + (tot[:, 1] == 0))
    i = int(np.argmax(R))
    g_ri, g_voi = ri_sum / n, voi_sum / n
    return {"covering_ODS": float(R[i]), "covering_ODS_threshold": float(thresh[i]),
            "covering_OIS": float(best[0] / (best[1] + (best[1] == 0))),
            "covering_best": float(best_total / best[1]) if best[1] else 0.0,
            "PRI_ODS": float(g_ri.max()), "PRI_ODS_threshold": float(thresh[int(np.argmax(g_ri))]),
            "PRI_OIS": float(ri_best / n),
            "VI_ODS": float(g_voi.min()), "VI_ODS_threshold": float(thresh[int(np.argmin(g_voi))]),
            "VI_OIS": float(voi_best / n),
            "curve": {"threshold": thresh.tolist(), "covering": R.tolist(), "PRI": g_ri.tolist(),
                      "VI": g_voi.tolist()}}
