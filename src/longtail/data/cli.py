"""longtail prepare."""

from __future__ import annotations

from pathlib import Path

from longtail.cli import add_params_args
from longtail.common import atomic_dir, write_json
from longtail.common.params import project_root
from longtail.common.verb import stage_verb


def register(sub) -> None:
    p = sub.add_parser("prepare", help="build train/val COCO JSONs with the base/novel split from data/",
                       description="Merge the raw sample (COCO instances + panoptic), validate it, and write "
                                   "train.json, train_base.json, val.json, categories.json, metrics.json.")
    add_params_args(p)
    p.add_argument("--out-dir", default=None, help="output folder (default: data.out_dir)")
    p.add_argument("--root", default=None, help="folder the data paths are relative to (default: the project "
                   "root, i.e. the working directory when it holds params.yaml)")
    p.set_defaults(func=run_prepare)


@stage_verb("prepare", "data")
def run_prepare(args, params, cfg, run) -> int:
    from longtail.data.prepare import prepare

    out_dir = Path(args.out_dir or cfg["out_dir"])
    datasets, metrics = prepare(cfg, Path(args.root) if args.root else project_root())
    cats = datasets["train"]["categories"]
    with atomic_dir(out_dir) as tmp:
        for name, coco in datasets.items():
            write_json(tmp / f"{name}.json", coco, indent=None)
        write_json(tmp / "categories.json", {
            "base": [c["id"] for c in cats if c["split"] == "base"],
            "novel": [c["id"] for c in cats if c["split"] == "novel"], "categories": cats})
        run.write_metrics(tmp / "metrics.json", metrics)
    run.log_artifact(out_dir / "metrics.json")
    run.log_artifact(out_dir / "categories.json")
    for split in ("train", "val"):
        m = metrics[split]
        print(f"{split}: {m['images']} images, {m['instances']} instances "
              f"({m['base_instances']} base, {m['novel_instances']} novel), skipped {m['skipped_images']} images "
              f"/ {m['skipped_annotations']} annotations, {m['duplicate_images']} duplicate images")
    print(f"wrote {out_dir}/")
    return 0
