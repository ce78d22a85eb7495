"""Object proposals from UCM region trees (MCG/COB-style, annotation-free; regions as in Zhang et al. 2020).

The region tree T comes from the hierarchy stage (``longtail ucm``: OWT-UCM over superpixel leaves) or from a
bare UCM (:func:`tree_from_ucm`). Candidates (every one a union of leaves):

* every node of T (area filter), plus the nodes of extra hierarchies rebuilt over the same leaves
  (``extra_trees``, MCG's multiple groupings): hierarchical watersheds by area / volume of the leaf adjacency graph
  weighted by T's saliency (the UCM value of each leaf boundary), Ward linkage of the leaves' mean Lab colour and
  centroid, and average linkage of saliency + Lab colour distance;
* unions of two / three adjacent regions of horizontal cuts of T (MCG's combinatorial pairs and triples).

Score (no annotation used): boundary strength x area prior x compactness x border prior,
``b * area_frac ** area_exp * (4 pi area / perimeter^2) ** compact_exp * (1 - border_len / perimeter) ** border_exp``
(regions whose outline runs along the image border are mostly background "stuff"), where ``b`` is the mean saliency of T
along the candidate's outer boundary (UCM contrast), averaged for a tree node with the normalised altitude at
which its own tree merges it away (persistence). The best ``pre_nms`` candidates go through greedy mask NMS at
``nms_iou`` and the first ``max_masks`` are returned; ``longtail propose`` then applies its own NMS + top-K.

All region algebra runs on leaves: a node is an interval of leaves in the depth-first order of its tree, areas,
boundary lengths and boundary saliency sums are accumulated bottom-up (an edge between leaves a and b counts
+1 at a and b and -2 at their lowest common ancestor), so one image takes well under a second.
"""

from __future__ import annotations

import functools
from pathlib import Path

import higra as hg
import numpy as np
import torch
import torch.nn.functional as F

from longtail.common.errors import LongtailError

EXTRA_TREES = ("ws_area", "ws_volume", "ward_color", "avg_color")
COLOR_TREES = ("ward_color", "avg_color")
WARD_XY_WEIGHT = 0.3     # Ward linkage features: Lab (0..100) + this x centroid (pixels)
AVG_COLOR_WEIGHT = 0.5   # average linkage weight: saliency + this x Lab distance / 100


