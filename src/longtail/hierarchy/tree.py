"""Region trees (OWT-UCM hierarchies) and their I/O.

A :class:`RegionTree` is a higra-style parent array over ``n_leaves`` finest regions (leaves ``0..n_leaves-1``,
internal nodes after them, the root last and its own parent), the merge altitude of every node (0 for
leaves; the UCM value of the contour removed when the node's children merge) and the finest-level label
map. Cutting the tree at a level ``t`` merges every node of altitude ``<= t``: that is the segmentation
``bwlabel(ucm2 <= t)`` of the BSDS benchmark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longtail.common.errors import LongtailError


@dataclass
class RegionTree:
    parents: np.ndarray      # (n_nodes,) int64
    altitudes: np.ndarray    # (n_nodes,) float64, non-decreasing from a node to its parent
    leaf_labels: np.ndarray  # (H, W) int32 in [0, n_leaves)

    @property
    def n_nodes(self) -> int:
        return len(self.parents)

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_labels.max()) + 1 if self.leaf_labels.size else 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.leaf_labels.shape)

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    def hg_tree(self):
        import higra as hg

        return hg.Tree(self.parents)

    # ---- cuts
    def cut_nodes(self, level: float) -> np.ndarray:
        """For every leaf, its largest ancestor of altitude <= ``level`` (the region it belongs to)."""
        alt = self.altitudes
        node = np.arange(self.n_leaves)
        while True:
            par = self.parents[node]
            up = (par != node) & (alt[par] <= level)
            if not up.any():
                return node
            node = np.where(up, par, node)

    def cut(self, level: float) -> np.ndarray:
        """(H, W) label map (0..k-1) of the segmentation at ``level`` (UCM threshold)."""
        nodes = self.cut_nodes(level)
        _, lab = np.unique(nodes, return_inverse=True)
        return lab.astype(np.int32)[self.leaf_labels]

    def level_for_regions(self, n_regions: int) -> float:
        """The lowest level whose cut has at most ``n_regions`` regions."""
        internal = np.sort(self.altitudes[self.n_leaves:])
        # cutting above the k largest merges leaves k + 1 regions (binary tree)
        k = max(int(n_regions) - 1, 0)
        if k >= len(internal):
            return -1.0 if len(internal) == 0 else float(np.nextafter(internal[0], -np.inf))
        # levels between distinct altitudes; ties can make the count smaller, never larger
        return float(internal[len(internal) - 1 - k])

    def cut_regions(self, n_regions: int) -> np.ndarray:
        """Label map with (at most) ``n_regions`` regions."""
        return self.cut(self.level_for_regions(n_regions))

    # ---- relations
    def node_leaves(self, node: int) -> np.ndarray:
        """Leaf ids under ``node``."""
        anc = self.leaf_ancestors()
        return np.nonzero((anc == node).any(1))[0]

    def node_mask(self, node: int) -> np.ndarray:
        return np.isin(self.leaf_labels, self.node_leaves(node))

    def leaf_ancestors(self) -> np.ndarray:
        """(n_leaves, depth) ancestors of every leaf (padded with the root)."""
        chains = [np.arange(self.n_leaves)]
        cur = chains[0]
        while True:
            nxt = self.parents[cur]
            if np.array_equal(nxt, cur):
                break
            chains.append(nxt)
            cur = nxt
        return np.stack(chains, 1)

    def leaf_distances(self) -> np.ndarray:
        """d_T between finest regions: (n_leaves, n_leaves) altitude of their lowest common ancestor, 0 on
        the diagonal (Zhang & Maire Eq. 2-3)."""
        n = self.n_leaves
        a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        d = lca_altitudes(self, a.ravel(), b.ravel()).reshape(n, n)
        np.fill_diagonal(d, 0.0)
        return d

    def parent_child_pairs(self, min_area: int = 0) -> np.ndarray:
        """(K, 2) ``(parent, child)`` node pairs of the tree (root excluded as a child)."""
        child = np.arange(self.n_nodes - 1)
        pairs = np.stack([self.parents[child], child], 1)
        if min_area:
            area = self.areas()
            pairs = pairs[(area[pairs[:, 1]] >= min_area)]
        return pairs

    def areas(self) -> np.ndarray:
        """Pixel area of every node."""
        area = np.zeros(self.n_nodes, np.int64)
        area[:self.n_leaves] = np.bincount(self.leaf_labels.ravel(), minlength=self.n_leaves)
        # children are numbered before their parents (higra topological order)
        for v in range(self.n_nodes - 1):
            area[self.parents[v]] += area[v]
        return area

    # ---- UCM
    def ucm2(self) -> np.ndarray:
        """BSDS ``ucm2``: (2H+1, 2W+1) ultrametric contour map; pixels at ``[1::2, 1::2]``."""
        import higra as hg

        h, w = self.shape
        graph = hg.get_4_adjacency_graph((h, w))
        src, dst = graph.edge_list()
        lab = self.leaf_labels.ravel()
        a, b = lab[src], lab[dst]
        sal = np.zeros(len(src))
        diff = a != b
        if diff.any():
            sal[diff] = lca_altitudes(self, a[diff], b[diff])
        return np.asarray(hg.graph_4_adjacency_2_khalimsky(graph, sal, (h, w), add_extra_border=True))

    # ---- I/O
    def save(self, path: str | os.PathLike, **extra) -> None:
        from longtail.common.io import atomic_path

        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, parents=self.parents.astype(np.int32), altitudes=self.altitudes,
                                leaf_labels=self.leaf_labels.astype(np.int32), **extra)


def lca_altitudes(tree: RegionTree, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Altitude of the lowest common ancestor of leaf pairs (a[i], b[i])."""

    t = tree.hg_tree()
    lca = t.lowest_common_ancestor(a.astype(np.int64), b.astype(np.int64))
    return tree.altitudes[lca]


def load_region_tree(path: str | os.PathLike) -> RegionTree:
    """Read a region tree written by ``longtail ucm`` (``<image>.npz``)."""
    path = Path(path)
    if not path.exists():
        raise LongtailError(f"region tree {path} not found; run `longtail ucm` for this image set first")
    try:
        with np.load(path) as z:
            return RegionTree(z["parents"].astype(np.int64), z["altitudes"].astype(np.float64),
                              z["leaf_labels"].astype(np.int32))
    except (KeyError, ValueError, OSError) as e:
        raise LongtailError(f"region tree {path} is unreadable ({e}); delete it and rerun `longtail ucm`") from e
