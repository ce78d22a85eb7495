"""Edge maps -> OWT-UCM region trees with higra (Arbelaez et al. 2011, as used by Zhang & Maire 2020 §3).

``oriented_watershed`` on the 4-adjacency pixel graph (edge weights = mean of the two pixels' edge
probabilities, edge orientations = their circular mean), then regions merged by mean frontier strength
(``mean_pb_hierarchy``, or the same average linkage on the NMS-thinned edges, see :func:`owt_ucm`). The hierarchy's
leaves are the watershed super-pixels; with ``max_leaves`` the finest level is capped at N regions
(Zhang & Maire use 40) by cutting the tree and rebuilding it over the regions of that cut.
"""

from __future__ import annotations

import numpy as np

from longtail.hierarchy.tree import RegionTree


def conv_tri(img: np.ndarray, r: int) -> np.ndarray:
    """Dollar's ``convTri``: separable triangle filter, symmetric padding (OpenCV; as pyEdgeEval/higra)."""
    import cv2

    if r <= 0:
        return img
    if r <= 1:
        p = 12.0 / r / (r + 2) - 2
        k = np.array([1.0, p, 1.0]) / (2 + p)
        r = 1
    else:
        k = np.array(list(range(1, r + 2)) + list(range(r, 0, -1)), np.float64) / (r + 1) ** 2
    pad = cv2.copyMakeBorder(img.astype(np.float64), r, r, r, r, cv2.BORDER_REFLECT)
    out = cv2.sepFilter2D(pad, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)
    return out[r:-r, r:-r]


def edge_orientation(edges: np.ndarray, radius: int = 4) -> np.ndarray:
    """Orientation in [0, pi) of the edge normal (Dollar's ``edgesNms`` estimate, as higra / OpenCV SE)."""
    e = conv_tri(edges.astype(np.float64), radius)
    oy, ox = np.gradient(e)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan2(oyy * np.sign(-oxy), oxx), np.pi)