def tree_from_ucm(ucm: np.ndarray):
    """(parents, altitudes, leaf_labels) of a UCM given as ucm2 (2h+1, 2w+1) or a pixel boundary map (h, w).

    Leaves = the regions of the finest level (connected pixels not separated by a UCM value > 0); the tree is
    the binary partition tree of their adjacency graph by single linkage on the UCM (same cuts as the UCM).
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
    qfz, alt = hg.quasi_flat_zone_hierarchy(graph, weights)
    labels = np.asarray(hg.labelisation_horizontal_cut_from_threshold(qfz, alt, 0.0))
    rag = hg.make_region_adjacency_graph_from_labelisation(graph, labels)
    if rag.num_vertices() < 2:
        return np.zeros(1, np.int64), np.zeros(1), np.zeros(shape, np.int64)
    tree, alt2 = hg.bpt_canonical(rag, hg.rag_accumulate_on_edges(rag, hg.Accumulators.min, weights))
    vmap = np.asarray(hg.CptRegionAdjacencyGraph.get_vertex_map(rag)).reshape(shape)
    return np.asarray(tree.parents()), np.asarray(alt2, np.float64), vmap


def _resize_labels(labels: np.ndarray, out_hw) -> np.ndarray:
    if labels.shape == tuple(out_hw):
        return labels
    t = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=tuple(out_hw), mode="nearest")[0, 0].long().numpy()


class _Tree:
    """One hierarchy over the shared leaves: DFS leaf intervals, areas, outer/inner boundary sums per node.

    ``base`` (another _Tree over the same leaves): reuse its leaf map, leaf adjacency and saliency.
    """

    def __init__(self, parents, altitudes, leaf=None, base: _Tree | None = None):
        self.tree = tree = hg.Tree(np.asarray(parents, dtype=np.int64))
        self.alt = alt = np.asarray(altitudes, np.float64)
        if len(alt) != tree.num_vertices():
            raise LongtailError(f"region tree: {len(alt)} altitudes for {tree.num_vertices()} nodes")
        self.par = par = np.asarray(tree.parents())
        self.n, self.L, self.root = tree.num_vertices(), tree.num_leaves(), tree.root()
        self.leaf = leaf = base.leaf if base is not None else leaf
        if int(leaf.max()) + 1 > self.L:
            raise LongtailError(f"region tree: leaf_labels has ids up to {int(leaf.max())} but the tree has "
                                f"{self.L} leaves; rerun `longtail ucm`.")
        self.n_px = leaf.size
        L, n = self.L, self.n
        nl = np.asarray(hg.accumulate_sequential(tree, np.ones(L), hg.Accumulators.sum)).astype(np.int64)
        # depth-first leaf order: a node's leaves are positions [start, start + nl)
        order = np.argsort(par[:-1], kind="stable")
        sp, nlo = par[order], nl[order]
        cum = np.cumsum(nlo)
        first = np.r_[True, sp[1:] != sp[:-1]]
        g0 = np.maximum.accumulate(np.where(first, np.arange(len(sp)), 0))
        off = np.zeros(n)
        off[order] = cum - nlo - (cum[g0] - nlo[g0])
        start = np.asarray(hg.propagate_sequential_and_accumulate(tree, off, hg.Accumulators.sum)).round()
        start = start.astype(np.int64)
        start[self.root] = 0
        self.start, self.end = start, start + nl
        self.pos = start[:L]
        self.la = base.la if base is not None else np.bincount(leaf.ravel(), minlength=L).astype(np.float64)
        la_dfs = np.zeros(L)
        la_dfs[self.pos] = self.la
        self.cum_area = np.r_[0.0, np.cumsum(la_dfs)]
        self.area = self.cum_area[self.end] - self.cum_area[self.start]
        if base is None:
            # pixel edges between different leaves -> (leaf a, leaf b, length); saliency = UCM value = LCA altitude
            a = np.concatenate([leaf[:, :-1].ravel(), leaf[:-1].ravel()])
            b = np.concatenate([leaf[:, 1:].ravel(), leaf[1:].ravel()])
            m = a != b
            key, cnt = np.unique(np.minimum(a[m], b[m]).astype(np.int64) * L + np.maximum(a[m], b[m]),
                                 return_counts=True)
            self.ea, self.eb, self.elen = key // L, key % L, cnt.astype(np.float64)
            lca = np.asarray(hg.make_lca_fast(tree).lca(self.ea, self.eb)) if len(key) else np.zeros(0, np.int64)
            self.eh = alt[lca] / max(alt[self.root], 1e-12)
            border = np.zeros(L)
            for side in (leaf[0], leaf[-1], leaf[1:-1, 0], leaf[1:-1, -1]):
                np.add.at(border, side, 1.0)
            self.leaf_border = border
        else:
            self.ea, self.eb, self.elen, self.eh = base.ea, base.eb, base.elen, base.eh
            self.leaf_border = base.leaf_border
            lca = np.asarray(hg.make_lca_fast(tree).lca(self.ea, self.eb)) if len(self.ea) else np.zeros(0, np.int64)
        # outer boundary (length, saliency sum) of every node: +1 at both leaves, -2 at their LCA, summed up
        olen, osum = np.zeros(n), np.zeros(n)
        for v in (self.ea, self.eb):
            np.add.at(olen, v, self.elen)
            np.add.at(osum, v, self.elen * self.eh)
        np.add.at(olen, lca, -2.0 * self.elen)
        np.add.at(osum, lca, -2.0 * self.elen * self.eh)
        self.blen, self.bsum = self._acc(olen), self._acc(osum)
        self.border = np.asarray(hg.accumulate_sequential(tree, self.leaf_border, hg.Accumulators.sum))

    def _acc(self, own: np.ndarray) -> np.ndarray:
        return np.asarray(hg.accumulate_and_add_sequential(self.tree, own, own[:self.L], hg.Accumulators.sum))

    def cut(self, n_regions: int) -> np.ndarray:
        """Region (node id) of every leaf in the horizontal cut with at least ``n_regions`` regions."""
        t = hg.HorizontalCutExplorer(self.tree, self.alt).horizontal_cut_from_num_regions(int(n_regions)).altitude()
        inside = self.alt[self.par] <= t
        inside[self.root] = False
        return np.asarray(hg.propagate_sequential(self.tree, np.arange(self.n), inside))[:self.L]

    def membership(self, S: np.ndarray, E: np.ndarray) -> np.ndarray:
        """(n, L) bool leaf membership of candidates given as unions of DFS intervals [S, E) (n, k)."""
        d = np.zeros((S.shape[0], self.L + 1), np.int16)
        rows = np.arange(S.shape[0])
        for k in range(S.shape[1]):
            np.add.at(d, (rows, S[:, k]), 1)
            np.add.at(d, (rows, E[:, k]), -1)
        return (np.cumsum(d, axis=1, dtype=np.int16)[:, :self.L] > 0)[:, self.pos]


def _extra_trees(base: _Tree, names, image: np.ndarray | None = None) -> list[_Tree]:
    """Hierarchies rebuilt over ``base``'s leaves (``EXTRA_TREES``); colour trees need the RGB image."""
    rag = hg.UndirectedGraph(base.L)
    rag.add_edges(base.ea, base.eb)
    col = None
    out = []
    for name in names:
        if name not in EXTRA_TREES:
            raise LongtailError(f"annotation_free.ucm.extra_trees: unknown tree {name!r}; use {', '.join(EXTRA_TREES)}")
        if len(base.ea) == 0:
            continue
        if name == "ws_area":
            t, a = hg.watershed_hierarchy_by_area(rag, base.eh, vertex_area=base.la)
        elif name == "ws_volume":
            t, a = hg.watershed_hierarchy_by_volume(rag, base.eh, vertex_area=base.la)
        else:
            if image is None:
                raise LongtailError(f"annotation_free.ucm.extra_trees: {name} needs the image")
            if image.shape[:2] != base.leaf.shape:
                raise LongtailError(f"ucm: image is {image.shape[1]}x{image.shape[0]} but the proposals are "
                                    f"{base.leaf.shape[1]}x{base.leaf.shape[0]}; fix the dataset JSON.")
            if col is None:
                from skimage import color

                lab = color.rgb2lab(image[..., :3]).reshape(-1, 3)
                lf = base.leaf.ravel()
                col = np.stack([np.bincount(lf, weights=lab[:, k], minlength=base.L) for k in range(3)], 1)
                col /= np.maximum(base.la, 1)[:, None]
            if name == "ward_color":
                yy, xx = np.mgrid[:base.leaf.shape[0], :base.leaf.shape[1]]
                cy = np.bincount(base.leaf.ravel(), weights=yy.ravel(), minlength=base.L) / np.maximum(base.la, 1)
                cx = np.bincount(base.leaf.ravel(), weights=xx.ravel(), minlength=base.L) / np.maximum(base.la, 1)
                t, a = hg.binary_partition_tree_ward_linkage(rag, np.c_[col, WARD_XY_WEIGHT * cy, WARD_XY_WEIGHT * cx],
                                                             base.la)
            else:
                dist = np.linalg.norm(col[base.ea] - col[base.eb], axis=1) / 100.0
                t, a = hg.binary_partition_tree_average_linkage(rag, base.eh + AVG_COLOR_WEIGHT * dist, base.elen)
        if t.num_leaves() != base.L:   # a disconnected leaf graph gives a forest; skip it
            continue
        out.append(_Tree(np.asarray(t.parents()), np.asarray(a, np.float64), base=base))
    return out


