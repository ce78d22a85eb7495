"""hierarchy stage: HED edges, OWT-UCM region trees, the BSDS500 benchmark, pixel embeddings learned from the
hierarchy (Zhang & Maire 2020).

Python API for the other stages::

    from longtail.hierarchy import load_region_tree, region_trees, region_tree_for_image, load_pixel_embedding

    # trees written by `longtail ucm` (results/hierarchy/ucm/<set>/), looked up by COCO image id
    trees = region_trees("results/hierarchy/ucm/val")        # {image_id: path}; also by key / image path
    tree = load_region_tree(trees[397133])
    tree.parents, tree.altitudes, tree.leaf_labels            # parent array, merge altitudes, finest labels
    labels = tree.cut(0.3)                                    # (H, W) regions of the UCM cut at level 0.3
    labels = tree.cut_regions(20)                             # ... or the cut with (at most) 20 regions
    mask = tree.node_mask(node)                               # pixels of any tree node
    pairs = tree.parent_child_pairs(min_area=64)              # (K, 2) (parent, child) node ids
    d = tree.leaf_distances()                                 # d_T between finest regions (LCA altitude)
    ucm2 = tree.ucm2()                                        # BSDS ucm2 (2H+1, 2W+1)

    # no precomputed tree: HED + OWT-UCM on the fly (~1 s per image on CPU)
    tree = region_tree_for_image("data/coco-mini/val2017/000000397133.jpg", max_leaves=40)

    net = load_pixel_embedding("results/hierarchy/pixel_embedding.pt")   # (B,3,H,W) -> (B,32,H/4,W/4)
    net.backbone                                              # the ResNet-50 (torchvision / mmdet key names)
"""

from __future__ import annotations

import os
from pathlib import Path

from longtail.hierarchy.tree import RegionTree, lca_altitudes, load_region_tree

__all__ = [
    "RegionTree",
    "lca_altitudes",
    "load_pixel_embedding",
    "load_region_tree",
    "region_tree_for_image",
    "region_trees",
]

_HED = {}


def region_trees(trees_dir: str | os.PathLike) -> dict:
    """Paths of the trees of a `longtail ucm` folder, keyed by COCO image id (when known), key and image path."""
    from longtail.common.io import read_json
    from longtail.hierarchy.shards import hierarchy_dir

    trees_dir = hierarchy_dir(trees_dir)                # the folder or its index.json
    idx = read_json(trees_dir / "index.json", what="region tree index")
    out: dict = {}
    for r in idx.get("images", []):
        p = trees_dir / r["tree"]
        if r.get("image_id") is not None:
            out[r["image_id"]] = p
        out[r["key"]] = p
        out[r["image"]] = p
    return out


def region_tree_for_image(image, max_leaves: int | None = None, device: str = "cpu") -> RegionTree:
    """HED edges + OWT-UCM tree of an image path or (H, W, 3) uint8 RGB array (HED loaded once per process)."""
    import numpy as np

    from longtail.hierarchy.hed import hed_edges, load_hed
    from longtail.hierarchy.images import load_rgb
    from longtail.hierarchy.ucm import owt_ucm

    if isinstance(image, np.ndarray):
        rgb = np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    else:
        rgb = load_rgb(image)
    if device not in _HED:
        _HED[device] = load_hed(device=device, channels_last=True)
    e = hed_edges(_HED[device], [rgb], device)[0]
    return owt_ucm(e.astype(np.float64), max_leaves=max_leaves)


def load_pixel_embedding(path, map_location: str = "cpu"):
    """See :func:`longtail.hierarchy.pixel_embedding.load_pixel_embedding`."""
    from longtail.hierarchy.pixel_embedding import load_pixel_embedding as _load

    return _load(path, map_location)
