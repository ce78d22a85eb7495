"""Class-agnostic table of the annotation-free methods on the sample val set (docs/annotation_free.md).

    python benchmarks/annotation_free_table.py --out-dir /tmp/af_table \
        [--methods ucm freemask spectral solov2-free] [--only-with-trees] [--set KEY=VALUE ...]

Runs `longtail propose --method <m>` (annotation_free.topk = 100 per image) and `longtail eval-proposals` (the
pipeline's own verbs, params.yaml settings) for every method on results/data/val.json -- or, with --only-with-trees, on the
val images that have a region tree in results/hierarchy/ucm/val (the sample run computes trees for a subset),
so that every method is scored on the same images -- and prints a markdown table (mask AP / AR, all categories,
plus AR@100 of base and novel categories).

    python benchmarks/annotation_free_table.py --upper-bound --out-dir /tmp/ub [--set annotation_free.ucm.tree_dir=...]

prints instead where `ucm` loses recall: the best IoU of any candidate per object (every candidate of the region
trees, the best ``pre_nms`` by score, the returned proposals) as recall at IoU 0.5 / 0.75 by object size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longtail.cli import main as longtail
from longtail.common.params import annotation_free_methods


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="results/data/val.json")
    ap.add_argument("--trees", default="results/hierarchy/ucm/val")
    ap.add_argument("--only-with-trees", action="store_true")
    ap.add_argument("--methods", nargs="+", default=list(annotation_free_methods()))
    ap.add_argument("--model-dir", default="results/annotation_free/freesolo", help="train-freesolo work dir")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--upper-bound", action="store_true", help="ucm: best candidate IoU per object, by size")
    args = ap.parse_args()
    if args.upper_bound:
        return upper_bound(args)
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
    sets = [x for s in args.overrides for x in ("--set", s)]
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
                    f"{100 * a['ARs']:.1f} / {100 * a['ARm']:.1f} / {100 * a['ARl']:.1f} | "
                    f"{100 * s['base']['AR100']:.1f} | {100 * s['novel']['AR100']:.1f} |")
    print(f"\n{n_img} images of {args.dataset}" + (" with a region tree" if args.only_with_trees else ""))
    print("| method | AP50 | AP75 | AP | AR1 | AR10 | AR100 | AR100 small / medium / large | AR100 base | AR100 novel |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def upper_bound(args) -> None:
    """Recall of the best candidate per object (non-crowd GT) for the ucm candidate sets, by COCO size."""
    import numpy as np

    from longtail.common.errors import LongtailError
    from longtail.common.masks import decode_mask, to_rle
    from longtail.common.params import load_params, section
    from longtail.proposals.annotation_free import image_path
    from longtail.proposals.annotation_free.backbone import load_image
    from longtail.proposals.annotation_free.ucm import (
        _candidates,
        candidate_scores,
        _extra_trees,
        _resize_labels,
        _Tree,
        load_tree,
    )

    uc = section(load_params(None, args.overrides), "annotation_free")["ucm"]
    d = json.loads(Path(args.dataset).read_text())
    anns: dict = {}
    for a in d["annotations"]:
        if not a.get("iscrowd", 0):
            anns.setdefault(a["image_id"], []).append(a)
    split = Path(args.dataset).stem
    dirs = [Path(uc["tree_dir"]) / split, Path(uc["tree_dir"])]
    rows: dict[str, list] = {"all candidates": [], f"best pre_nms={uc['pre_nms']}": [], "returned": []}
    sizes, used = [], []
    for im in d["images"]:
        try:
            parents, alt, leaf = load_tree(dirs, im)
        except LongtailError:
            continue
        if im["id"] not in anns or len(alt) < 2:
            continue
        used.append(im)
        h, w = im["height"], im["width"]
        gts = [decode_mask(to_rle(a["segmentation"], h, w)) for a in anns[im["id"]]]
        sizes += [a["area"] for a in anns[im["id"]]]
        base = _Tree(parents, alt, leaf=_resize_labels(np.asarray(leaf), (h, w)))
        img = load_image(image_path(im["file_name"])) if uc["extra_trees"] else None
        trees = [base] + _extra_trees(base, uc["extra_trees"], img)
        G = np.stack([np.bincount(base.leaf[g.astype(bool)], minlength=base.L) for g in gts], 1).astype(np.float32)
        ga = G.sum(0)
        ious, scores = [], []
        lo, hi = uc["min_area_frac"] * base.n_px, uc["max_area_frac"] * base.n_px
        for t in trees:
            S, E, b, area, perim, border = _candidates(t, lo, hi, cuts=uc["num_regions"] if t is base else (),
                                                       pairs=uc["pairs"] if t is base else 0,
                                                       triples=uc["triples"] if t is base else 0)
            M = t.membership(S, E).astype(np.float32)
            inter = M @ G
            ious.append(inter / (area[:, None] + ga[None] - inter))
            scores.append(candidate_scores(b, area, perim, border, base.n_px, uc["area_exp"], uc["compact_exp"],
                                           uc["border_exp"]))
        iou, sc = np.concatenate(ious), np.concatenate(scores)
        rows["all candidates"] += iou.max(0).tolist()
        rows[f"best pre_nms={uc['pre_nms']}"] += iou[np.argsort(-sc)[:uc["pre_nms"]]].max(0).tolist()
    out = Path(args.out_dir) / "ucm" / "val"
    from longtail.proposals.format import read_proposals

    if longtail(["propose", "--method", "ucm", "--dataset", args.dataset, "--out-dir", str(out),
                 *[x for s in args.overrides for x in ("--set", s)]]) == 0:
        _, recs = read_proposals(out)
        by_im: dict = {}
        for r in recs:
            by_im.setdefault(r["image_id"], []).append(decode_mask(r["segmentation"]).astype(bool))
        ret = []
        for im in used:
            P = by_im.get(im["id"], [])
            for a in anns[im["id"]]:
                g = decode_mask(to_rle(a["segmentation"], im["height"], im["width"]))
                ret.append(max(((g & p).sum() / max((g | p).sum(), 1) for p in P), default=0.0))
        rows["returned"] = ret
    sizes = np.asarray(sizes)
    groups = {"all": sizes >= 0, "small": sizes < 32 ** 2, "medium": (sizes >= 32 ** 2) & (sizes < 96 ** 2),
              "large": sizes >= 96 ** 2}
    thr = np.arange(0.5, 0.951, 0.05)
    print(f"\n{len(sizes)} objects ({', '.join(f'{k} {int(m.sum())}' for k, m in groups.items())})")
    print("| candidates | recall@0.5 all / S / M / L | recall@0.75 all / S / M / L | best-candidate AR |")
    print("|---|---|---|---|")
    for name, v in rows.items():
        if not v:
            continue
        v = np.asarray(v)
        r = [" / ".join(f"{100 * (v[m] >= t).mean():.1f}" for m in groups.values()) for t in (0.5, 0.75)]
        print(f"| {name} | {r[0]} | {r[1]} | {100 * np.mean([(v >= t).mean() for t in thr]):.1f} |")


if __name__ == "__main__":
    main()
