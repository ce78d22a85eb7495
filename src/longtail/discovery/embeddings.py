"""Read ``embeddings.npz`` of `longtail embed` (the shared format in docs/stage-contract.md, Embeddings) and
check it before any clustering: keys, lengths, points inside the space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longtail.common import LongtailError

#: keys every embeddings.npz has (`longtail embed` writes more)
EMB_KEYS = ["proposal_embeddings", "proposal_ids", "proposal_scores", "anchor_embeddings",
            "anchor_category_ids", "space", "curvature"]


def load_embeddings(path: str | Path) -> dict:
    from longtail.discovery.spaces import check_embeddings, check_space

    path = Path(path)
    if not path.exists():
        raise LongtailError(f"embeddings not found: {path}; run `longtail embed` first")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in EMB_KEYS if k not in f.files]
            if missing:
                raise LongtailError(f"{path}: missing keys {missing}; re-run `longtail embed` (see "
                                    f"docs/stage-contract.md, Embeddings)")
            d = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise LongtailError(f"{path}: not a readable .npz ({e}); delete it and re-run `longtail embed`") from e
    d["space"] = check_space(str(d["space"]))
    d["curvature"] = float(d["curvature"])
    Z = d["proposal_embeddings"]
    if len(d["proposal_ids"]) != len(Z):
        raise LongtailError(f"{path}: proposal_ids ({len(d['proposal_ids'])}) and proposal_embeddings "
                            f"({len(Z)}) differ in length")
    check_embeddings(Z, d["space"], d["curvature"], f"{path}:proposal_embeddings")
    if len(d["anchor_embeddings"]):
        check_embeddings(d["anchor_embeddings"], d["space"], d["curvature"], f"{path}:anchor_embeddings")
    return d
