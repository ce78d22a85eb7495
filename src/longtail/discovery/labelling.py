"""Label clusters with the nearest GT anchors and score them (Weng et al. 3.3, Tables 1 and 3): novel-category
mask AP, LVIS AP, purity overall / per group / per k, and the random-embedding baseline. The building blocks
(distances, greedy labels, purity, COCO / LVIS evaluation) are in :mod:`longtail.discovery.evaluate`."""

from __future__ import annotations

import logging

import numpy as np

from longtail.common import LongtailError
from longtail.discovery.groundtruth import annotation_column, compact_polygons, read_gt  # noqa: F401 (API)

log = logging.getLogger(__name__)


def category_groups(gt: dict, lvis: dict | None, to_lvis: dict[int, int]) -> dict[int, str]:
    """Category id -> group: LVIS frequency (r/c/f) when the ground truth is LVIS's or LVIS is configured, else
    the base/novel split."""
    if all("frequency" in c for c in gt["categories"]):
        return {c["id"]: c["frequency"] for c in gt["categories"]}
    if lvis is not None:
        freq = {c["id"]: c["frequency"] for c in lvis["categories"]}
        return {cid: freq[lid] for cid, lid in to_lvis.items() if lid in freq}
    return {c["id"]: c.get("split", "all") for c in gt["categories"]}


def check_inputs(emb: dict, n_records: int, gt: dict, sources: dict[str, str] | None = None) -> None:
    """Embeddings, proposal set and ground truth belong together: proposal ids index the proposal set, anchors
    exist and are of ground-truth categories. ``sources`` names the files (keys embeddings, proposals, gt)."""
    src = {"embeddings": "the embeddings", "proposals": "the proposal set", "gt": "the ground truth JSON",
           **(sources or {})}
    pids = np.asarray(emb["proposal_ids"], np.int64)
    bad = pids[(pids < 0) | (pids >= n_records)]
    if len(bad):
        raise LongtailError(f"{src['embeddings']}: proposal_ids {sorted(set(bad.tolist()))[:10]} are outside the "
                            f"{n_records} proposals of {src['proposals']} (ids 0..{n_records - 1}); the embeddings "
                            f"were made from another proposal set: re-run `longtail embed` on it")
    A, Acat = emb["anchor_embeddings"], np.asarray(emb["anchor_category_ids"])
    if len(A) == 0:
        raise LongtailError(f"{src['embeddings']}: no anchors (anchor_embeddings is empty), so no cluster can be "
                            f"labelled; re-run `longtail embed` with GT anchors")
    if len(Acat) != len(A):
        raise LongtailError(f"{src['embeddings']}: anchor_category_ids ({len(Acat)}) and anchor_embeddings "
                            f"({len(A)}) differ in length; re-run `longtail embed`")
    unknown = sorted(set(Acat.tolist()) - {c["id"] for c in gt["categories"]})
    if unknown:
        raise LongtailError(f"{src['embeddings']}: anchor_category_ids {unknown[:10]} are not categories of "
                            f"{src['gt']}; evaluate with the ground truth of the label space the anchors were "
                            f"embedded in")


class ProposalSource:
    """The records of a proposal set read by chunk of images, each with its proposal id (its position in the
    set's record order, image by image in the index's order: what ``proposal_ids`` of embeddings.npz index).

    ``records``: a gathered set (its folder or ``index.json``, or a :class:`ProposalReader` with its index),
    read image by image (memory: one chunk of images), or a list of every record (small sets).
    """

    def __init__(self, records, index: dict | None = None):
        from longtail.proposals.format import ProposalReader, proposal_set_dir, read_index

        self.reader = None
        if isinstance(records, (list, tuple)):
            self._list = records
            by_img: dict[int, list[int]] = {}
            for i, r in enumerate(records):
                by_img.setdefault(int(r["image_id"]), []).append(i)
            self._by_img = by_img
            self.image_ids = sorted(by_img)
            self.n = len(records)
            self.where = "the proposal list"
            return
        if isinstance(records, ProposalReader):
            self.reader, index = records, index if index is not None else read_index(records.dir)
        else:
            index = index if index is not None else read_index(records)
            self.reader = ProposalReader(records, index)
        self.where = str(proposal_set_dir(self.reader.dir))
        counts = np.fromiter((int(im["num_proposals"]) for im in index["images"]), np.int64, len(index["images"]))
        ids = np.fromiter((int(im["id"]) for im in index["images"]), np.int64, len(index["images"]))
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        self._ids, self._first, self._count = ids[order], first[order], counts[order]   # 24 bytes an image
        self.image_ids = self._ids.tolist()
        self.n = int(counts.sum())

    def chunk(self, img_ids: Sequence[int]) -> dict[int, dict]:
        """Proposal id -> record for the images ``img_ids``."""
        if self.reader is None:
            return {i: self._list[i] for im in img_ids for i in self._by_img.get(int(im), [])}
        out: dict[int, dict] = {}
        for im in img_ids:
            k = int(np.searchsorted(self._ids, int(im)))
            if k >= len(self._ids) or self._ids[k] != int(im):
                continue
            recs = self.reader.read(int(im))
            if len(recs) != self._count[k]:
                raise LongtailError(f"{self.where}: image {im} has {len(recs)} proposals in its shard, the index "
                                    f"says {int(self._count[k])}; rerun `longtail gather-proposals` (or the shard)")
            out.update(zip(range(int(self._first[k]), int(self._first[k]) + len(recs)), recs))
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


