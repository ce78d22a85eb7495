"""Class-agnostic table of the annotation-free methods on the sample val set (docs/annotation_free.md).

    python benchmarks/annotation_free_table.py --out-dir /tmp/af_table \
        [--methods ucm freemask spectral solov2-free] [--only-with-trees] [--set KEY=VALUE ...]

Runs `longtail propose --method <m> --set proposals.topk=100` and `longtail eval-proposals` (the pipeline's own
verbs, params.yaml settings) for every method on results/data/val.json -- or, with --only-with-trees, on the
val images that have a region tree in results/hierarchy/ucm/val (the sample run computes trees for a subset),
so that every method is scored on the same images -- and prints a markdown table (mask AP / AR, all categories,
plus AR@100 of base and novel categories).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longtail.cli import main as longtail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="results/data/val.json")
    ap.add_argument("--trees", default="results/hierarchy/ucm/val")
    ap.add_argument("--only-with-trees", action="store_true")
    ap.add_argument("--methods", nargs="+", default=["ucm", "freemask", "spectral", "solov2-free"])
    ap.add_argument("--model-dir", default="results/annotation_free/freesolo", help="train-freesolo work dir")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(args.dataset)
    if args.only_with_trees:
        d = json.loads(dataset.read_text())
        have = {int(p.stem) for p in Path(args.trees).glob("*.npz") if p.stem.isdigit()}
        d["images"] = [im for im in d["images"] if int(im["id"]) in have]
        ids = {im["id"] for im in d["images"]}
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] in ids]
        dataset = out / "val.json"
        dataset.write_text(json.dumps(d))
    n_img = len(json.loads(dataset.read_text())["images"])
    sets = [x for s in ["proposals.topk=100", *args.overrides] for x in ("--set", s)]
    rows = []
    for m in args.methods:
        pdir = out / m / "val"
        extra = ["--model-dir", args.model_dir] if m == "solov2-free" else []
        rc = longtail(["propose", "--method", m, "--dataset", str(dataset), "--out-dir", str(pdir), *extra, *sets])
        if rc:
            rows.append(f"| {m} | failed (exit {rc}) |")
            continue
        metrics = out / m / "metrics_val.json"
        longtail(["eval-proposals", "--proposals", str(pdir), "--dataset", str(dataset), "--out", str(metrics),
                  "--figure", str(out / m / "overlay_val.png")])
        s = json.loads(metrics.read_text())["segm"]
        a = s["all"]
        rows.append(f"| {m} | {100 * a['AP50']:.1f} | {100 * a['AP75']:.1f} | {100 * a['AP']:.1f} | "
                    f"{100 * a['AR1']:.1f} | {100 * a['AR10']:.1f} | {100 * a['AR100']:.1f} | "
                    f"{100 * s['base']['AR100']:.1f} | {100 * s['novel']['AR100']:.1f} |")
    print(f"\n{n_img} images of {args.dataset}" + (" with a region tree" if args.only_with_trees else ""))
    print("| method | AP50 | AP75 | AP | AR1 | AR10 | AR100 | AR100 base | AR100 novel |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
