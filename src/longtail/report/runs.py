"""The discovery runs a report covers (``<discovery_dir>/<method>/<variant>/``) and their tables (Weng et al.
Tables 1-3, Poincaré vs Euclidean side by side) and summary numbers."""

from __future__ import annotations

from pathlib import Path

from longtail.common import read_json
from longtail.report.markup import table

def find_runs(discovery_dir: Path, variants: list[str]) -> list[dict]:
    """Every ``<method>/<variant>/`` run, by method, then in the order of ``variants`` (embedding.variants'
    names: ``longtail.common.params.embedding_variants``; other folders last)."""
    runs = []
    for mp in sorted(discovery_dir.glob("*/*/metrics.json")):
        d = mp.parent
        run = {"method": d.parent.name, "variant": d.name, "dir": d, "metrics": read_json(mp, "metrics")}
        for key, name in (("elbow", "elbow.json"), ("cluster_metrics", "cluster_metrics.json"),
                          ("labels", "cluster_labels.json")):
            run[key] = read_json(d / name) if (d / name).exists() else None
        runs.append(run)
    order = {v: i for i, v in enumerate(variants)}
    runs.sort(key=lambda r: (r["method"], order.get(r["variant"], len(order)), r["variant"]))
    return runs


def protocol_of(runs) -> str:
    """The protocol(s) the runs were evaluated under (``protocol.description`` of `longtail evaluate`)."""
    found = sorted({r["metrics"]["protocol"]["description"] for r in runs if "protocol" in r["metrics"]})
    return "; ".join(found) if found else "protocol not recorded (metrics of an older `longtail evaluate`)"


def table1(runs):
    head = ["method", "variant", "mAP", "mAP50", "mAP75", "mAPr", "mAPc", "mAPf", "mAPs", "mAPm", "mAPl"]
    rows = []
    for r in runs:
        m = r["metrics"]
        ap = m.get(m.get("eval_categories", "novel"), {})
        # LVIS ground truth: APr/c/f over the evaluated categories; else from discovery.lvis_json (all LVIS)
        fr = ap if "APr" in ap else m.get("lvis", {})
        rows.append([r["method"], r["variant"], ap.get("AP"), ap.get("AP50"), ap.get("AP75"), fr.get("APr"),
                     fr.get("APc"), fr.get("APf"), ap.get("APs"), ap.get("APm"), ap.get("APl")])
    return table(head, rows, f"Table 1 — mask AP. Protocol: {protocol_of(runs)}. Without LVIS ground truth, "
                             f"mAPr/c/f come from the LVIS API where discovery.lvis_json is set")


def table2(runs, settings: dict[str, str]):
    """``settings``: what each variant changes (``longtail.common.params.variant_settings``)."""
    head = ["method", "variant", "setting", "mAP", "mAP50", "mAP75", "purity", "random purity"]
    rows = []
    for r in runs:
        m = r["metrics"]
        ap = m.get(m.get("eval_categories", "novel"), {})
        rows.append([r["method"], r["variant"], settings.get(r["variant"], r["variant"]), ap.get("AP"),
                     ap.get("AP50"), ap.get("AP75"), m.get("purity", {}).get("purity"),
                     m.get("baseline_random", {}).get("purity")])
    return table(head, rows, "Table 2 — ablations (one row per embedding variant present)")


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
    out = table(head, rows, "Table 3 — cluster purity (Manning et al.) over the clusters matched to a "
                             "category, per group (LVIS frequency or base/novel split). Protocol: "
                             f"{protocol_of(runs)}")
    # as the paper's Table 3: purity at several k (the elbow grid), k* marked, for the Poincaré runs
    for r in runs:
        byk = r["metrics"].get("purity_by_k")
        if not byk or r["variant"] != "poincare":
            continue
        kstar = (r["elbow"] or {}).get("k_star")
        rows = [[f"k*={x['k']} (elbow)" if x["k"] == kstar else f"k={x['k']}", x.get("clusters_matched"),
                 x.get("purity")] + [x.get(f"purity_{g}") for g in groups] +
                [x.get("baseline_random_purity"), x.get("purity_ratio_vs_random")] for x in byk]
        out += table(["No. of clusters", "clusters matched", "Purity avg"] + [f"Purity {g}" for g in groups] +
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
    return table(["method", "space", "mAP", "mAP50", "purity", "purity / random", "clusters matched", "k"],
                  rows, "Poincaré vs Euclidean embedding, side by side")


def summary(runs: list[dict], n_other_figures: int, html_bytes: int) -> dict:
    """metrics.json of `longtail report`: the main run (poincare, else the first) and its numbers."""
    main_run = next((r for r in runs if r["variant"] == "poincare"), runs[0])
    mm = main_run["metrics"]
    return {"runs": len(runs), "figures_from_other_stages": n_other_figures,
            "main_run": f"{main_run['method']}/{main_run['variant']}",
            "main_AP": mm.get(mm.get("eval_categories", "novel"), {}).get("AP"),
            "main_purity": mm.get("purity", {}).get("purity"),
            "main_purity_ratio_vs_random": mm.get("purity_ratio_vs_random"),
            "html_bytes": html_bytes}