class DetectionsWriter:
    """Detections appended chunk by chunk to a JSON array in the open file ``path`` (the text is what
    ``write_json(path, dets, indent=None)`` writes; the caller gives a temporary path of
    :func:`longtail.common.io.atomic_path`, so a killed run leaves no detections file); with ``path`` None they
    are kept in ``detections`` instead."""

    def __init__(self, path=None):
        import json

        self.detections, self._json, self._n = [], json, 0
        self._f = open(path, "w") if path is not None else None
        if self._f is not None:
            self._f.write("[")

    def add(self, dets: list[dict]) -> None:
        if self._f is None:
            self.detections.extend(dets)
            return
        for d in dets:
            self._f.write((", " if self._n else "") + self._json.dumps(d))
            self._n += 1

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.write("]\n")
            self._f.close()


def evaluate_clusters(emb: dict, labels: np.ndarray, k: int, records, gt: dict, cfg: dict,
                      img_ids: list[int], seed: int, lvis: dict | None = None, synsets: dict | None = None,
                      grid: dict[int, np.ndarray] | None = None, sources: dict[str, str] | None = None,
                      detections_out=None, index: dict | None = None) -> tuple[dict, list[dict] | None, np.ndarray]:
    """All numbers of `longtail evaluate` for one clustering; returns (metrics, detections, cluster labels).

    ``records``: the proposal set (folder / index.json / ProposalReader, with its ``index`` if at hand) or a list
    of every record (:class:`ProposalSource`). It is read `discovery.eval_chunk_images` images at a time: the
    proposals' GT classes, the detections and the COCO / LVIS per-image evaluation of one chunk, then the next;
    one ``accumulate`` over every chunk's results gives the AP of one evaluation over all images. With
    ``detections_out`` the detections are written there chunk by chunk (a JSON array; None is returned for
    them), else returned as a list. ``sources``: the input files by name, for the errors of
    :func:`check_inputs`. Memory: one chunk's records and evaluator state, plus the O(N) arrays listed
    in :func:`_evaluate_chunks`."""
    import contextlib

    from longtail.common.io import atomic_path

    src = ProposalSource(records, index)
    # renamed into place last: a run killed before the metrics leaves no detections file either
    with atomic_path(detections_out) if detections_out is not None else contextlib.nullcontext() as tmp:
        writer = DetectionsWriter(tmp)
        try:
            m, cl_label = _evaluate_all(emb, labels, k, src, gt, cfg, img_ids, seed, lvis, synsets, grid, sources,
                                        writer)
        finally:
            writer.close()
            src.close()
    return m, (None if detections_out is not None else writer.detections), cl_label