def _candidates(t: _Tree, lo: float, hi: float, *, cuts=(), pairs: int = 0, triples: int = 0):
    """Candidates of one tree: (S, E) DFS intervals (n, 3), boundary strength b (n,), area (n,), perimeter (n,),
    length of perimeter on the image border (n,)."""
    nodes = np.flatnonzero((t.area >= lo) & (t.area <= hi))
    nodes = nodes[nodes != t.root]
    top = max(t.alt[t.root], 1e-12)
    mo = t.bsum[nodes] / np.maximum(t.blen[nodes], 1e-12)
    # a node: mean of its outer boundary contrast and its persistence in its own tree
    b = [0.5 * (mo + t.alt[t.par[nodes]] / top)]
    S = [np.c_[t.start[nodes], np.zeros((len(nodes), 2), np.int64)]]
    E = [np.c_[t.end[nodes], np.zeros((len(nodes), 2), np.int64)]]
    area, perim, border = [t.area[nodes]], [t.blen[nodes] + t.border[nodes]], [t.border[nodes]]
    seen: set[tuple] = set()
    for n_reg in sorted({int(k) for k in cuts if int(k) <= max(pairs, triples)}):
        reg = t.cut(n_reg)
        ra, rb = reg[t.ea], reg[t.eb]
        d = ra != rb
        if not d.any():
            continue
        key, inv = np.unique(np.minimum(ra[d], rb[d]) * t.n + np.maximum(ra[d], rb[d]), return_inverse=True)
        slen = np.bincount(inv, weights=t.elen[d])
        ssum = np.bincount(inv, weights=(t.elen * t.eh)[d])
        shared = {(int(k // t.n), int(k % t.n)): (sl, ss) for k, sl, ss in zip(key, slen, ssum)}
        groups = []
        if n_reg <= pairs:
            groups += list(shared)
        if n_reg <= triples:
            nb: dict[int, set] = {}
            for u, v in shared:
                nb.setdefault(u, set()).add(v)
                nb.setdefault(v, set()).add(u)
            for c, vs in nb.items():
                vs = sorted(vs)
                groups += [tuple(sorted((c, vs[i], vs[j]))) for i in range(len(vs)) for j in range(i + 1, len(vs))]
        for g in groups:
            if g in seen:
                continue
            seen.add(g)
            gl = list(g)
            ar = t.area[gl].sum()
            if not lo <= ar <= hi or (len(g) == 2 and t.par[g[0]] == t.par[g[1]]
                                      and t.area[t.par[g[0]]] == ar):   # = their parent, already a node
                continue
            inner = [shared[p] for p in ((g[0], g[1]), (g[0], g[-1]), (g[1], g[-1]))[:1 if len(g) == 2 else 3]
                     if p in shared]
            sl = sum(x[0] for x in inner)
            ss = sum(x[1] for x in inner)
            bl = t.blen[gl].sum() - 2 * sl
            b.append([(t.bsum[gl].sum() - 2 * ss) / max(bl, 1e-12)])
            S.append([list(t.start[gl]) + [0] * (3 - len(gl))])
            E.append([list(t.end[gl]) + [0] * (3 - len(gl))])
            area.append([ar])
            perim.append([bl + t.border[gl].sum()])
            border.append([t.border[gl].sum()])
    return (np.concatenate(S).astype(np.int64), np.concatenate(E).astype(np.int64), np.concatenate(b).astype(float),
            np.concatenate(area).astype(float), np.concatenate(perim).astype(float), np.concatenate(border).astype(float))


def candidate_scores(b, area, perim, border, n_px: int, area_exp: float, compact_exp: float,
                     border_exp: float) -> np.ndarray:
    """Annotation-free score: boundary contrast x area prior x compactness x border prior (module docstring)."""
    compact = np.clip(4 * np.pi * area / np.maximum(perim, 1.0) ** 2, 0.0, 1.0)
    inside = np.clip(1.0 - border / np.maximum(perim, 1.0), 0.0, 1.0)   # share of the outline not on the image border
    return np.clip(b, 0, 1) * (area / n_px) ** area_exp * compact ** compact_exp * inside ** border_exp


def _mask_nms(M: np.ndarray, la: np.ndarray, scores: np.ndarray, iou_thr: float, topk: int) -> np.ndarray:
    """Greedy NMS on leaf-membership rows (IoU in pixels): kept row indices, by descending score."""
    order = np.argsort(-scores, kind="stable")
    Mo = M[order].astype(np.float32)
    w = la.astype(np.float32)
    area = Mo @ w
    keep: list[int] = []
    sup = np.zeros(len(order), bool)
    for p in range(len(order)):
        if sup[p]:
            continue
        keep.append(int(order[p]))
        if len(keep) >= topk:
            break
        inter = Mo @ (w * Mo[p])
        sup |= inter > iou_thr * (area + area[p] - inter)
    return np.asarray(keep, np.int64)


def _tree_proposals(parents, altitudes, leaf_labels, out_hw, *, num_regions, pairs, triples, extra_trees, image,
                    min_area_frac, max_area_frac, area_exp, compact_exp, border_exp, nms_iou, pre_nms, max_masks):
    """One region tree's proposals: (leaf map at ``out_hw``, leaf membership (n, L), scores (n,)) after NMS, or
    None for a degenerate tree (see :func:`ucm_proposals`)."""
    alt = np.asarray(altitudes, dtype=np.float64)
    if len(alt) < 2 or float(alt[-1]) <= 0:
        return None
    base = _Tree(parents, alt, leaf=_resize_labels(np.asarray(leaf_labels), out_hw))
    lo, hi = min_area_frac * base.n_px, max_area_frac * base.n_px
    trees = [base] + _extra_trees(base, extra_trees, image)
    cands = [_candidates(t, lo, hi, cuts=num_regions if t is base else (), pairs=pairs if t is base else 0,
                         triples=triples if t is base else 0) for t in trees]
    scores = [candidate_scores(b, area, perim, border, base.n_px, area_exp, compact_exp, border_exp)
              for _, _, b, area, perim, border in cands]
    allsc = np.concatenate(scores)
    if len(allsc) == 0:
        return None
    thr = np.sort(allsc)[::-1][min(pre_nms, len(allsc)) - 1]
    Ms, ss = [], []
    for t, (S, E, *_), sc in zip(trees, cands, scores):
        sel = np.flatnonzero(sc >= thr)
        if len(sel):
            Ms.append(t.membership(S[sel], E[sel]))
            ss.append(sc[sel])
    M, sc = np.concatenate(Ms), np.concatenate(ss)
    keep = _mask_nms(M, base.la, sc, nms_iou, max_masks)
    return base.leaf, M[keep], sc[keep]


def ucm_proposals(parents: np.ndarray, altitudes: np.ndarray, leaf_labels: np.ndarray, out_hw: tuple[int, int],
                  *, num_regions=(8, 16, 32, 64), pairs: int = 64, triples: int = 16, extra_trees=(),
                  image: np.ndarray | None = None, min_area_frac: float = 0.0005, max_area_frac: float = 0.95,
                  area_exp: float = 0.2, compact_exp: float = 0.5, border_exp: float = 1.0, nms_iou: float = 0.75,
                  pre_nms: int = 1500, max_masks: int = 100, fill_holes: bool = True,
                  dilate_px: int = 0, more_trees=()) -> tuple[np.ndarray, np.ndarray]:
    """(masks (n, H, W) bool, scores (n,) in [0, 1], descending) from a region tree; masks at ``out_hw``.

    The tree: higra parent array over the leaves ``0..n_leaves-1`` (children before parents, root last),
    merge altitudes, and the (h, w) map of leaf ids (resized to ``out_hw`` if it differs).
    ``num_regions``: horizontal cuts of the tree whose adjacent regions form pairs (cuts with <= ``pairs``
    regions) and triples (<= ``triples``); ``extra_trees``: names of :data:`EXTRA_TREES` (colour trees need
    ``image``, RGB at ``out_hw``). ``more_trees``: (parents, altitudes, leaf_labels) of other region trees of the
    same image (e.g. from other edge maps; MCG's multi-scale hierarchies): each gives its own ``max_masks``
    proposals as above, and their union goes through the same NMS again (on the common refinement of the leaf
    maps), best ``max_masks`` kept.
    The returned masks have their holes filled (``fill_holes``) and can be dilated by
    ``dilate_px`` pixels (4-connected; the watershed gives each boundary pixel to one side only, while COCO-style
    polygon masks include the object's outline).
    """
    empty = np.zeros((0, *out_hw), bool), np.zeros(0)
    kw = dict(num_regions=num_regions, pairs=pairs, triples=triples, extra_trees=extra_trees, image=image,
              min_area_frac=min_area_frac, max_area_frac=max_area_frac, area_exp=area_exp, compact_exp=compact_exp,
              border_exp=border_exp, nms_iou=nms_iou, pre_nms=pre_nms, max_masks=max_masks)
    found = [f for tree in [(parents, altitudes, leaf_labels), *more_trees]
             if (f := _tree_proposals(*tree, out_hw, **kw)) is not None]
    if not found:
        return empty
    if len(found) == 1:
        leaf, M, s = found[0]
        keep = np.arange(len(s))
    else:   # pooled on the common refinement of the leaf maps: one leaf per combination of the trees' leaves
        stack = np.stack([f[0].ravel().astype(np.int64) for f in found], 1)
        combos, inv = np.unique(stack, axis=0, return_inverse=True)
        leaf = inv.reshape(out_hw)
        M = np.concatenate([m[:, combos[:, i]] for i, (_, m, _) in enumerate(found)])
        s = np.concatenate([f[2] for f in found])
        la = np.bincount(leaf.ravel(), minlength=len(combos)).astype(np.float64)
        keep = _mask_nms(M, la, s, nms_iou, max_masks)
    masks = M[keep][:, leaf]
    if fill_holes or dilate_px:
        from scipy import ndimage as ndi

        cross = ndi.generate_binary_structure(2, 1)
        H, W = out_hw
        for m in masks:   # on the mask's box grown by dilate_px (same result as on the whole image, much faster)
            ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            y0, y1 = max(ys[0] - dilate_px, 0), min(ys[-1] + dilate_px + 1, H)
            x0, x1 = max(xs[0] - dilate_px, 0), min(xs[-1] + dilate_px + 1, W)
            crop = m[y0:y1, x0:x1]
            if fill_holes:
                crop = ndi.binary_fill_holes(crop)
            m[y0:y1, x0:x1] = ndi.binary_dilation(crop, cross, iterations=dilate_px) if dilate_px else crop
    return masks, s[keep]


def _indexed_tree(folder: Path, image: dict, names) -> Path | None:
    """The tree file ``<folder>/index.json`` lists for the image (by id, then key), if the folder has an index."""
    idx = folder / "index.json"
    if not idx.exists():
        return None
    files = _tree_files(str(folder), idx.stat().st_mtime_ns)
    hit = files.get(int(image["id"]))
    if hit is None:
        hit = next((files[n] for n in names if n in files), None)
    return hit


@functools.lru_cache(maxsize=8)
def _tree_files(folder: str, mtime_ns: int) -> dict:
    """{image id / key / image path: tree path} of a `longtail ucm` folder (cached per index version)."""
    from longtail.hierarchy import region_trees

    return region_trees(folder)


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
    # a folder with an index.json (sharded `longtail ucm`: shards/<i>-of-<N>/<key>.npz) names each image's file
    indexed = [t for d in dirs for t in [_indexed_tree(d, image, names)] if t is not None]
    for cand in indexed + [d / f"{n}.npz" for d in dirs for n in names]:
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