def edge_nms(edges: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Thinned edges: non-maximum suppression along the edge normal (SE/HED ``edgesNmsMex`` via pyEdgeEval's
    compiled ``nms``; orientation of the ``convTri(E, 4)`` map as in ``edgesNms``)."""
    from pyEdgeEval._lib import nms

    e = conv_tri(edges.astype(np.float64), 1)
    oy, ox = np.gradient(conv_tri(e, 4))
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    oxx[oxx == 0] = 1e-5
    ori = np.mod(np.arctan(oyy * np.sign(-oxy) / oxx), np.pi)
    return np.asarray(nms(e, ori, r=r, s=s, m=m), np.float32)


def _graph_weights(edges: np.ndarray, orientation: np.ndarray | None):
    import higra as hg

    graph = hg.get_4_adjacency_graph(edges.shape)
    w = hg.weight_graph(graph, edges.astype(np.float64), hg.WeightFunction.mean)
    if orientation is None:
        return graph, w, None
    src, dst = graph.edge_list()
    o = orientation.ravel().astype(np.float64)
    a, b = o[src], o[dst]
    # circular mean of two axial angles in [0, pi)
    b = np.where(np.abs(a - b) > np.pi / 2, b + np.where(b < a, np.pi, -np.pi), b)
    return graph, w, np.mod((a + b) / 2, np.pi)


def owt_ucm(edges: np.ndarray, orientation: np.ndarray | None = None, max_leaves: int | None = None,
            use_orientation: bool = True, boundary: str = "mix", thin: np.ndarray | None = None,
            mix_weight: float = 0.35) -> RegionTree:
    """OWT-UCM region tree of an edge probability map (H, W) in [0, 1].

    The pipeline always passes ``hierarchy.ucm``'s settings (:func:`longtail.hierarchy.process.tree_from_edges`);
    the defaults here serve library callers outside it (``region_tree_for_image``, benchmarks) and equal
    params.yaml's ``hierarchy.ucm`` (tests/test_params.py checks that they do).

    ``boundary="raw"``: higra's ``mean_pb_hierarchy`` (oriented watershed of E, regions merged by the mean of E
    along their frontier). ``boundary="nms"``: the same oriented watershed regions, merged by the mean of the
    NMS-thinned edges ``thin`` along the frontier (average linkage weighted by frontier length): thick HED
    responses no longer dominate the mean. ``boundary="mix"``: the frontier strength is
    ``mix_weight * mean(thin) + (1 - mix_weight) * mean(E)`` (E = the pixel-pair means of the watershed graph),
    merged by the same average linkage (0.707 vs 0.696 ODS for ``nms`` on 20 BSDS val images,
    docs/benchmarks-hierarchy.md).
    In the ``nms`` / ``mix`` modes the orientations do not change the tree: the oriented watershed's regions are
    those of the plain watershed, and only its (here unused) frontier weights depend on the orientations.
    """
    import higra as hg

    if use_orientation and orientation is None:
        orientation = edge_orientation(edges)
    graph, w, o = _graph_weights(edges, orientation if use_orientation else None)
    if boundary == "raw":
        tree, alt = hg.mean_pb_hierarchy(graph, w, edges.shape, edge_orientations=o)
        rag = hg.CptHierarchy.get_leaf_graph(tree)
    elif boundary in ("nms", "mix"):
        rag, _ = hg.oriented_watershed(graph, w, edges.shape, o)
        thin = edge_nms(edges) if thin is None else thin
        tw = hg.weight_graph(graph, np.asarray(thin, np.float64), hg.WeightFunction.max)
        vals = np.asarray(hg.rag_accumulate_on_edges(rag, hg.Accumulators.mean, tw), np.float64)
        lens = hg.rag_accumulate_on_edges(rag, hg.Accumulators.counter, tw).astype(np.float64)
        if boundary == "mix":
            if not 0.0 <= mix_weight <= 1.0:
                raise ValueError(f"mix_weight must be in [0, 1], not {mix_weight}")
            raw = np.asarray(hg.rag_accumulate_on_edges(rag, hg.Accumulators.mean, w), np.float64)
            vals = mix_weight * vals + (1.0 - mix_weight) * raw
        tree, alt = hg.binary_partition_tree_average_linkage(rag, vals, lens)
    else:
        raise ValueError(f"boundary must be 'nms', 'mix' or 'raw', not {boundary!r}")
    parents = np.asarray(tree.parents(), np.int64)
    alt = np.array(alt, np.float64)
    for v in range(len(parents) - 1):  # average linkage can invert: make altitudes increase to the root
        alt[parents[v]] = max(alt[parents[v]], alt[v])
    vmap = np.asarray(hg.CptRegionAdjacencyGraph.get_vertex_map(rag)).reshape(edges.shape)
    rt = RegionTree(parents, alt, vmap.astype(np.int32))
    if max_leaves and rt.n_leaves > max_leaves:
        rt = rebuild(rt, rt.cut_regions(max_leaves))
    return rt


def rebuild(rt: RegionTree, labels: np.ndarray) -> RegionTree:
    """The tree restricted above a partition ``labels`` (a cut of ``rt``): its regions become the leaves.

    Ultrametric distances are kept: adjacent regions merge at the altitude of their lowest common ancestor
    in ``rt``; single linkage on that ultrametric (``bpt_canonical``) rebuilds the same hierarchy.
    """
    import higra as hg

    from longtail.hierarchy.tree import lca_altitudes

    graph = hg.get_4_adjacency_graph(labels.shape)
    rag = hg.make_region_adjacency_graph_from_labelisation(graph, labels)
    src, dst = graph.edge_list()
    leaf = rt.leaf_labels.ravel()
    lab = labels.ravel()
    sal = np.zeros(len(src))
    diff = lab[src] != lab[dst]
    sal[diff] = lca_altitudes(rt, leaf[src][diff], leaf[dst][diff])
    rag_w = hg.rag_accumulate_on_edges(rag, hg.Accumulators.max, sal)
    tree, alt = hg.bpt_canonical(rag, rag_w)
    vmap = np.asarray(hg.CptRegionAdjacencyGraph.get_vertex_map(rag)).reshape(labels.shape)
    return RegionTree(np.asarray(tree.parents(), np.int64), np.asarray(alt, np.float64), vmap.astype(np.int32))