def _evaluate_all(emb, labels, k, src, gt, cfg, img_ids, seed, lvis, synsets, grid, sources, writer):
    from longtail.discovery import evaluate as E

    m, cl_label, gt_class, Z, A, Acat, groups, space, curv = _evaluate_chunks(
        emb, labels, k, src, gt, cfg, img_ids, lvis, synsets, sources, writer)
    # purity and matched clusters at every k of the elbow grid (Table 3)
    if grid:
        rows = []
        for kk, lab in sorted(grid.items()):
            lab = np.asarray(lab, np.int64)
            Dk, ck = E.cluster_category_distance(Z, lab, kk, A, Acat, space, curv)
            clk = E.greedy_labels(Dk, ck)
            pk = E.purity(lab, gt_class, clk, groups)
            row = {"k": int(kk), "clusters_matched": int((clk != E.NOVEL).sum()),
                   **{key: v for key, v in pk.items() if key.startswith("purity")}}
            bk = random_baseline_purity(Z, A, Acat, gt_class, kk, space, curv, cfg, seed)
            if bk is not None:
                row["baseline_random_purity"] = bk
                row["purity_ratio_vs_random"] = pk["purity"] / bk if bk > 0 else None
            rows.append(row)
        m["purity_by_k"] = rows

    # random-embedding baseline on the same proposals and the same k
    base = random_baseline_purity(Z, A, Acat, gt_class, k, space, curv, cfg, seed)
    if base is not None:
        m["baseline_random"] = {"purity": base, "seeds": int(cfg["baseline_seeds"])}
        m["purity_ratio_vs_random"] = m["purity"]["purity"] / base if base > 0 else None
    return m, cl_label


def _evaluate_chunks(emb: dict, labels: np.ndarray, k: int, src: ProposalSource, gt: dict, cfg: dict,
                     img_ids: list[int], lvis: dict | None, synsets: dict | None, sources: dict[str, str] | None,
                     writer: DetectionsWriter) -> tuple:
    """Labels, GT classes, detections and AP of :func:`evaluate_clusters`, one chunk of images at a time.

    O(N) state (N = embedded proposals; dim 2): Z float64 (16 B), labels, proposal ids and GT class int64
    (3 x 8 B), the random baseline's embedding and k-means (as `longtail cluster`), and the COCO / LVIS per-image
    results of the detections in evaluated categories (:class:`longtail.discovery.evaluate._EvalImgs`)."""
    from longtail.discovery import evaluate as E

    check_inputs(emb, src.n, gt, sources)
    Z, space, curv = emb["proposal_embeddings"].astype(np.float64), emb["space"], emb["curvature"]
    pids = np.asarray(emb["proposal_ids"], np.int64)
    A, Acat = emb["anchor_embeddings"].astype(np.float64), np.asarray(emb["anchor_category_ids"], np.int64)
    gt_cats = {c["id"]: c for c in gt["categories"]}
    lvis_gt = E.is_lvis(gt)   # the LVIS label space of `longtail prepare` (COCO -> LVIS, Table 1)
    if lvis_gt and lvis is not None:
        raise LongtailError("--gt is already LVIS ground truth (the LVIS label space of `longtail prepare`): "
                            "set discovery.lvis_json: null")
    split = cfg["eval_categories"]
    eval_cats = [c for c in gt_cats if split == "all" or gt_cats[c].get("split") == split]
    img_set, anchored = set(img_ids), set(Acat.tolist())      # once: not per annotation (quadratic at scale)
    img_col, cat_col = (annotation_column(gt["annotations"], key) for key in ("image_id", "category_id"))
    present = set(cat_col[np.isin(img_col, np.fromiter(img_set, np.int64, len(img_set)))].tolist())
    no_anchor = sorted(c for c in eval_cats if c in present and c not in anchored)
    if no_anchor and cfg["on_missing_anchor"] == "fail":
        raise LongtailError(f"categories {no_anchor} have ground truth but no anchor embedding, so no cluster "
                            f"can take their label; embed anchors for them or set "
                            f"discovery.on_missing_anchor: warn (their AP then counts as 0)")
    if no_anchor:
        log.warning("%d evaluated categories have no anchor (their AP counts as 0): %s", len(no_anchor),
                    no_anchor)

    D, cats = E.cluster_category_distance(Z, labels, k, A, Acat, space, curv)
    cl_label = E.greedy_labels(D, cats)
    to_lvis = E.coco_to_lvis_ids(gt, lvis, synsets or {}) if lvis is not None else {}
    ap = (E.LvisChunks(gt, img_ids, subsets={split: eval_cats}) if lvis_gt
          else E.CocoChunks(gt, eval_cats, img_ids, cfg["max_dets"]))
    ap_lvis = E.LvisChunks(lvis, img_ids) if lvis is not None else None

    gt_class = np.full(len(pids), -1, np.int64)
    by_img = E.gt_by_image(gt)
    images = sorted(set(int(i) for i in img_ids) | set(src.image_ids))
    step = int(cfg["eval_chunk_images"])
    for s in range(0, len(images), step):
        chunk = images[s:s + step]
        recs = src.chunk(chunk)
        pos = np.flatnonzero(np.isin(pids, np.fromiter(recs, np.int64, len(recs))))
        gt_class[pos] = E.gt_class_of_proposals([recs[i] for i in pids[pos].tolist()],
                                                E.gt_subset(gt, by_img, chunk), cfg["purity_iou"])
        dets = E.detections(recs, pids[pos], labels[pos], cl_label)
        del recs
        ap.add(chunk, dets)
        if ap_lvis is not None:
            ap_lvis.add(chunk, [{**d, "category_id": to_lvis[d["category_id"]]} for d in dets
                                if d["category_id"] in to_lvis])
        writer.add(dets)
    log.info("evaluate: %d images in chunks of %d, %d proposals embedded", len(images), step, len(pids))

    groups = category_groups(gt, lvis, to_lvis)
    pur = E.purity(labels, gt_class, cl_label, groups)
    pur_all = E.purity(labels, gt_class)
    m: dict = {"space": space, "k": int(k), "num_proposals": len(Z), "num_images": len(img_ids),
               "num_anchors": len(A), "clusters_matched": int((cl_label != E.NOVEL).sum()),
               "clusters_novel": int((cl_label == E.NOVEL).sum()),
               "proposals_with_gt_class": int((gt_class >= 0).sum()),
               "categories_without_anchor": no_anchor, "num_categories_without_anchor": len(no_anchor),
               "eval_categories": split, "protocol": E.protocol(gt, split)}
    if lvis_gt:   # Table 1: LVIS AP over the evaluated (novel) categories, and over every LVIS category
        m["lvis"] = ap.result()
        m[split] = m["lvis"].pop(split)
    else:
        m[split] = ap.result()
    m["purity"] = pur
    m["purity_all_clusters"] = pur_all["purity"]
    if ap_lvis is not None:
        m["lvis"] = ap_lvis.result()
    return m, cl_label, gt_class, Z, A, Acat, groups, space, curv


