"""Pixel embeddings (Zhang & Maire 2020): trained vs the same network at random init, k-means segments vs BSDS GT.

For every training seed: ``train_pixel_embedding`` with the params (plus ``--set`` overrides) on the region trees
of ``--trees``; then the trained network and the same network at random init (``torch.manual_seed(seed)``, the
init the training starts from) embed ``--n-eval`` BSDS val images, k-means (on the L2-normalised embeddings, as
the cosine loss) segments each image at every k of ``--ks``, and the BSDS region benchmark scores them:
covering at ODS (one k for the whole set) and OIS (best k per image), PRI and VI at ODS (each at its own k).

    .venv/bin/python benchmarks/pixel_embedding_covering.py --seeds 0 1 2 --n-eval 30 \\
        [--set hierarchy.pixel_embedding.steps=900] [--variant distance_norm=raw] [--out results.json]

``--variant KEY=VALUE`` sets a training option that is not in params.yaml (e.g. ``distance_norm``:
minmax | rank | raw). Prints a markdown table: one row per seed and the mean / std of the trained - random gain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longtail.common.params import load_params, section
from longtail.hierarchy import bench
from longtail.hierarchy.process import load_training_set
from longtail.hierarchy.images import list_images, load_rgb
from longtail.hierarchy.pixel_embedding import (PixelEmbeddingNet, eval_k_grid, evaluate_segments,
                                                train_pixel_embedding)

ROOT = Path(__file__).resolve().parents[1]


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override KEY=VALUE")
    ap.add_argument("--variant", action="append", default=[], help="extra training option KEY=VALUE")
    ap.add_argument("--trees", default=str(ROOT / "results/hierarchy/ucm/train"))
    ap.add_argument("--eval-images", default=str(ROOT / "data/bsds500/images/val"))
    ap.add_argument("--eval-gt", default=str(ROOT / "data/bsds500/groundTruth/val"))
    ap.add_argument("--n-eval", type=int, default=30, help="first N val images (sorted by name)")
    ap.add_argument("--ks", help="k-means k grid, e.g. 2,3,4 (default: the pipeline's, eval_k_grid(eval_k))")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="JSON with every number")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    params = load_params(args.params, args.overrides)
    cfg = section(params, "hierarchy")
    pc = dict(cfg["pixel_embedding"])
    for kv in args.variant:
        k, v = kv.split("=", 1)
        pc[k] = _value(v)
    ks = [int(k) for k in args.ks.split(",")] if args.ks else eval_k_grid(pc["eval_k"])
    data = load_training_set(Path(args.trees), pc["max_regions"], cfg["min_image_size"])
    ev = [(load_rgb(it.path, cfg["min_image_size"]), bench.load_groundtruth(Path(args.eval_gt) / f"{it.key}.mat"))
          for it in list_images(images=args.eval_images, max_images=args.n_eval)]
    print(f"{len(data)} training images, {len(ev)} eval images, k in {ks}; settings "
          f"{ {k: pc[k] for k in sorted(pc) if k not in ('eval_images', 'eval_k', 'checkpoint_interval')} }",
          flush=True)

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            net, losses = train_pixel_embedding(data, pc, Path(tmp) / "pe.ckpt.pt", seed=seed, progress=False)
            train_s = time.perf_counter() - t0
        torch.manual_seed(seed)
        rand = PixelEmbeddingNet(dim=pc["dim"], proj=pc["proj"]).eval()
        t0 = time.perf_counter()
        m_t = evaluate_segments(net, ev, ks, seed)
        m_r = evaluate_segments(rand, ev, ks, seed)
        n10 = max(len(losses) // 10, 1)
        rows.append({"seed": seed, "train_s": train_s, "eval_s": time.perf_counter() - t0,
                     "loss_first": float(np.mean(losses[:n10])), "loss_last": float(np.mean(losses[-n10:])),
                     "trained": m_t, "random_init": m_r})
        r = rows[-1]
        print(f"seed {seed}: train {train_s:.0f} s, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; covering "
              f"ODS trained {m_t['covering']:.3f} (k={m_t['k']}) vs random {m_r['covering']:.3f} (k={m_r['k']})",
              flush=True)

    print(f"\n| seed | train s | loss first -> last 10 % | covering ODS trained / random (k) | covering OIS "
          f"trained / random | PRI trained / random | VI trained / random |\n|---|---|---|---|---|---|---|")
    for r in rows:
        t, a = r["trained"], r["random_init"]
        print(f"| {r['seed']} | {r['train_s']:.0f} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | "
              f"{t['covering']:.3f} ({t['k']}) / {a['covering']:.3f} ({a['k']}) | {t['covering_OIS']:.3f} / "
              f"{a['covering_OIS']:.3f} | {t['PRI']:.3f} / {a['PRI']:.3f} | {t['VI']:.2f} / {a['VI']:.2f} |")
    for key in ("covering", "covering_OIS", "PRI", "VI"):
        g = np.array([r["trained"][key] - r["random_init"][key] for r in rows])
        t = np.array([r["trained"][key] for r in rows])
        print(f"{key}: trained {t.mean():.3f} +- {t.std():.3f} (seeds); gain trained - random "
              f"{g.mean():+.3f} +- {g.std():.3f}; min {g.min():+.3f}, max {g.max():+.3f}")
    ct = np.mean([r["trained"]["curve"]["covering"] for r in rows], 0)
    cr = np.mean([r["random_init"]["curve"]["covering"] for r in rows], 0)
    print("\ncovering per k (mean over seeds): " + "; ".join(
        f"k={k} {a:.3f} / {b:.3f}" for k, a, b in zip(ks, ct, cr)) + "  (trained / random)")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": pc, "ks": ks, "n_eval": len(ev), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
