"""Peak memory of the pipeline's stages at 1x, 10x and 100x the sample (issue 15).

A synthetic proposal set is built over the real sample images: each image of the prepared split gets
``--per-image`` proposals (its GT masks first, then seeded random boxes / ellipses), and the set is replicated
``scale`` times with new image ids (same image files), so 100x has ``100 x images x per-image`` proposals.
The set is written with the proposal store's writer, one image at a time (never a scale's records at once).

Each stage of ``STAGES`` runs as its own ``longtail`` process; its peak RSS is ``ru_maxrss`` of that child
(the largest single process: run with ``embedding.num_workers=0`` so that the whole stage is one process).
``--in-ram`` adds the pre-streaming reference (all crops in RAM, then embedded) as a row, for crops/s.

    nice -n 10 .venv/bin/python benchmarks/scale_memory.py --scales 1 10 100 --out /tmp/scale_memory

``--set key=value`` (repeatable) is passed to the embedding stages on top of params.yaml, e.g. a smaller backbone
and crop size so that ``embed`` at 100x (1M crops) finishes in an hour on 2 cores: the memory of the data path
does not depend on the network, its seconds do.

Other stages can be added to ``STAGES``: a function (context) -> argv of the stage's command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def synthetic_set(prepared: Path, split: str, scale: int, per_image: int, out: Path, seed: int = 0) -> dict:
    """Write the proposal store at ``out``: the split's images x ``scale`` with ``per_image`` masks each."""
    from longtail.common.masks import decode_mask, to_rle
    from longtail.proposals.format import ProposalWriter, gather, make_record

    if (out / "index.json").exists():
        return json.loads((out / "index.json").read_text())
    coco = json.loads((prepared / f"{split}.json").read_text())
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd") and a.get("segmentation"):
            anns.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(seed)
    base = []                                   # per image: its records' JSON text (one copy of the sample)
    for im in sorted(coco["images"], key=lambda x: x["id"]):
        h, w = im["height"], im["width"]
        masks = [decode_mask(to_rle(a["segmentation"], h, w)) for a in anns.get(im["id"], [])][:per_image]
        yy, xx = np.mgrid[:h, :w]
        while len(masks) < per_image:
            bh, bw = rng.integers(8, max(9, h // 2)), rng.integers(8, max(9, w // 2))
            y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
            if rng.random() < 0.5:
                m = np.zeros((h, w), bool)
                m[y0:y0 + bh, x0:x0 + bw] = True
            else:
                m = ((yy - y0 - bh / 2) / (bh / 2)) ** 2 + ((xx - x0 - bw / 2) / (bw / 2)) ** 2 <= 1
            masks.append(m)
        recs = [make_record(0, m, 1.0 - k / per_image) for k, m in enumerate(masks)]
        base.append((im, [json.dumps(r) for r in recs]))
    offset = 10 ** (len(str(max(im["id"] for im, _ in base))) + 1)
    meta = {"method": "synthetic", "dataset": str(prepared / f"{split}.json"), "topk": per_image, "nms_iou": 1.0,
            "scale": scale}
    with ProposalWriter(out, (1, 1), resume=False, **meta) as w:      # one image's records in memory at a time
        for k in range(scale):
            for im, texts in base:
                new_id = im["id"] + k * offset
                w.add({**im, "id": new_id}, [{**json.loads(t), "image_id": new_id} for t in texts])
        w.finish()
    return gather(out, 1)


def peak_rss(argv: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(peak RSS in MB of the largest process of the command, wall seconds, result), in a fresh wrapper process
    so that ru_maxrss covers this command only."""
    wrapper = ("import resource, subprocess, sys, json, time; t = time.time(); "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'rc': r.returncode, 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
               " 'seconds': time.time() - t, 'err': r.stderr[-3000:], 'out': r.stdout[-3000:]}))")
    r = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "LONGTAIL_MLFLOW": "0", **(env or {})})
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{res['err']}")
    return res["rss_kb"] / 1024, res["seconds"], res


def longtail(*args) -> list[str]:
    return [str(BIN / "longtail"), *args]


SETS = ["--set", "embedding.num_workers=0", "--set", "embedding.proposals_per_image=0"]


def sets(ctx: dict) -> list[str]:
    return [*SETS, *(a for kv in ctx.get("sets", []) for a in ("--set", kv))]


def stage_train_embedding(ctx: dict) -> list[str]:
    return longtail("train-embedding", "--proposals", str(ctx["set"]), "--variant", "poincare",
                    "--out-dir", str(ctx["work"] / "train"), "--set", f"embedding.max_steps={ctx['steps']}",
                    "--set", "embedding.epochs=1000", "--set", "embedding.checkpoint_every=0", *sets(ctx))


def stage_embed(ctx: dict) -> list[str]:
    return longtail("embed", "--model", str(ctx["model"]), "--proposals", str(ctx["set"]), "--anchors",
                    str(ctx["prepared"] / "train.json"), "--out", str(ctx["work"] / "embeddings.npz"),
                    "--metrics", str(ctx["work"] / "embed_metrics.json"), *sets(ctx))


def stage_propose_writer(ctx: dict) -> list[str]:
    """propose's writer alone: the scale's set written again (ProposalWriter, one image at a time) + gather."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); from pathlib import Path; "
            f"import shutil; from scale_memory import synthetic_set; out = Path({str(ctx['work'] / 'written')!r}); "
            f"shutil.rmtree(out, ignore_errors=True); "
            f"synthetic_set(Path({str(ctx['prepared'])!r}), {ctx['split']!r}, {ctx['scale']}, {ctx['per_image']}, out)")
    return [sys.executable, "-c", code]


def stage_read_proposals(ctx: dict) -> list[str]:
    """Every record of the set read image by image (iter_proposals: what streaming readers do)."""
    code = ("import sys; from longtail.proposals.format import iter_proposals; "
            "n = sum(len(r) for _, r in iter_proposals(sys.argv[1])); print(n)")
    return [sys.executable, "-c", code, str(ctx["set"])]


#: stage name -> argv builder; every stage runs on each scale's proposal set
STAGES = {"propose-writer": stage_propose_writer, "read-proposals": stage_read_proposals,
          "train-embedding": stage_train_embedding, "embed": stage_embed}


def in_ram_reference(ctx: dict) -> dict:
    """The pre-streaming embed path on one set: every crop in RAM (crops_for_records), then embed_crops."""
    code = f"""
import json, time, torch, numpy as np
torch.set_num_threads(1)
from longtail.embedding.inputs import load_model, load_proposal_set
from longtail.embedding.crops import crops_for_records
from longtail.embedding.train import embed_crops
model, state = load_model({str(ctx['model'])!r}, 0)
cfg = state["config"]
t = time.time()
_, recs, ids, images = load_proposal_set({str(ctx['set'])!r}, cfg["proposals_per_image"])
crops, valid = crops_for_records(recs, images, cfg["crop_size"], kinds=("fg",), progress=False)
z = embed_crops(model, crops[:, 0], 256, progress=False)
print(json.dumps({{"crops": int(valid.sum()), "seconds": time.time() - t}}))
"""
    rss, secs, res = peak_rss([sys.executable, "-c", code])
    info = json.loads(res["out"].strip().splitlines()[-1])
    return {"peak_rss_mb": round(rss), "seconds": round(info["seconds"], 1),
            "crops_per_s": round(info["crops"] / info["seconds"], 1), "proposals": info["crops"]}


def throughput_pair(ctx: dict, rounds: int = 2) -> dict:
    """crops/s of the proposal embedding alone, in-RAM path vs the streaming path (workers 0), alternated
    ``rounds`` times in one process so that both see the same machine load."""
    code = f"""
import json, shutil, tempfile, time, torch
torch.set_num_threads(1)
from longtail.embedding.inputs import load_model, load_proposal_set
from longtail.embedding.crops import crops_for_records
from longtail.embedding.dataset import ProposalIndex
from longtail.embedding.embed import embed_proposal_set
from longtail.embedding.train import embed_crops
model, state = load_model({str(ctx['model'])!r}, 0)
cfg = state["config"]
out = {{"in_ram": [], "streaming": []}}
for r in range({rounds}):
    t = time.time()
    _, recs, ids, images = load_proposal_set({str(ctx['set'])!r}, cfg["proposals_per_image"])
    crops, valid = crops_for_records(recs, images, cfg["crop_size"], kinds=("fg",), progress=False)
    embed_crops(model, crops[:, 0], 256, progress=False)
    out["in_ram"].append(int(valid.sum()) / (time.time() - t))
    del crops
    d = tempfile.mkdtemp()
    t = time.time()
    idx = ProposalIndex({str(ctx['set'])!r}, cfg["proposals_per_image"])
    arrays, w = embed_proposal_set(model, idx, cfg, d + "/e.npz", fingerprint="x", chunk_images=500,
                                   batch_size=256, progress=False)
    out["streaming"].append(len(arrays["proposal_ids"]) / (time.time() - t))
    shutil.rmtree(d)
print(json.dumps(out))
"""
    rss, secs, res = peak_rss([sys.executable, "-c", code])
    return json.loads(res["out"].strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-image", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20, help="train-embedding steps at every scale")
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument("--in-ram", action="store_true", help="also the pre-streaming in-RAM embed path (reference)")
    ap.add_argument("--throughput", action="store_true",
                    help="only: crops/s of the in-RAM vs streaming proposal embedding on the first scale's set")
    ap.add_argument("--out", type=Path, default=Path("/tmp/scale_memory"))
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter for train-embedding / embed on top of params.yaml (repeatable)")
    args = ap.parse_args()

    prepared = args.out / "prepared"
    if not (prepared / f"{args.split}.json").exists():
        subprocess.run(longtail("prepare", "--out-dir", str(prepared)), check=True, cwd=REPO,
                       env={**os.environ, "LONGTAIL_MLFLOW": "0"}, capture_output=True)
    rows = []
    model = None
    if args.throughput:
        scale = args.scales[0]
        synthetic_set(prepared, args.split, scale, args.per_image, args.out / f"set_{scale}x")
        ctx = {"set": args.out / f"set_{scale}x", "model": args.out / f"work_{scale}x" / "train" / "model.pt"}
        print(json.dumps(throughput_pair(ctx)))
        return 0
    for scale in args.scales:
        t = time.time()
        index = synthetic_set(prepared, args.split, scale, args.per_image, args.out / f"set_{scale}x")
        print(f"# {scale}x: {len(index['images'])} images, {index['num_proposals']} proposals "
              f"(built in {time.time() - t:.0f} s)", flush=True)
        work = args.out / f"work_{scale}x"
        work.mkdir(parents=True, exist_ok=True)
        ctx = {"set": args.out / f"set_{scale}x", "work": work, "prepared": prepared, "steps": args.steps,
               "model": model, "split": args.split, "scale": scale, "per_image": args.per_image, "sets": args.sets}
        for name in args.stages:
            if name == "embed" and ctx["model"] is None:
                ctx["model"] = model = work / "train" / "model.pt"
                if not model.exists():
                    peak_rss(stage_train_embedding(ctx))
            rss, secs, _ = peak_rss(STAGES[name](ctx))
            row = {"stage": name, "scale": scale, "images": len(index["images"]),
                   "proposals": index["num_proposals"], "peak_rss_mb": round(rss), "seconds": round(secs, 1)}
            if name == "embed":
                m = json.loads((work / "embed_metrics.json").read_text())
                row["crops_per_s"] = round(m["num_proposals"] / m["embed_seconds"], 1)
            if name == "train-embedding" and ctx["model"] is None:
                ctx["model"] = model = work / "train" / "model.pt"
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.in_ram:
            row = {"stage": "embed (in-RAM reference)", "scale": scale, "images": len(index["images"]),
                   **in_ram_reference(ctx)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| stage | scale | images | proposals | peak RSS (MB) | seconds | crops/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['scale']}x | {r['images']} | {r['proposals']} | {r['peak_rss_mb']} | "
              f"{r['seconds']} | {r.get('crops_per_s', '')} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
