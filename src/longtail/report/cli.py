"""``longtail report``: one self-contained HTML page (results/report/index.html) over every discovery result.

Sections: metric table (as Weng et al. Table 1), ablations (Table 2, incl. Poincaré vs Euclidean), purity
(Table 3), Poincaré-disk scatter coloured by category, elbow curves, a gallery of masks per discovered
cluster, and every PNG other stages left under results/*/figures/. Images are embedded (base64).
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import numpy as np

from longtail.common.params import project_root
from longtail.cli import add_params_args
from longtail.common import LongtailError, atomic_path, read_json
from longtail.common.params import load_params, section
from longtail.common.tracking import stage_run

log = logging.getLogger(__name__)

# Table 2 of the paper: variant name -> what changes (the embedding stage's variants)
VARIANT_DOC = {
    "poincare": "Poincaré, paper setting (RP = 50, α = 0.2, β = 0.2)", "euclidean": "Euclidean space",
    "rp20": "No. RP = 20", "rp50": "No. RP = 50", "rp100": "No. RP = 100", "alpha0.1": "α = 0.1",
    "alpha0.2": "α = 0.2", "alpha0.5": "α = 0.5", "beta0.1": "β = 0.1", "beta0.2": "β = 0.2",
    "beta0.5": "β = 0.5", "no_mask": "w/o L_mask", "no_object": "w/o L_object", "no_hier": "w/o L_hierarchical",
}
VARIANT_ORDER = ["rp20", "poincare", "rp100", "alpha0.1", "alpha0.5", "beta0.1", "beta0.5", "no_mask",
                 "no_object", "no_hier", "euclidean"]


def register(sub):
    p = sub.add_parser("report", help="HTML report of the discovery results (tables 1-3, disk scatter, elbow, "
                                      "mask gallery)")
    add_params_args(p)
    p.add_argument("--discovery-dir", default="results/discovery")
    p.add_argument("--embedding-dir", default="results/embedding")
    p.add_argument("--proposals-dir", default="results/proposals")
    p.add_argument("--gt", required=True, help="COCO ground truth the proposals were evaluated on")
    p.add_argument("--results-dir", default="results", help="where to look for other stages' figures/")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=run)


def _fmt(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _table(head: list[str], rows: list[list], caption: str) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{h}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def find_runs(discovery_dir: Path) -> list[dict]:
    runs = []
    for mp in sorted(discovery_dir.glob("*/*/metrics.json")):
        d = mp.parent
        run = {"method": d.parent.name, "variant": d.name, "dir": d, "metrics": read_json(mp, "metrics")}
        for key, name in (("elbow", "elbow.json"), ("cluster_metrics", "cluster_metrics.json"),
                          ("labels", "cluster_labels.json")):
            run[key] = read_json(d / name) if (d / name).exists() else None
        runs.append(run)
    order = {v: i for i, v in enumerate(VARIANT_ORDER)}
    runs.sort(key=lambda r: (r["method"], order.get(r["variant"], len(order)), r["variant"]))
    return runs


def table1(runs):
    head = ["method", "variant", "mAP", "mAP50", "mAP75", "mAPr", "mAPc", "mAPf", "mAPs", "mAPm", "mAPl"]
    rows = []
    for r in runs:
        m = r["metrics"]
        ap = m.get(m.get("eval_categories", "novel"), {})
        lv = m.get("lvis", {})
        rows.append([r["method"], r["variant"], ap.get("AP"), ap.get("AP50"), ap.get("AP75"), lv.get("APr"),
                     lv.get("APc"), lv.get("APf"), ap.get("APs"), ap.get("APm"), ap.get("APl")])
    return _table(head, rows, "Table 1 — mask AP on the novel categories (pycocotools); mAPr/c/f from the LVIS "
                              "API where discovery.lvis_json is set")


def table2(runs):
    head = ["method", "variant", "setting", "mAP", "mAP50", "mAP75", "purity", "random purity"]
    rows = []
    for r in runs:
        m = r["metrics"]
        ap = m.get(m.get("eval_categories", "novel"), {})
        rows.append([r["method"], r["variant"], VARIANT_DOC.get(r["variant"], r["variant"]), ap.get("AP"),
                     ap.get("AP50"), ap.get("AP75"), m.get("purity", {}).get("purity"),
                     m.get("baseline_random", {}).get("purity")])
    return _table(head, rows, "Table 2 — ablations (one row per embedding variant present)")


def table3(runs):
    groups = sorted({k[len("purity_"):] for r in runs for k in r["metrics"].get("purity", {})
                     if k.startswith("purity_")})
    head = ["method", "variant", "k", "k* (elbow)", "clusters matched", "Purity avg"] + \
           [f"Purity {g}" for g in groups] + ["random-embedding purity", "ratio"]
    rows = []
    for r in runs:
        m = r["metrics"]
        p = m.get("purity", {})
        rows.append([r["method"], r["variant"], m.get("k"), (r["elbow"] or {}).get("k_star"),
                     m.get("clusters_matched"), p.get("purity")] + [p.get(f"purity_{g}") for g in groups] +
                    [m.get("baseline_random", {}).get("purity"), m.get("purity_ratio_vs_random")])
    out = _table(head, rows, "Table 3 — cluster purity (Manning et al.) over the clusters matched to a "
                             "category, per group (LVIS frequency or base/novel split)")
    # as the paper's Table 3: purity at several k (the elbow grid), k* marked, for the Poincaré runs
    for r in runs:
        byk = r["metrics"].get("purity_by_k")
        if not byk or r["variant"] != "poincare":
            continue
        kstar = (r["elbow"] or {}).get("k_star")
        rows = [[f"k*={x['k']} (elbow)" if x["k"] == kstar else f"k={x['k']}", x.get("clusters_matched"),
                 x.get("purity")] + [x.get(f"purity_{g}") for g in groups] +
                [x.get("baseline_random_purity"), x.get("purity_ratio_vs_random")] for x in byk]
        out += _table(["No. of clusters", "clusters matched", "Purity avg"] + [f"Purity {g}" for g in groups] +
                      ["random-embedding purity", "ratio"],
                      rows, f"Table 3 (per k) — {r['method']}/{r['variant']}")
    return out


def side_by_side(runs):
    by = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["variant"]] = r["metrics"]
    rows = []
    for method, v in by.items():
        if "poincare" in v and "euclidean" in v:
            for name in ("poincare", "euclidean"):
                m = v[name]
                ap = m.get(m.get("eval_categories", "novel"), {})
                rows.append([method, name, ap.get("AP"), ap.get("AP50"), m.get("purity", {}).get("purity"),
                             m.get("purity_ratio_vs_random"), m.get("clusters_matched"), m.get("k")])
    if not rows:
        return ""
    return _table(["method", "space", "mAP", "mAP50", "purity", "purity / random", "clusters matched", "k"],
                  rows, "Poincaré vs Euclidean embedding, side by side")


def _gt_classes(records, gt, iou):
    from longtail.discovery.evaluate import gt_class_of_proposals

    return gt_class_of_proposals(records, gt, iou)


def run(args):
    from longtail.proposals.format import read_proposals
    from longtail.report import figures as F

    params = load_params(args.params, args.overrides)
    cfg = section(params, "report")
    iou = params.get("discovery", {}).get("purity_iou", 0.5)
    ddir, out = Path(args.discovery_dir), Path(args.out_dir)
    runs = find_runs(ddir)
    if not runs:
        raise LongtailError(f"{ddir}: no */*/metrics.json; run `longtail cluster` and `longtail evaluate` first")
    gt = read_json(args.gt, "ground truth")
    names = {c["id"]: c["name"] for c in gt["categories"]}
    with stage_run("report", params=cfg, all_params=params) as srun:
        parts = [(f"<h1>Long-tail discovery report</h1><p>{len(runs)} discovery runs under "
                 f"{html.escape(str(ddir))}: {', '.join(sorted({r['method'] for r in runs}))} × "
                 f"{', '.join(dict.fromkeys(r['variant'] for r in runs))}</p>"),
                 table1(runs), side_by_side(runs), table2(runs), table3(runs)]
        curves = {f"{r['method']}/{r['variant']}": r["elbow"] for r in runs if r["elbow"]}
        if curves:
            parts.append("<h2>Elbow method</h2>" + _img(F.elbow_plot(curves), "elbow"))

        # scatter (Poincaré and Euclidean side by side) and gallery of the main run of every method
        cache: dict[str, tuple] = {}
        for method in dict.fromkeys(r["method"] for r in runs):
            mruns = {r["variant"]: r for r in runs if r["method"] == method}
            pdir = Path(args.proposals_dir) / method / "val"
            if not (pdir / "proposals.json").exists():
                log.warning("%s missing: no scatter/gallery for %s", pdir, method)
                continue
            index, records = read_proposals(pdir)
            cls_all = _gt_classes(records, gt, iou)
            imgs = {im["id"]: im for im in index["images"]}
            shown = [v for v in ("poincare", "euclidean") if v in mruns] or [next(iter(mruns))]
            figs = []
            for v in shown:
                ep = Path(args.embedding_dir) / method / v / "embeddings.npz"
                if not ep.exists():
                    continue
                with np.load(ep) as f:
                    Z, pids = f["proposal_embeddings"], f["proposal_ids"]
                    A, Acat, space = f["anchor_embeddings"], f["anchor_category_ids"], str(f["space"])
                cache[(method, v)] = (Z, pids)
                figs.append(_img(F.disk_scatter(Z, cls_all[pids], names, A, Acat, f"{method}/{v} ({space})",
                                                cfg["max_scatter_points"], disk=space == "poincare"),
                                 f"scatter {method}/{v}"))
            if figs:
                parts.append(f"<h2>Embeddings of {html.escape(method)} proposals, coloured by GT category</h2>"
                             + "".join(figs))
            main = shown[0]
            r = mruns[main]
            if (method, main) not in cache or not r["labels"] or cfg["gallery_clusters"] == 0:
                continue
            with np.load(r["dir"] / "clusters.npz") as f:
                labels = f["labels"]
            _, pids = cache[(method, main)]
            cl_label = np.asarray(r["labels"]["labels"])
            sizes = np.bincount(labels, minlength=len(cl_label))
            matched = [c for c in np.argsort(-sizes) if cl_label[c] != -1 and sizes[c] > 0]
            novel = [c for c in np.argsort(-sizes) if cl_label[c] == -1 and sizes[c] > 0]
            half = cfg["gallery_clusters"] // 2
            pick = matched[:cfg["gallery_clusters"] - min(half, len(novel))]
            pick += novel[:cfg["gallery_clusters"] - len(pick)]
            rows = []
            for c in pick:
                members = pids[labels == c]
                members = members[np.argsort([-records[i]["score"] for i in members])][:cfg["gallery_per_cluster"]]
                tiles = []
                for i in members:
                    rec = records[i]
                    fn = Path(imgs[rec["image_id"]]["file_name"])
                    if not fn.exists() and (project_root() / fn).exists():   # file_name is repo-relative
                        fn = project_root() / fn
                    if fn.exists():
                        tiles.append(F.mask_tile(fn, rec["segmentation"], cfg["gallery_size"]))
                lab = int(cl_label[c])
                title = (f"cluster {c} → {names.get(lab, lab)} (n={sizes[c]})" if lab != -1 else
                         f"cluster {c}: novel (n={sizes[c]})")
                rows.append((title, tiles))
            if rows:
                parts.append(f"<h2>Discovered clusters of {html.escape(method)}/{html.escape(main)}: masks "
                             f"(highest objectness first)</h2>" + _img(F.gallery(rows, cfg["gallery_size"]),
                                                                         "gallery") +
                             "<ol>" + "".join(f"<li>{html.escape(t)}</li>" for t, _ in rows) + "</ol>")

        # figures of the other stages
        res = Path(args.results_dir)
        others = sorted(p for p in res.glob("*/figures/**/*.png") if out.resolve() not in p.resolve().parents)
        if others:
            parts.append("<h2>Figures from other stages</h2>")
            for p in others:
                parts.append(f"<figure>{_img(p.read_bytes(), p.name)}<figcaption>{html.escape(str(p))}"
                             f"</figcaption></figure>")

        page = ("<!doctype html><html><head><meta charset='utf-8'><title>longtail report</title><style>"
                "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
                "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}caption{"
                "text-align:left;font-weight:bold;padding:4px}img{max-width:100%;margin:4px}</style></head>"
                "<body>" + "\n".join(parts) + "</body></html>")
        with atomic_path(out / "index.html") as tmp:
            tmp.write_text(page)
        main_run = next((r for r in runs if r["variant"] == "poincare"), runs[0])
        mm = main_run["metrics"]
        summary = {"runs": len(runs), "figures_from_other_stages": len(others),
                   "main_run": f"{main_run['method']}/{main_run['variant']}",
                   "main_AP": mm.get(mm.get("eval_categories", "novel"), {}).get("AP"),
                   "main_purity": mm.get("purity", {}).get("purity"),
                   "main_purity_ratio_vs_random": mm.get("purity_ratio_vs_random"),
                   "html_bytes": len(page)}
        srun.write_metrics(out / "metrics.json", summary)
        srun.log_artifact(out / "index.html")
    log.info("report: %d runs -> %s", len(runs), out / "index.html")
