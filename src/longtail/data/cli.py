"""longtail prepare."""

from __future__ import annotations

from pathlib import Path

from longtail.cli import add_params_args
from longtail.common import atomic_dir, write_json
from longtail.common.params import project_root
from longtail.common.verb import stage_verb


def register(sub) -> None:
    p = sub.add_parser("prepare", help="build train/val COCO JSONs with the base/novel split from data/",
                       description="Merge the raw data (COCO instances / panoptic, LVIS v0.5 / v1), validate it, "
                                   "keep the evaluation images out of the training splits (data.disjoint_images) "
                                   "and write train.json, train_base.json, val.json, categories.json, metrics.json.")
    add_params_args(p)
    p.add_argument("--out-dir", default=None, help="output folder (default: data.out_dir)")
    p.add_argument("--root", default=None, help="folder the data paths are relative to (default: the project "
                   "root, i.e. the working directory when it holds params.yaml)")
    p.set_defaults(func=run_prepare)


@stage_verb("prepare", "data")
def run_prepare(args, params, cfg, run) -> int:
    from longtail.data.prepare import categories_summary, prepare

    out_dir = Path(args.out_dir or cfg["out_dir"])
    datasets, metrics = prepare(cfg, Path(args.root) if args.root else project_root())
    with atomic_dir(out_dir) as tmp:
        for name, coco in datasets.items():
            write_json(tmp / f"{name}.json", coco, indent=None)
        write_json(tmp / "categories.json", categories_summary(datasets))
        run.write_metrics(tmp / "metrics.json", metrics)
    run.log_artifact(out_dir / "metrics.json")
    run.log_artifact(out_dir / "categories.json")
    for split in ("train", "val"):
        m = metrics[split]
        print(f"{split}: {m['images']} images, {m['instances']} instances "
              f"({m['base_instances']} base, {m['novel_instances']} novel), skipped {m['skipped_images']} images "
              f"/ {m['skipped_annotations']} annotations, {m['duplicate_images']} duplicate images")
    d = metrics["disjoint_images"]
    print(f"train_base: {metrics['train_base']['images']} images, {metrics['train_base']['instances']} base instances")
    print(f"label space {metrics['label_space']}: {metrics['num_base_categories']} base / "
          f"{metrics['num_novel_categories']} novel categories; evaluation images in train / train_base: "
          f"{d['train']['overlap_images']} / {d['train_base']['overlap_images']} "
          f"({'dropped' if d['enabled'] else 'kept: data.disjoint_images is false'})")
    print(f"wrote {out_dir}/")
    return 0
