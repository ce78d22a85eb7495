"""train-pixel-embedding samples/s: the streaming dataset (TreeImages, 1 DataLoader worker) vs the in-RAM list.

Trees: OWT-UCM of the human boundaries of 3 BSDS sample images (tests/test_hierarchy_embedding.py::_tree_folder).
Both paths alternate ``--rounds`` times in one process so that both see the same machine load; samples/s is
measured over steps 2..N-1 (after start-up).

    nice -n 10 .venv/bin/python benchmarks/pixel_embedding_streaming.py --steps 30 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    from test_hierarchy_embedding import _small_cfg, _tree_folder

    from longtail.hierarchy import pixel_embedding as pe
    from longtail.hierarchy.process import load_training_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--crop-size", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    trees = _tree_folder(tmp / "trees")
    n = args.steps
    cfg = _small_cfg(steps=n, batch_size=2, crop_size=args.crop_size)
    out: dict = {"in_ram": [], "streaming_w1": []}
    for _ in range(args.rounds):
        for name, kw in (("in_ram", {}), ("streaming_w1", {"num_workers": 1})):
            data = (load_training_set(trees, cfg["max_regions"], 32) if name == "in_ram"
                    else pe.TreeImages(trees, cfg["max_regions"], 32))
            ts: list = []
            ck = tmp / f"{name}.pt"
            ck.unlink(missing_ok=True)
            pe.train_pixel_embedding(data, cfg, ck, progress=False, on_step=lambda s, v: ts.append(time.time()), **kw)
            out[name].append(round((n - 2) * 2 / (ts[-1] - ts[1]), 2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
