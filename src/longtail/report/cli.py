"""``longtail report``: one self-contained HTML page (results/report/index.html) over every discovery result.

Sections: metric table (as Weng et al. Table 1), ablations (Table 2, incl. Poincaré vs Euclidean), purity
(Table 3), Poincaré-disk scatter coloured by category, elbow curves, a gallery of masks per discovered
cluster, and every PNG other stages left under results/*/figures/. Images are embedded (base64).
The pieces are in :mod:`longtail.report.runs` (runs, tables), :mod:`longtail.report.gallery` (scatter, gallery)
and :mod:`longtail.report.markup` (HTML).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from longtail.cli import add_params_args
from longtail.common import LongtailError, atomic_path, read_json
from longtail.common.params import section
from longtail.common.verb import stage_verb

log = logging.getLogger(__name__)


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
    p.set_defaults(func=run_report)


@stage_verb("report", "report")
def run_report(args, params, cfg, run) -> int:
    from longtail.report import figures as F
    from longtail.report.gallery import method_sections, other_stage_figures
    from longtail.report.markup import img, page
    from longtail.common.params import embedding_variants, variant_settings
    from longtail.report.runs import find_runs, side_by_side, summary, table1, table2, table3

    iou = section(params, "discovery")["purity_iou"]
    ddir, out = Path(args.discovery_dir), Path(args.out_dir)
    runs = find_runs(ddir, embedding_variants(params))
    if not runs:
        raise LongtailError(f"{ddir}: no */*/metrics.json; run `longtail cluster` and `longtail evaluate` first")
    gt = read_json(args.gt, "ground truth")
    parts = [(f"<h1>Long-tail discovery report</h1><p>{len(runs)} discovery runs under "
             f"{html.escape(str(ddir))}: {', '.join(sorted({r['method'] for r in runs}))} × "
             f"{', '.join(dict.fromkeys(r['variant'] for r in runs))}</p>"),
             table1(runs), side_by_side(runs), table2(runs, variant_settings(params)), table3(runs)]
    curves = {f"{r['method']}/{r['variant']}": r["elbow"] for r in runs if r["elbow"]}
    if curves:
        parts.append("<h2>Elbow method</h2>" + img(F.elbow_plot(curves), "elbow"))
    # scatter (Poincaré and Euclidean side by side) and gallery of the main run of every method
    for method in dict.fromkeys(r["method"] for r in runs):
        mruns = {r["variant"]: r for r in runs if r["method"] == method}
        parts += method_sections(method, mruns, Path(args.proposals_dir), Path(args.embedding_dir), gt, iou, cfg)
    others = other_stage_figures(Path(args.results_dir), out)
    if others:
        parts.append("<h2>Figures from other stages</h2>")
        for p in others:
            parts.append(f"<figure>{img(p.read_bytes(), p.name)}<figcaption>{html.escape(str(p))}"
                         f"</figcaption></figure>")
    text = page(parts)
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(text)
    run.write_metrics(out / "metrics.json", summary(runs, len(others), len(text)))
    run.log_artifact(out / "index.html")
    log.info("report: %d runs -> %s", len(runs), out / "index.html")
    return 0
