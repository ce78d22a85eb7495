"""Object proposals from a UCM region tree (an MCG/COB-style baseline; regions as in Zhang et al. 2020).

The region tree T comes from the hierarchy stage (``longtail ucm``: OWT-UCM over superpixel leaves) or from a
bare UCM (higra quasi-flat-zone hierarchy of the 4-adjacency pixel graph weighted by the UCM). Candidates are the regions of horizontal cuts of T with 2, 4, ..., 128
regions (several levels), plus (optionally) unions of two adjacent regions of the coarser cuts (MCG's
combinatorial pairs). A region's score is its persistence in T, altitude(parent) - altitude(region): the
strength of its weakest outer boundary above its strongest inner one (a boundary-strength score that does not
depend on the level). Candidates are filtered by area; duplicates (the same node at several cuts) are merged,
and ``longtail propose`` applies mask NMS and top-K.
"""

from __future__ import annotations

from pathlib import Path

import higra as hg
import numpy as np
import torch
import torch.nn.functional as F

from longtail.common.errors import LongtailError


def tree_from_ucm(ucm: np.ndarray):
    """(parents, altitudes, leaf_labels) of a UCM given as ucm2 (2h+1, 2w+1) or a pixel boundary map (h, w).

    The tree is higra's quasi-flat-zone hierarchy of the 4-adjacency pixel graph (leaves = pixels).
    """
    ucm = np.asarray(ucm, dtype=np.float64)
    if ucm.ndim != 2:
        raise LongtailError(f"UCM must be a 2-D array, got shape {ucm.shape}")
    h2, w2 = ucm.shape
    if h2 % 2 == 1 and w2 % 2 == 1 and h2 > 2 and w2 > 2 and np.all(ucm[1::2, 1::2] == 0):
        graph, weights = hg.khalimsky_2_graph_4_adjacency(ucm, extra_border=True)
        shape = ((h2 - 1) // 2, (w2 - 1) // 2)
    else:
        graph = hg.get_4_adjacency_graph(ucm.shape)
        weights = hg.weight_graph(graph, ucm, hg.WeightFunction.max)
        shape = ucm.shape
    tree, altitudes = hg.quasi_flat_zone_hierarchy(graph, weights)
    return np.asarray(tree.parents()), np.asarray(altitudes), np.arange(shape[0] * shape[1]).reshape(shape)


def _resize_labels(labels: np.ndarray, out_hw) -> np.ndarray:
    if labels.shape == tuple(out_hw):
        return labels
    t = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=tuple(out_hw), mode="nearest")[0, 0].long().numpy()


