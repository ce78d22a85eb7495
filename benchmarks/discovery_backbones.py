"""Discovery numbers of trained embeddings beside the backbone's own pooled features, clustered with the same k.

    python benchmarks/discovery_backbones.py --results /work/scratch17/results --method gt \
        --variants poincare euclidean [--backbone efficientnet_lite0 --crop-size 128] [--out rows.json]

For each variant: the pipeline's numbers (`longtail evaluate`'s metrics.json under
<results>/discovery/<method>/<variant>/: elbow k, purity over matched clusters, the random-embedding baseline and
the ratio, novel AP, purity over all clusters). Then the ceiling the embedding has to keep: the backbone's
globally pooled features (EfficientNet-Lite: the 1280-d head features of the same fg crops, L2-normalised)
of exactly the proposals and anchors of the first variant's embeddings.npz are written as a Euclidean
"embeddings.npz" and go through the same `longtail cluster` / `longtail evaluate` (labelling by anchors, random
baseline, novel AP) with `discovery.k` set to each variant's elbow k.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def pooled_features(crops_u8: np.ndarray, backbone: str, batch: int = 64) -> np.ndarray:
    from longtail.embedding.crops import to_input
    from longtail.embedding.model import EmbeddingNet

    net = EmbeddingNet(dim=2, backbone=backbone, frozen_stages=-1).backbone.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(crops_u8), batch):
            out.append(net(to_input(crops_u8[s:s + batch])).numpy())
    f = np.concatenate(out).astype(np.float64)
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)


def feature_embeddings(emb_npz: Path, proposals: Path, anchors_json: Path, backbone: str, crop_size: int,
                       out: Path) -> None:
    from longtail.embedding.crops import crops_for_records
    from longtail.embedding.embed import anchor_records
    from longtail.proposals.format import read_proposals

    z = dict(np.load(emb_npz, allow_pickle=True))
    index, records = read_proposals(str(proposals))
    images = {int(im["id"]): im for im in index["images"]}
    recs = [records[int(i)] for i in z["proposal_ids"]]
    crops, valid = crops_for_records(recs, images, crop_size, kinds=("fg",), source=str(proposals))
    assert valid.all(), "embedded proposals have non-empty masks"
    gt = json.loads(anchors_json.read_text())
    by_id = {a["id"]: a for a in gt["annotations"]}
    arecs = anchor_records(gt, [by_id[int(i)] for i in z["anchor_ann_ids"]])
    acrops, _ = crops_for_records(arecs, {int(im["id"]): im for im in gt["images"]}, crop_size, kinds=("fg",),
                                  source=str(anchors_json))
    z["proposal_embeddings"] = pooled_features(crops[:, 0], backbone).astype(np.float32)
    z["anchor_embeddings"] = pooled_features(acrops[:, 0], backbone).astype(np.float32)
    z["space"], z["curvature"] = np.asarray("euclidean"), np.asarray(0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **z)


def run_verbs(emb: Path, proposals: Path, gt: Path, out_dir: Path, k: int, params: str | None) -> dict:
    base = [str(Path(sys.executable).with_name("longtail"))]
    extra = (["--params", params] if params else []) + ["--set", f"discovery.k={k}"]
    subprocess.run(base + ["cluster", "--embeddings", str(emb), "--out-dir", str(out_dir)] + extra, check=True)
    subprocess.run(base + ["evaluate", "--embeddings", str(emb), "--clusters", str(out_dir / "clusters.npz"),
                           "--proposals", str(proposals), "--gt", str(gt), "--out-dir", str(out_dir)] + extra,
                   check=True)
    return json.loads((out_dir / "metrics.json").read_text())


def summary(name: str, m: dict) -> dict:
    novel = m.get("novel", {})
    return {"row": name, "k": m["k"], "purity": m["purity"]["purity"],
            "baseline_random": m["baseline_random"]["purity"], "ratio_vs_random": m["purity_ratio_vs_random"],
            "purity_all_clusters": m["purity_all_clusters"], "novel_AP": novel.get("AP"),
            "novel_AP50": novel.get("AP50"), "clusters_matched": m["clusters_matched"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="results dir of the runs (embedding/, discovery/, data/, proposals/)")
    ap.add_argument("--method", default="gt")
    ap.add_argument("--variants", nargs="+", default=["poincare", "euclidean"])
    ap.add_argument("--backbone", default=None, help="backbone of the feature rows (default: the first model's)")
    ap.add_argument("--crop-size", type=int, default=None, help="crop size of the feature rows (default: the model's)")
    ap.add_argument("--params", default=None, help="params file for the verbs (default: params.yaml)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = ap.parse_args()

    res = Path(a.results)
    rows = []
    first = res / "embedding" / a.method / a.variants[0]
    state = torch.load(first / "model.pt", map_location="cpu", weights_only=False)
    cfg = state["config"]
    backbone = a.backbone or cfg["backbone"]
    if isinstance(backbone, dict):
        backbone = f"efficientnet_{backbone['variant']}" if backbone["type"] == "efficientnet_lite" else "resnet18"
    crop = a.crop_size or int(cfg["crop_size"])
    proposals, gt = res / "proposals" / a.method / "val", res / "data" / "val.json"
    feat = res / "benchmarks" / "discovery_backbones" / a.method / f"{backbone}_{crop}px" / "embeddings.npz"
    if not feat.exists():
        feature_embeddings(first / "embeddings.npz", proposals, res / "data" / "train.json", backbone, crop, feat)
    for v in a.variants:
        m = json.loads((res / "discovery" / a.method / v / "metrics.json").read_text())
        rows.append({"variant": v, **summary(f"embedding {v} (dim {state['dim']})", m)})
        fm = run_verbs(feat, proposals, gt, feat.parent / f"k{m['k']}", int(m["k"]), a.params)
        rows.append({"variant": v, **summary(f"{backbone} pooled features, {crop} px, same k", fm)})
    cols = ["row", "k", "purity", "baseline_random", "ratio_vs_random", "purity_all_clusters", "novel_AP",
            "clusters_matched"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
