"""Discovery quality on the sample: purity vs the random-embedding baseline, Poincaré vs Euclidean side by side.

    python benchmarks/kmeans_quality.py                                  # reads results/discovery/*/*/metrics.json
    python benchmarks/kmeans_quality.py --discovery-dir /tmp/disc        # another run

Prints a markdown table (pasted into docs/benchmarks-discovery.md) from the metrics files of `longtail evaluate`
(run the pipeline first: `snakemake --profile workflow/profiles/local results/report/index.html`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--discovery-dir", default="results/discovery")
    a = ap.parse_args()
    files = sorted(Path(a.discovery_dir).glob("*/*/metrics.json"))
    if not files:
        raise SystemExit(f"no metrics.json under {a.discovery_dir}; run `longtail evaluate` first")
    print("| method | variant | space | k | clusters matched | purity | random-embedding purity | ratio | "
          "novel mAP | mAP50 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        m = json.loads(f.read_text())
        ap_ = m.get(m.get("eval_categories", "novel"), {})
        base = m.get("baseline_random", {}).get("purity")
        ratio = m.get("purity_ratio_vs_random")
        fmt = lambda v: "—" if v is None else f"{v:.3f}"
        print(f"| {f.parent.parent.name} | {f.parent.name} | {m['space']} | {m['k']} | {m['clusters_matched']} | "
              f"{fmt(m['purity']['purity'])} | {fmt(base)} | {fmt(ratio)} | {fmt(ap_.get('AP'))} | "
              f"{fmt(ap_.get('AP50'))} |")


if __name__ == "__main__":
    main()
