"""Training of the embedding network on sampled mask triplets (Weng et al. 2021, 3.2, 4.1).

One step = one batch of ``images_per_batch`` images: every proposal of those images is an L_mask anchor
(its full, fg and bg crops are embedded once), L_object / L_hierarchical triplets are sampled among the
batch's proposals (negatives may come from the other images of the batch). Riemannian Adam (geoopt).

Checkpointing: the state (model, optimizer, step, history) is saved atomically every ``checkpoint_every``
steps and at the end of each epoch; a run with the same configuration and data resumes from it. Sampling
and the image order are seeded per step/epoch, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geoopt
import numpy as np
import torch

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path
from longtail.common.params import params_hash
from longtail.embedding.crops import crops_for_records, to_input
from longtail.embedding.losses import LOSS_TERMS, loss_hierarchical, loss_mask, loss_object, total_loss
from longtail.embedding.model import EmbeddingNet
from longtail.embedding.sampling import Relations, build_relations, region_tree_pairs, sample_triplets

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    records: list[dict]          # proposals used (top-N per image)
    record_ids: np.ndarray       # their positions in proposals.json
    crops: np.ndarray            # (N, 3 kinds, 3, S, S) uint8
    valid: np.ndarray            # (N,) non-empty mask
    relations: Relations


def make_training_set(records: Sequence[dict], record_ids: Sequence[int], images: dict[int, dict],
                      cfg: dict, source: str = "", progress: bool = True,
                      trees: dict | None = None) -> TrainingSet:
    """Crops and relations; ``trees`` (image id -> RegionTree) add parent/child pairs (region_tree_pairs)."""
    crops, valid = crops_for_records(records, images, cfg["crop_size"], source=source, progress=progress)
    rles, image_ids = [r["segmentation"] for r in records], [r["image_id"] for r in records]
    extra = region_tree_pairs(rles, image_ids, trees, match_iou=cfg["tree_match_iou"],
                              max_area_ratio=cfg["child_max_area_ratio"], valid=valid) if trees else []
    rel = build_relations(rles, image_ids, valid,
                          pos_iou=cfg["pos_iou"], neg_max_iou=cfg["neg_max_iou"],
                          child_containment=cfg["child_containment"],
                          child_max_area_ratio=cfg["child_max_area_ratio"],
                          child_min_area_ratio=cfg["child_min_area_ratio"], extra_children=extra)
    rel.stats["region_tree_pairs"] = len(extra)
    return TrainingSet(list(records), np.asarray(record_ids, np.int64), crops, valid, rel)


def build_model(cfg: dict) -> EmbeddingNet:
    return EmbeddingNet.from_config(cfg)


def batch_losses(model: EmbeddingNet, ts: TrainingSet, trip, cfg: dict) -> dict[str, torch.Tensor]:
    """Loss terms of one sampled batch (only the enabled ones are computed)."""
    enabled = tuple(cfg["losses"])
    P = trip.proposals
    local = np.full(len(ts.crops), -1, np.int64)
    local[P] = np.arange(len(P))
    kinds = [0, 1, 2] if "mask" in enabled else [1]          # full, fg, bg  /  fg only
    x = to_input(ts.crops[P][:, kinds]).to(model_device(model))   # (P, k, 3, S, S)
    z = model(x.flatten(0, 1)).view(len(P), len(kinds), -1)
    z_fg = z[:, kinds.index(1)]
    alpha = cfg["alpha"]
    terms: dict[str, torch.Tensor] = {}
    if "mask" in enabled:
        terms["mask"] = loss_mask(model.space, z[:, 0], z_fg, z[:, 2], alpha)
    if "object" in enabled:
        a, p, n = local[trip.anchors], local[trip.positives], local[trip.negatives]
        terms["object"] = loss_object(model.space, z_fg[a], z_fg[p], z_fg[n], alpha)
    if "hierarchical" in enabled:
        terms["hierarchical"] = loss_hierarchical(model.space, z_fg[local[trip.parents]],
                                                  z_fg[local[trip.children]], alpha)
    terms["total"] = total_loss(terms, cfg["beta"], cfg["gamma"], enabled)
    return terms


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pick_device(gpu: int | None) -> torch.device:
    """cuda when GPUs are requested (params ``gpu``) and present, else cpu."""
    return torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")


def fingerprint(cfg: dict, ts: TrainingSet, seed: int) -> str:
    keys = [k for k in cfg if k not in ("checkpoint_every", "threads", "embed_batch_size", "anchors_per_category",
                                        "anchor_min_area", "variants", "gpu", "out_dir")]
    return params_hash([{k: cfg[k] for k in sorted(keys)}, ts.record_ids.tolist(), seed])


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)`` with geoopt's per-parameter ``step`` counters kept as Python ints.

    geoopt's RiemannianAdam counts ``step`` in a Python int (bias corrections ``beta ** step`` in float64),
    but torch.optim.Adam.__setstate__, which load_state_dict calls, turns it into a float32 tensor: the
    bias corrections of a resumed run were then rounded to float32 and the run drifted from an
    uninterrupted one. The counters are put back to ints, as in an uninterrupted run.
    """
    opt.load_state_dict(state)
    for p_state in opt.state.values():
        if torch.is_tensor(p_state.get("step")):
            p_state["step"] = int(p_state["step"].item())