def ucm_proposals(parents: np.ndarray, altitudes: np.ndarray, leaf_labels: np.ndarray, out_hw: tuple[int, int],
                  *, num_regions=(2, 4, 8, 16, 32, 64, 128), min_area_frac: float = 0.001,
                  max_area_frac: float = 0.95, pairs: int = 16, max_masks: int = 400
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(masks (n, H, W) bool, scores (n,)) from a region tree; masks at ``out_hw``.

    The tree: higra parent array over the leaves ``0..n_leaves-1`` (children before parents, root last),
    merge altitudes, and the (h, w) map of leaf ids (resized to ``out_hw`` if it differs).
    ``pairs``: unions of two adjacent regions are added for cuts with at most this many regions (0 = none).
    """
    tree = hg.Tree(np.asarray(parents, dtype=np.int64))
    alt = np.asarray(altitudes, dtype=np.float64)
    if len(alt) != tree.num_vertices():
        raise LongtailError(f"region tree: {len(alt)} altitudes for {tree.num_vertices()} nodes")
    top = float(alt[tree.root()])
    if top <= 0:
        return np.zeros((0, *out_hw), bool), np.zeros(0)
    persistence = (alt[tree.parents()] - alt) / top
    explorer = hg.HorizontalCutExplorer(tree, alt)
    leaf_labels = _resize_labels(np.asarray(leaf_labels), out_hw)
    n_px = out_hw[0] * out_hw[1]
    root = tree.root()
    seen: set[int] = set()
    seen_pairs: set[tuple[int, int]] = set()
    masks, scores = [], []
    for n in sorted({int(k) for k in num_regions}):
        cut = explorer.horizontal_cut_from_num_regions(n)
        nodes = np.asarray(cut.nodes())
        t = cut.altitude()
        # every node whose parent lies inside a cut region takes that region's id (root-to-leaves propagation)
        inside = alt[tree.parents()] <= t
        inside[root] = False
        node_of = np.asarray(hg.propagate_sequential(tree, np.arange(tree.num_vertices()), inside))
        lab = node_of[leaf_labels]
        areas = dict(zip(*(a.tolist() for a in np.unique(lab, return_counts=True))))
        for v in nodes.tolist():
            if v in seen or v == root or not (min_area_frac * n_px <= areas.get(v, 0) <= max_area_frac * n_px):
                continue
            seen.add(v)
            masks.append(lab == v)
            scores.append(float(persistence[v]))
        if pairs and len(nodes) <= pairs:
            for a, b in _adjacent_pairs(lab):
                if (a, b) in seen_pairs or root in (a, b):
                    continue
                seen_pairs.add((a, b))
                m = (lab == a) | (lab == b)
                if min_area_frac * n_px <= m.sum() <= max_area_frac * n_px:
                    masks.append(m)
                    # a pair is only as good as its weaker member, and ranked below single regions
                    scores.append(0.5 * min(float(persistence[a]), float(persistence[b])))
    if not masks:
        return np.zeros((0, *out_hw), bool), np.zeros(0)
    order = np.argsort(-np.asarray(scores), kind="stable")[:max_masks]
    return np.stack([masks[i] for i in order]), np.asarray(scores)[order]


def _adjacent_pairs(lab: np.ndarray) -> list[tuple[int, int]]:
    pairs = set()
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1], lab[1:])):
        diff = a != b
        for u, v in zip(a[diff].ravel(), b[diff].ravel()):
            pairs.add((int(min(u, v)), int(max(u, v))))
    return sorted(pairs)


def load_tree(tree_dir: str | Path | list, image: dict):
    """(parents, altitudes, leaf_labels) of a dataset image from the hierarchy stage's output directory.

    ``tree_dir``: a folder or a list of folders searched in order. Looks for ``<tree_dir>/<id:012d>.npz`` (``longtail ucm`` on a COCO JSON), ``<id>.npz`` or ``<file stem>.npz``:
    a region tree written by
    ``longtail ucm`` (longtail.hierarchy.tree.RegionTree: parents, altitudes, leaf_labels) or a bare
    ``ucm2`` / ``ucm`` array.
    """
    dirs = [Path(p) for p in tree_dir] if isinstance(tree_dir, (list, tuple)) else [Path(tree_dir)]
    stem = Path(image["file_name"]).stem
    names = (f"{int(image['id']):012d}", str(image["id"]), stem)
    for cand in (d / f"{n}.npz" for d in dirs for n in names):
        if not cand.exists():
            continue
        with np.load(cand) as z:
            keys = set(z.keys())
            if {"parents", "altitudes", "leaf_labels"} <= keys:
                return z["parents"], z["altitudes"], z["leaf_labels"]
            for key in ("ucm2", "ucm"):
                if key in keys:
                    return tree_from_ucm(z[key])
        raise LongtailError(f"{cand}: neither a region tree (parents, altitudes, leaf_labels) nor a 'ucm2' array "
                            f"(keys: {sorted(keys)}); rerun `longtail ucm` to regenerate it.")
    raise LongtailError(f"no region tree for image {image['id']} ({image['file_name']}) in "
                        f"{' or '.join(map(str, dirs))}: expected "
                        f"{', '.join(n + '.npz' for n in names)}. Run `longtail ucm` on this dataset first or set "
                        f"annotation_free.ucm.tree_dir.")
