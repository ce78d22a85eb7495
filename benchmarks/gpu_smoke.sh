#!/usr/bin/env bash
# GPU smoke benchmark (issue 15): what only a GPU can measure, in one run of < 8 minutes on one GPU machine.
#
#   benchmarks/gpu_smoke.sh [OUT_DIR]          # OUT_DIR default: $OUT, else /tmp/gpu_smoke
#
# Needs the project's environment (PYTHON, default .venv/bin/python, with `longtail` next to it) and the sample
# data (data/, `make data`). Writes OUT_DIR/gpu_smoke.json: one entry per part with its numbers, wall seconds and
# status (a failing part is recorded and the next one runs), plus the GPUs seen and `uptime`.
# Parts (each under `timeout`):
#   train_proposals  train-proposals (Mask R-CNN R50-FPN, sample config) on 1 GPU: iterations/s (two runs of
#                    different length: the difference removes start-up and data loading)
#   train_embedding  train-embedding on the GT proposals of the prepared train split: crops/s (3 crops/proposal)
#   embed            embed of the same set: crops/s
#   cluster          longtail cluster, k = 1500 (elbow grid 500/1000/1500, n_init 1, 20 iterations) on 1M
#                    synthetic Poincaré points (benchmarks/scale_memory_discovery.py), discovery.device cuda
#   ddp              torchrun --nproc_per_node <visible GPUs>: train-embedding (DDP, nccl) and
#                    train-pixel-embedding (DDP) on BSDS trees from the human boundaries: steps/s, world size
# Without a GPU (here: CI / a laptop) the same parts run at toy sizes on the CPU (gloo, 2 processes for ddp) and
# train_proposals is skipped: this checks the script, not the numbers. Docs: docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu_smoke}}
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH" LONGTAIL_MLFLOW=0 PYTHONUNBUFFERED=1
W=$OUT_DIR/work
mkdir -p "$W" "$OUT_DIR/parts"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$NGPU" -gt 0 ]; then
  MODE=gpu; NPROC=$NGPU; EMB_STEPS=60; PE_STEPS=40; N_POINTS=1000000; KGRID="[500,1000,1500]"; K=1500
else
  MODE=cpu; NPROC=2; EMB_STEPS=3; PE_STEPS=2; N_POINTS=20000; KGRID="[4,8,16]"; K=16
fi
echo "gpu_smoke: mode $MODE, $NGPU GPU(s), out $OUT_DIR"

part() {   # part <name> <timeout s> <command...>: runs it, records status + wall seconds in parts/<name>.status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT_DIR/parts/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"wall_s\": $(echo "$(date +%s.%N) - $t0" | bc)}" > "$OUT_DIR/parts/$name.status"
  echo "gpu_smoke: $name rc=$rc ($(tail -c 300 "$OUT_DIR/parts/$name.log" | tr '\n' ' ' | tail -c 200))"
}

# --- shared inputs: the prepared sample splits and their GT proposal sets (CPU, ~20 s)
[ -f "$W/prepared/train.json" ] || longtail prepare --out-dir "$W/prepared" > "$OUT_DIR/parts/prepare.log" 2>&1
[ -f "$W/props/train/index.json" ] || longtail propose --method gt --dataset "$W/prepared/train.json" \
    --out-dir "$W/props/train" >> "$OUT_DIR/parts/prepare.log" 2>&1

# --- train-proposals iterations/s on one GPU
if [ "$MODE" = gpu ]; then
  for it in 20 120; do
    rm -rf "$W/tp_$it"
    part "train_proposals_$it" 240 longtail train-proposals --model maskrcnn --train-json "$W/prepared/train.json" \
      --work-dir "$W/tp_$it" --set proposals.gpu=1 --set proposals.train.max_iters=$it \
      --set proposals.train.checkpoint_interval=1000 --set proposals.train.num_workers=4
  done
fi

# --- train-embedding / embed crops/s (one GPU)
EGPU=$([ "$MODE" = gpu ] && echo 1 || echo 0)
rm -rf "$W/emb"
part train_embedding 180 longtail train-embedding --proposals "$W/props/train" --out-dir "$W/emb" \
  --set embedding.gpu=$EGPU --set embedding.max_steps=$EMB_STEPS --set embedding.epochs=1000 \
  --set embedding.num_workers=4 --set embedding.checkpoint_every=0
part embed 120 longtail embed --model "$W/emb/model.pt" --proposals "$W/props/train" \
  --anchors "$W/prepared/train.json" --out "$W/emb/embeddings.npz" --metrics "$W/emb/embed_metrics.json" \
  --set embedding.gpu=$EGPU --set embedding.num_workers=4

# --- cluster at k = 1500 on 1M synthetic points
part cluster 240 "$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path
from scale_memory_discovery import synthetic_embeddings
synthetic_embeddings(Path('$W/cluster/emb.npz'), $N_POINTS, 2, 64)
import subprocess
sys.exit(subprocess.run(['longtail', 'cluster', '--embeddings', '$W/cluster/emb.npz', '--out-dir', '$W/cluster',
    '--set', 'discovery.k_grid=$KGRID', '--set', 'discovery.k=$K', '--set', 'discovery.n_init=1',
    '--set', 'discovery.max_iter=20', '--set', 'discovery.device=cuda']).returncode)"

