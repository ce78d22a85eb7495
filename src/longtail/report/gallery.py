"""Per proposal method: the embeddings scattered on the disk (Poincaré and Euclidean side by side), coloured by
GT category, and a gallery of the masks of the largest discovered clusters (matched and novel)."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import numpy as np

from longtail.common.params import project_root
from longtail.report import figures as F
from longtail.report.markup import img

log = logging.getLogger(__name__)


def pick_clusters(labels: np.ndarray, cl_label: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
    """(up to ``n`` non-empty clusters, largest first: about half matched to a category and the rest novel (label
    -1) when there are enough novel ones; cluster sizes)."""
    sizes = np.bincount(labels, minlength=len(cl_label))
    matched = [c for c in np.argsort(-sizes) if cl_label[c] != -1 and sizes[c] > 0]
    novel = [c for c in np.argsort(-sizes) if cl_label[c] == -1 and sizes[c] > 0]
    half = n // 2
    pick = matched[:n - min(half, len(novel))]
    pick += novel[:n - len(pick)]
    return pick, sizes


def image_file(file_name: str) -> Path:
    """A dataset ``file_name`` as a path (repo-relative names resolved against the project root)."""
    fn = Path(file_name)
    if not fn.exists() and (project_root() / fn).exists():
        fn = project_root() / fn
    return fn


def gallery_rows(labels, cl_label, pids, records, images: dict, names: dict, cfg: dict) -> list[tuple]:
    """(title, mask tiles) of the picked clusters; members by objectness, ``report.gallery_per_cluster`` each."""
    pick, sizes = pick_clusters(labels, cl_label, cfg["gallery_clusters"])
    rows = []
    for c in pick:
        members = pids[labels == c]
        members = members[np.argsort([-records[i]["score"] for i in members])][:cfg["gallery_per_cluster"]]
        tiles = []
        for i in members:
            rec = records[i]
            fn = image_file(images[rec["image_id"]]["file_name"])
            if fn.exists():
                tiles.append(F.mask_tile(fn, rec["segmentation"], cfg["gallery_size"]))
        lab = int(cl_label[c])
        title = (f"cluster {c} → {names.get(lab, lab)} (n={sizes[c]})" if lab != -1 else
                 f"cluster {c}: novel (n={sizes[c]})")
        rows.append((title, tiles))
    return rows


def method_sections(method: str, mruns: dict[str, dict], proposals_dir: Path, embedding_dir: Path, gt: dict,
                    purity_iou: float, cfg: dict) -> list[str]:
    """HTML sections of one proposal method (``mruns``: its discovery runs by variant): scatter and gallery."""
    from longtail.discovery.evaluate import gt_class_of_proposals
    from longtail.proposals.format import INDEX_FILE, read_proposals

    pdir = Path(proposals_dir) / method / "val"
    if not (pdir / INDEX_FILE).exists():
        log.warning("%s missing: no scatter/gallery for %s", pdir, method)
        return []
    names = {c["id"]: c["name"] for c in gt["categories"]}
    index, records = read_proposals(pdir)
    cls_all = gt_class_of_proposals(records, gt, purity_iou)
    shown = [v for v in ("poincare", "euclidean") if v in mruns] or [next(iter(mruns))]
    parts, figs, pids_of = [], [], {}
    for v in shown:
        ep = Path(embedding_dir) / method / v / "embeddings.npz"
        if not ep.exists():
            continue
        with np.load(ep) as f:
            Z, pids = f["proposal_embeddings"], f["proposal_ids"]
            A, Acat, space = f["anchor_embeddings"], f["anchor_category_ids"], str(f["space"])
            c = float(f["curvature"])
        pids_of[v] = pids
        title = f"{method}/{v} ({space}" + (f", {Z.shape[1]}-d seen in 2-d)" if Z.shape[1] > 2 else ")")
        Z, A = (F.plane_view(x, space == "poincare", c) for x in (Z, A))
        figs.append(img(F.disk_scatter(Z, cls_all[pids], names, A, Acat, title,
                                       cfg["max_scatter_points"], disk=space == "poincare"), f"scatter {method}/{v}"))
    if figs:
        parts.append(f"<h2>Embeddings of {html.escape(method)} proposals, coloured by GT category</h2>" + "".join(figs))
    main = shown[0]
    r = mruns[main]
    if main not in pids_of or not r["labels"] or cfg["gallery_clusters"] == 0:
        return parts
    with np.load(r["dir"] / "clusters.npz") as f:
        labels = f["labels"]
    images = {im["id"]: im for im in index["images"]}
    rows = gallery_rows(labels, np.asarray(r["labels"]["labels"]), pids_of[main], records, images, names, cfg)
    if rows:
        parts.append(f"<h2>Discovered clusters of {html.escape(method)}/{html.escape(main)}: masks "
                     f"(highest objectness first)</h2>" + img(F.gallery(rows, cfg["gallery_size"]), "gallery") +
                     "<ol>" + "".join(f"<li>{html.escape(t)}</li>" for t, _ in rows) + "</ol>")
    return parts


def other_stage_figures(results_dir: Path, out_dir: Path) -> list[Path]:
    """PNGs other stages left under ``<results_dir>/*/figures/`` (the report's own output excluded)."""
    return sorted(p for p in Path(results_dir).glob("*/figures/**/*.png")
                  if Path(out_dir).resolve() not in p.resolve().parents)