def train(model: EmbeddingNet, ts: TrainingSet, cfg: dict, *, seed: int, checkpoint: str | Path | None = None,
          on_step: Callable[[int, dict], None] | None = None, progress: bool = True) -> dict:
    """Train ``model`` in place; return the history and summary numbers."""
    from tqdm import tqdm

    enabled = tuple(cfg["losses"])
    if not enabled or any(t not in LOSS_TERMS for t in enabled):
        raise ValueError(f"losses must be a non-empty subset of {LOSS_TERMS}")
    images = [k for k, idx in enumerate(ts.relations.images) if len(idx)]
    B = int(cfg["images_per_batch"])
    steps_per_epoch = max(1, math.ceil(len(images) / B))
    total = steps_per_epoch * int(cfg["epochs"])
    if cfg.get("max_steps"):
        total = min(total, int(cfg["max_steps"]))
    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    fp = fingerprint(cfg, ts, seed)
    step, history = 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        state = torch.load(ckpt, map_location=model_device(model), weights_only=False)
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            load_optimizer_state(opt, state["optimizer"])
            step, history = int(state["step"]), list(state["history"])
            log.info("resuming from %s at step %d/%d", ckpt, step, total)
        else:
            log.warning("checkpoint %s is from another configuration or data; starting over", ckpt)

    def save(s: int) -> None:
        if ckpt is None:
            return
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": s,
                        "history": history, "fingerprint": fp}, tmp)

    model.train()
    t0 = time.time()
    bar = tqdm(total=total, initial=step, desc="train-embedding", unit="step", disable=not progress)
    while step < total:
        epoch, b = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        batch = [images[i] for i in order[b * B:(b + 1) * B]]
        trip = sample_triplets(ts.relations, batch, np.random.default_rng([seed, 1, step]),
                               cfg["num_negatives"])
        terms = batch_losses(model, ts, trip, cfg)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        rec = {"step": step, "epoch": epoch, **{f"loss_{k}": float(v.detach()) for k, v in terms.items()},
               "object_triplets": int(len(trip.anchors) * trip.negatives.shape[1]),
               "hierarchical_pairs": len(trip.parents), "batch_proposals": len(trip.proposals)}
        if not all(math.isfinite(v) for k, v in rec.items() if k.startswith("loss_")):
            raise LongtailError(f"train-embedding: non-finite loss at step {step} ({rec}); the training "
                                f"diverged - lower embedding.lr or set embedding.max_tangent_norm > 0.")
        history.append(rec)
        if on_step:
            on_step(step, rec)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss_total']:.4f}")
        if step % steps_per_epoch == 0 or step == total or (cfg["checkpoint_every"]
                                                             and step % cfg["checkpoint_every"] == 0):
            save(step)
    bar.close()
    return summarize(history, steps_per_epoch, time.time() - t0)


def summarize(history: list[dict], steps_per_epoch: int, seconds: float) -> dict:
    """First-epoch and last-epoch mean losses and triplet counts."""
    out: dict = {"steps": len(history), "steps_per_epoch": steps_per_epoch, "train_seconds": round(seconds, 3)}
    if not history:
        return out
    first = [h for h in history if h["epoch"] == history[0]["epoch"]]
    last = [h for h in history if h["epoch"] == history[-1]["epoch"]]
    for k in history[0]:
        if k.startswith("loss_"):
            out[f"first_epoch_{k}"] = float(np.mean([h[k] for h in first]))
            out[f"last_epoch_{k}"] = float(np.mean([h[k] for h in last]))
    for k in ("object_triplets", "hierarchical_pairs"):
        out[f"total_{k}"] = int(sum(h[k] for h in history))
    return out


@torch.no_grad()
def embed_crops(model: EmbeddingNet, crops_u8: np.ndarray, batch_size: int = 256,
                progress: bool = True, desc: str = "embed") -> np.ndarray:
    """(N, 3, S, S) uint8 crops -> (N, dim) float32 points (model in eval mode)."""
    from tqdm import tqdm

    model.eval()
    out = np.zeros((len(crops_u8), model.dim), np.float32)
    for s in tqdm(range(0, len(crops_u8), batch_size), desc=desc, unit="batch", disable=not progress):
        z = model(to_input(crops_u8[s:s + batch_size]).to(model_device(model)))
        out[s:s + batch_size] = model.space.project(z).float().cpu().numpy()
    return out
