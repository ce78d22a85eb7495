"""Per-image processing: HED edges (batched), OWT-UCM trees, and the record formats on disk.

Edge record ``<key>.npz``: ``edges`` (H, W) float32 probabilities, ``orientation`` (H, W) float16 in [0, pi),
``thin`` (H, W) float16 NMS-thinned edges. Tree record ``<key>.npz``: ``parents``, ``altitudes``,
``leaf_labels`` (see :class:`~longtail.hierarchy.tree.RegionTree`) and ``ucm2`` float32 (2H+1, 2W+1).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from longtail.common.io import atomic_path
from longtail.hierarchy.images import ImageItem, load_rgb
from longtail.hierarchy.tree import RegionTree
from longtail.hierarchy.ucm import edge_nms, edge_orientation, owt_ucm


def iter_edges(model, items: list[ImageItem], batch_size: int = 4, device: str = "cpu",
               scales: tuple[float, ...] = (1.0,), min_size: int = 32) -> Iterator[tuple[ImageItem, np.ndarray]]:
    """Yield (item, edge map) for every item; same-size images share a batch (in input order per size)."""
    from longtail.hierarchy.hed import hed_edges

    pending: dict[tuple, list] = defaultdict(list)
    for it in items:
        im = load_rgb(it.path, min_size)
        pending[im.shape].append((it, im))
        if len(pending[im.shape]) >= batch_size:
            batch = pending.pop(im.shape)
            yield from zip([b[0] for b in batch], hed_edges(model, [b[1] for b in batch], device, scales))
    for batch in pending.values():
        yield from zip([b[0] for b in batch], hed_edges(model, [b[1] for b in batch], device, scales))


def edge_record(edges: np.ndarray, compact: bool = True) -> dict[str, np.ndarray]:
    """Edge record of an edge map: float32 edges, float16 orientation / thin as stored on disk (``compact``), or
    all in float64 (``compact=False``: what the in-memory BSDS benchmark uses, so that its trees are those of
    ``owt_ucm`` on the raw map)."""
    if not compact:
        e = edges.astype(np.float64)
        return {"edges": e, "orientation": edge_orientation(e), "thin": edge_nms(e)}
    return {"edges": edges.astype(np.float32), "orientation": edge_orientation(edges).astype(np.float16),
            "thin": edge_nms(edges).astype(np.float16)}


def save_record(path: str | os.PathLike, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_edges(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from longtail.common.errors import LongtailError

    path = Path(path)
    if not path.exists():
        raise LongtailError(f"edge map {path} not found; run `longtail edges` for this image set first")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ("edges", "orientation", "thin")}
    except (KeyError, ValueError, OSError) as e:
        raise LongtailError(f"edge map {path} is unreadable ({e}); delete it and rerun `longtail edges`") from e


def tree_from_edges(rec: dict[str, np.ndarray], max_leaves: int | None, use_orientation: bool, boundary: str,
                    mix_weight: float) -> RegionTree:
    """The pipeline's OWT-UCM tree of an edge record: the settings are hierarchy.ucm's (no defaults here)."""
    return owt_ucm(rec["edges"].astype(np.float64), rec["orientation"].astype(np.float64),
                   max_leaves=max_leaves, use_orientation=use_orientation, boundary=boundary,
                   thin=rec["thin"].astype(np.float64), mix_weight=mix_weight)


def save_tree(path: str | os.PathLike, tree: RegionTree, **extra) -> None:
    tree.save(path, ucm2=tree.ucm2().astype(np.float32), **extra)


def load_index(folder: str | os.PathLike, what: str) -> list[dict]:
    """The ``images`` list of ``<folder>/index.json`` written by `longtail edges` / `longtail ucm`."""
    from longtail.common.errors import LongtailError
    from longtail.common.io import read_json

    from longtail.hierarchy.shards import hierarchy_dir

    folder = hierarchy_dir(folder)                      # the folder or its index.json
    idx = read_json(folder / "index.json", what=f"{what} index")
    if "images" not in idx:
        raise LongtailError(f"{folder / 'index.json'}: no 'images' list; rerun the stage that wrote it")
    return idx["images"]


def load_training_set(trees_dir: str | os.PathLike, max_regions: int, min_size: int) -> list:
    """(RGB image, region tree cut to at most ``max_regions`` leaves) of every image of a `longtail ucm` folder,
    all in RAM (small sets, benchmarks); the stage reads them per item
    (:class:`~longtail.hierarchy.pixel_embedding.TreeImages`)."""
    from tqdm import tqdm

    from longtail.hierarchy.pixel_embedding import TreeImages

    ds = TreeImages(trees_dir, max_regions, min_size)
    return [ds[j][:2] for j in tqdm(range(len(ds)), desc="load trees")]
