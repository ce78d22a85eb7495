"""Speed of HED edges + OWT-UCM per BSDS image (481x321) on this machine.

    python benchmarks/hierarchy_speed.py --n 10 --threads 2 --out results/benchmarks/hierarchy_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from longtail.hierarchy.hed import hed_edges, load_hed
from longtail.hierarchy.images import list_images, load_rgb
from longtail.hierarchy.ucm import edge_nms, edge_orientation, owt_ucm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="data/bsds500/images/val")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--nchw", action="store_true", help="time the old NCHW forward pass (torch.no_grad, contiguous)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_hed(channels_last=True)
    if a.nchw:
        from longtail.hierarchy.hed import preprocess

        model = model.to(memory_format=torch.contiguous_format)

        def edges_fn(model, ims):  # the forward pass before the channels-last change
            with torch.no_grad():
                return [e.numpy() for e in model(torch.stack([preprocess(im) for im in ims]))]
    else:
        edges_fn = hed_edges
    items = list_images(images=a.images, max_images=a.n + 1)
    ims = [load_rgb(it.path) for it in items]
    load_start = list(os.getloadavg())
    edges_fn(model, [ims[0]])  # warm-up
    t = {"hed": [], "orientation": [], "nms": [], "ucm": [], "total_edges_ucm": [], "cpu_total_edges_ucm": []}
    for im in ims[1:]:
        c0 = time.process_time()  # CPU seconds of all threads: <= threads x wall on an idle machine
        t0 = time.perf_counter()
        e = edges_fn(model, [im])[0]
        t1 = time.perf_counter()
        o = edge_orientation(e)
        t2 = time.perf_counter()
        thin = edge_nms(e)
        t3 = time.perf_counter()
        tree = owt_ucm(e.astype(np.float64), o, thin=thin)  # params default boundary (mix)
        tree.ucm2()
        t4 = time.perf_counter()
        t["hed"].append(t1 - t0)
        t["orientation"].append(t2 - t1)
        t["nms"].append(t3 - t2)
        t["ucm"].append(t4 - t3)
        t["total_edges_ucm"].append(t4 - t0)
        t["cpu_total_edges_ucm"].append(time.process_time() - c0)
    res = {k: {"median_s": float(np.median(v)), "mean_s": float(np.mean(v))} for k, v in t.items()}
    res.update({"n_images": len(ims) - 1, "threads": a.threads, "image_size": list(ims[1].shape[:2]),
                "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
                "torch_threads": torch.get_num_threads(), "memory_format": "nchw" if a.nchw else "channels_last"})
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
