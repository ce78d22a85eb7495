"""BSDS500 val benchmark of HED / HED+NMS / HED-OWT-UCM beside the gPb-owt-ucm reference maps (same code).

Runs `longtail bsds` (the stage's own verb) with overrides, e.g. the full published protocol:

    python benchmarks/hierarchy_bsds.py --max-images 0 --thresholds 99 --nproc 2 --scales '[0.5, 1.0, 1.5]' \
        --out results/benchmarks/bsds_val.json

(100 images x 4 maps x 99 thresholds: hours on 2 cores; docs/benchmarks-hierarchy.md lists the subset we ran).
"""

from __future__ import annotations

import argparse
import sys

from longtail.cli import main as longtail


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="data/bsds500/images/val")
    ap.add_argument("--gt", default="data/bsds500/groundTruth/val")
    ap.add_argument("--reference-ucm", default="data/bsds500/ucm2/val")
    ap.add_argument("--max-images", type=int, default=10, help="0 = all")
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rows", default="[hed, hed_nms, ucm]")
    ap.add_argument("--scales", default=None, help="HED input scales, e.g. '[0.5, 1.0, 1.5]' (default: params.yaml)")
    ap.add_argument("--boundary", default=None, help="UCM frontier strength mix | nms | raw (default: params.yaml)")
    ap.add_argument("--out", default="results/benchmarks/bsds_val.json")
    a = ap.parse_args()
    extra = []
    if a.scales:
        extra += ["--set", f"hierarchy.edges.scales={a.scales}"]
    if a.boundary:
        extra += ["--set", f"hierarchy.ucm.boundary={a.boundary}"]
    return longtail(["bsds", "--images", a.images, "--gt", a.gt, "--reference-ucm", a.reference_ucm, "--out", a.out,
                     "--set", f"hierarchy.bench.max_images={a.max_images or 'null'}",
                     "--set", f"hierarchy.bench.thresholds={a.thresholds}",
                     "--set", f"hierarchy.bench.nproc={a.nproc}", "--set", f"hierarchy.bench.rows={a.rows}", *extra])


if __name__ == "__main__":
    sys.exit(main())