# --- the DDP paths: torchrun with one process per visible GPU (2 gloo processes on the CPU)
TR="torchrun --standalone --nproc_per_node $NPROC --no-python longtail"
rm -rf "$W/emb_ddp"
part ddp_train_embedding 180 $TR train-embedding --proposals "$W/props/train" --out-dir "$W/emb_ddp" \
  --set embedding.gpu=$NPROC --set embedding.max_steps=$EMB_STEPS --set embedding.epochs=1000 \
  --set embedding.num_workers=2 --set embedding.checkpoint_every=0 --set embedding.images_per_batch=$((4 * NPROC))
"$PY" - "$W/trees" <<'PYEOF' > "$OUT_DIR/parts/trees.log" 2>&1
import json, sys
from pathlib import Path
import numpy as np
from longtail.hierarchy import bench
from longtail.hierarchy.process import save_tree
from longtail.hierarchy.ucm import owt_ucm
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
bsds = Path("data/bsds500")
index = []
for p in sorted((bsds / "images" / "train").glob("*.jpg"))[:16]:
    gt = bench.load_groundtruth(bsds / "groundTruth" / "train" / f"{p.stem}.mat")
    if not (out / f"{p.stem}.npz").exists():
        save_tree(out / f"{p.stem}.npz", owt_ucm(np.mean([b.astype(float) for b in gt.boundaries], 0), max_leaves=60))
    index.append({"key": p.stem, "image": str(p), "image_id": None, "tree": f"{p.stem}.npz"})
(out / "index.json").write_text(json.dumps({"images": index}))
PYEOF
rm -rf "$W/pe_ddp"; mkdir -p "$W/pe_ddp"
part ddp_train_pixel_embedding 180 $TR train-pixel-embedding --trees "$W/trees" \
  --eval-images data/bsds500/bench_sample/images --eval-gt data/bsds500/bench_sample/groundTruth \
  --out "$W/pe_ddp/pe.pt" --metrics "$W/pe_ddp/metrics.json" --set hierarchy.device=cuda \
  --set hierarchy.pixel_embedding.steps=$PE_STEPS --set hierarchy.pixel_embedding.batch_size=$((8 * NPROC)) \
  --set hierarchy.pixel_embedding.crop_size=224 --set hierarchy.pixel_embedding.eval_images=1 \
  --set hierarchy.pixel_embedding.eval_k=2

# --- the numbers
"$PY" - "$OUT_DIR" "$W" "$MODE" "$NGPU" "$NPROC" <<'PYEOF'
import json, subprocess, sys
from pathlib import Path
out, w, mode, ngpu, nproc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def status(name):
    p = out / "parts" / f"{name}.status"
    return json.loads(p.read_text()) if p.exists() else {"rc": None}
def metrics(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
res = {"mode": mode, "gpus": ngpu, "nproc": nproc, "uptime": subprocess.run(["uptime"], capture_output=True,
       text=True).stdout.strip()}
try:
    import torch
    res["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(ngpu)]
except Exception:
    pass
a, b = status("train_proposals_20"), status("train_proposals_120")
if a.get("rc") == 0 and b.get("rc") == 0:
    res["train_proposals"] = {"iters_per_s": round(100 / (b["wall_s"] - a["wall_s"]), 3), "runs": [a, b],
                              "metrics_120": metrics(w / "tp_120" / "metrics.json")}
m = metrics(w / "emb" / "metrics.json")
s = status("train_embedding")
if m:
    # proposals per step ~ the set's proposals / steps per epoch (images_per_batch images a step); 3 crops each
    props = m["steps"] * m["num_proposals"] / m["steps_per_epoch"]
    res["train_embedding"] = {**s, "steps": m["steps"], "train_seconds": m["train_seconds"],
                              "crops_per_s_approx": round(3 * props / m["train_seconds"], 1)}
else:
    res["train_embedding"] = s
m = metrics(w / "emb" / "embed_metrics.json")
res["embed"] = {**status("embed"), **({"proposals": m["num_proposals"], "embed_seconds": m["embed_seconds"],
                "crops_per_s": round(m["num_proposals"] / m["embed_seconds"], 1)} if m else {})}
m = metrics(w / "cluster" / "cluster_metrics.json")
res["cluster"] = {**status("cluster"), **({k: m[k] for k in ("k", "num_points", "n_iter", "inertia")} if m else {})}
m = metrics(w / "emb_ddp" / "metrics.json")
res["ddp_train_embedding"] = {**status("ddp_train_embedding"), **({k: m.get(k) for k in (
    "world_size", "steps", "train_seconds")} if m else {})}
m = metrics(w / "pe_ddp" / "metrics.json")
res["ddp_train_pixel_embedding"] = {**status("ddp_train_pixel_embedding"), **({k: m.get(k) for k in (
    "world_size", "device", "steps", "train_seconds", "samples_per_second", "loss_first", "loss_last")} if m else {})}
(out / "gpu_smoke.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res, indent=1))
PYEOF