def random_baseline_purity(Z: np.ndarray, A: np.ndarray, Acat: np.ndarray, gt_class: np.ndarray, k: int,
                           space: str, curv: float, cfg: dict, seed: int) -> float | None:
    """Mean purity over `discovery.baseline_seeds` random embeddings with the spread of Z (and of the anchors),
    clustered and labelled exactly as the real ones; None when baseline_seeds is 0."""
    from longtail.discovery import evaluate as E
    from longtail.discovery.spaces import make_kmeans, random_like

    base = []
    for s in range(int(cfg["baseline_seeds"])):
        Zr = random_like(Z, space, seed + 1000 + s, curv)
        Ar = random_like(A, space, seed + 2000 + s, curv)
        lr = np.asarray(make_kmeans(space, k, {**cfg, "n_init": 1}, seed + s).fit(Zr).labels_, np.int64)
        Dr, cr = E.cluster_category_distance(Zr, lr, k, Ar, Acat, space, curv)
        base.append(E.purity(lr, gt_class, E.greedy_labels(Dr, cr))["purity"])
    return float(np.mean(base)) if base else None


def load_lvis(cfg: dict, img_ids: list[int]) -> tuple[dict | None, dict | None]:
    """(LVIS annotations, COCO->LVIS synsets) of ``discovery.lvis_json`` / ``lvis_synsets``; (None, None) when
    LVIS is not configured or covers none of ``img_ids`` (LVIS AP is then skipped, with a warning)."""
    from longtail.common import read_json

    if not cfg["lvis_json"]:
        return None, None
    lvis = read_gt(cfg["lvis_json"], "LVIS annotation file (discovery.lvis_json)")
    synsets = read_json(cfg["lvis_synsets"], "COCO->LVIS synset map (discovery.lvis_synsets)")
    if not {im["id"] for im in lvis["images"]} & set(img_ids):
        log.warning("no evaluated image is in %s: LVIS AP skipped", cfg["lvis_json"])
        return None, synsets
    return lvis, synsets
