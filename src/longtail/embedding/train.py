"""Training of the embedding network on sampled mask triplets (Weng et al. 2021, 3.2, 4.1).

One step = one batch of ``images_per_batch`` images: every proposal of those images is an L_mask anchor
(its full, fg and bg crops are embedded once), L_object / L_hierarchical triplets are sampled among the
batch's proposals (negatives may come from the other images of the batch). Riemannian Adam (geoopt).

Data: the steps come from a ``torch.utils.data.DataLoader`` over images (:mod:`longtail.embedding.dataset`):
each worker reads one image, its proposals and region tree, cuts the crops and computes that image's relations;
memory is bounded by a few batches, not by the split. The in-RAM :class:`TrainingSet` (all crops at once; small
sets, tests and the benchmark's reference) goes through the same loop and gives the same steps.

Checkpointing: the state (model, optimizer, step, history) is saved atomically every ``checkpoint_every``
steps, at the end of each epoch and when SIGUSR1 / SIGTERM arrives (SLURM's pre-timeout signal; the run
then stops with :class:`Preempted`); a run with the same configuration and data resumes from it. Sampling
and the image order are seeded per step/epoch, so a resumed run equals an uninterrupted one.

DDP: under ``torchrun`` (WORLD_SIZE > 1, :func:`init_distributed`) the model is wrapped in
DistributedDataParallel (gloo on the CPU, nccl on GPUs); rank r of W takes every W-th image of each step's
``images_per_batch`` (the global batch is kept), samples its triplets within its share and DDP averages the
gradients; only rank 0 writes checkpoints. The losses logged are the mean over the ranks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import geoopt
import numpy as np
import torch

from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path
from longtail.common.preemption import Preempted  # noqa: F401 (re-exported: the verb's error)
from longtail.common.preemption import StopSignals as _Signals
from longtail.common.preemption import init_distributed as _init_distributed
from longtail.common.preemption import world as _world
from longtail.common.params import params_hash
from longtail.embedding.crops import crops_for_records, to_input
from longtail.embedding.dataset import REL_STATS, ImageItem, StepBatchSampler, step_loader, steps_per_epoch
from longtail.embedding.losses import LOSS_TERMS, loss_hierarchical, loss_mask, loss_object, total_loss
from longtail.embedding.model import EmbeddingNet
from longtail.embedding.sampling import Relations, build_relations, region_tree_pairs

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """The in-RAM training set: every crop of every proposal at once (small sets, tests, the benchmark's
    reference). The stage itself streams (:func:`longtail.embedding.dataset.training_dataset`)."""

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


@torch.no_grad()
def init_head(model: EmbeddingNet, data, cfg: dict, seed: int, batch_crops: int = 256) -> dict:
    """``head_init: pca``: mean and covariance of the head inputs of the fg crops of ``head_init_images``
    training images (a seeded subset; 0 = all), accumulated image by image (memory: one F x F matrix), then
    :meth:`EmbeddingNet.init_head_pca`. With a frozen backbone the features land in its memo, so the first
    epoch does not compute them again. ``random`` leaves the layers' default init."""
    if cfg["head_init"] == "random":
        return {"head_init": "random"}
    n = len(data)
    k = n if not cfg["head_init_images"] else min(n, int(cfg["head_init_images"]))
    pick = np.sort(np.random.default_rng([seed, 3]).choice(n, k, replace=False))
    s1 = s2 = None
    count, pending = 0, []

    def flush():
        nonlocal s1, s2, count
        f = model.head_input(to_input(torch.cat(pending)).to(model_device(model))).double().cpu()
        s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
        s2 = f.T @ f if s2 is None else s2 + f.T @ f
        count += len(f)
        pending.clear()

    was_training = model.training
    model.eval()
    for i in pick:
        pending.append(data.fg_crops(int(i)))
        if sum(len(c) for c in pending) >= batch_crops:
            flush()
    if pending:
        flush()
    model.train(was_training)
    if count < 2:
        raise LongtailError("embedding.head_init: pca needs at least 2 training crops; use head_init: random")
    mean = s1 / count
    cov = (s2 - count * torch.outer(mean, mean)) / (count - 1)
    out = model.init_head_pca(mean, cov, cfg["head_init_norm"])
    return {"head_init": "pca", "head_init_crops": count, "head_init_components": out["components"],
            "head_init_explained_variance": out["explained_variance"]}


class InMemoryImages(torch.utils.data.Dataset):
    """The images of an in-RAM :class:`TrainingSet` as per-image items (same items as the streaming dataset)."""

    def __init__(self, ts: TrainingSet):
        self.ts = ts
        self.images = [k for k, idx in enumerate(ts.relations.images) if len(idx)]
        self.record_ids = ts.record_ids

    def __len__(self) -> int:
        return len(self.images)

    def fg_crops(self, i: int) -> torch.Tensor:
        """(n, 3, S, S) uint8 fg crops of image ``i`` (kinds: full, fg, bg)."""
        return torch.from_numpy(self.ts.crops[self.ts.relations.images[self.images[i]]][:, 1])

    def __getitem__(self, i: int) -> ImageItem:
        rel = self.ts.relations
        idx = rel.images[self.images[i]]
        local = lambda lst: [np.searchsorted(idx, lst[g]).astype(np.int64) for g in idx]
        return ImageItem(pos=i, image_id=int(self.ts.records[idx[0]]["image_id"]), record_ids=self.ts.record_ids[idx],
                         scores=np.asarray([self.ts.records[g]["score"] for g in idx], np.float64),
                         crops=torch.from_numpy(self.ts.crops[idx]), positives=local(rel.positives),
                         negatives=local(rel.negatives), children=local(rel.children))


def step_losses(model: torch.nn.Module, crops_u8: torch.Tensor | np.ndarray, trip, cfg: dict,
                space=None) -> dict[str, torch.Tensor]:
    """Loss terms of one batch: ``crops_u8`` (P, 3 kinds, 3, S, S) of the proposals ``trip.proposals`` refers
    to by position (only the enabled terms are computed; fg crops only without L_mask)."""
    enabled = tuple(cfg["losses"])
    space = space or model.space
    kinds = [0, 1, 2] if "mask" in enabled else [1]          # full, fg, bg  /  fg only
    crops_u8 = torch.as_tensor(crops_u8)
    P = len(crops_u8)
    x = to_input(crops_u8[:, kinds]).to(model_device(model))   # (P, k, 3, S, S)
    z = model(x.flatten(0, 1)).view(P, len(kinds), -1)
    z_fg = z[:, kinds.index(1)]
    alpha = cfg["alpha"]
    terms: dict[str, torch.Tensor] = {}
    if "mask" in enabled:
        terms["mask"] = loss_mask(space, z[:, 0], z_fg, z[:, 2], alpha)
    if "object" in enabled:
        terms["object"] = loss_object(space, z_fg[trip.anchors], z_fg[trip.positives], z_fg[trip.negatives], alpha)
    if "hierarchical" in enabled:
        terms["hierarchical"] = loss_hierarchical(space, z_fg[trip.parents], z_fg[trip.children], alpha)
    terms["total"] = total_loss(terms, cfg["beta"], cfg["gamma"], enabled)
    return terms


def batch_losses(model: EmbeddingNet, ts: TrainingSet, trip, cfg: dict) -> dict[str, torch.Tensor]:
    """Loss terms of triplets sampled on the in-RAM set's global relations (``sample_triplets(ts.relations)``)."""
    from longtail.embedding.sampling import Triplets

    P = trip.proposals
    local = np.full(len(ts.crops), -1, np.int64)
    local[P] = np.arange(len(P))
    lt = Triplets(proposals=np.arange(len(P)), anchors=local[trip.anchors], positives=local[trip.positives],
                  negatives=local[trip.negatives], parents=local[trip.parents], children=local[trip.children])
    return step_losses(model, ts.crops[P], lt, cfg)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pick_device(gpu: int | None) -> torch.device:
    """cuda when GPUs are requested (params ``gpu``) and visible, else cpu (with a warning when requested)."""
    from longtail.common.runtime import gpu_device

    return gpu_device(gpu, "train-embedding")


def fingerprint(cfg: dict, data, seed: int) -> str:
    """Configuration + the proposals trained on (``data.record_ids``) + seed; not the keys that change no result."""
    import hashlib

    keys = [k for k in cfg if k not in ("checkpoint_every", "threads", "embed_batch_size", "anchors_per_category",
                                        "anchor_min_area", "variants", "gpu", "out_dir", "num_workers",
                                        "embed_chunk_images")]
    ids = hashlib.sha256(np.ascontiguousarray(data.record_ids, np.int64).tobytes()).hexdigest()
    return params_hash([{k: cfg[k] for k in sorted(keys)}, ids, seed])


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


def init_distributed(gpu: int | None = None) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) the process group is started: nccl with one
    GPU per local rank when GPUs are requested and visible, else gloo on the CPU (with a warning if GPUs were
    requested). Without torchrun: rank 0 of 1 on ``pick_device(gpu)``."""
    return _init_distributed(pick_device(gpu))


def train(model: EmbeddingNet, data, cfg: dict, *, seed: int, checkpoint: str | Path | None = None,
          on_step: Callable[[int, dict], None] | None = None, progress: bool = True,
          num_workers: int = 0) -> dict:
    """Train ``model`` in place on ``data`` (a per-image dataset, e.g.
    :class:`~longtail.embedding.dataset.ProposalImageDataset`, or an in-RAM :class:`TrainingSet`); return the
    summary numbers. ``num_workers`` DataLoader worker processes prepare the steps. Under an initialised
    process group the model is trained with DDP (see the module docstring); only rank 0 saves."""
    import torch.distributed as dist
    from tqdm import tqdm

    enabled = tuple(cfg["losses"])
    if not enabled or any(t not in LOSS_TERMS for t in enabled):
        raise ValueError(f"losses must be a non-empty subset of {LOSS_TERMS}")
    if isinstance(data, TrainingSet):
        data = InMemoryImages(data)
    rank, world = _world()
    B = int(cfg["images_per_batch"])
    spe = steps_per_epoch(len(data), B)
    total = spe * int(cfg["epochs"])
    if cfg.get("max_steps"):
        total = min(total, int(cfg["max_steps"]))
    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    fp = fingerprint(cfg, data, seed)
    step, history, init_info = 0, [], {}
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        state = torch.load(ckpt, map_location=model_device(model), weights_only=False)
        if state.get("fingerprint") == fp:
            model.load_state_dict(state["model"])
            load_optimizer_state(opt, state["optimizer"])
            step, history = int(state["step"]), list(state["history"])
            init_info = dict(state.get("init_info", {}))   # the head init's numbers, reported by the resumed run too
            log.info("resuming from %s at step %d/%d", ckpt, step, total)
        else:
            log.warning("checkpoint %s is from another configuration or data; starting over", ckpt)
    if step == 0:                                  # a resumed run has its trained head already
        t_init = time.time()
        init_info = init_head(model, data, cfg, seed)
        init_info["head_init_seconds"] = round(time.time() - t_init, 3)

    def save(s: int) -> None:
        if ckpt is None or rank != 0:
            return
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": s,
                        "history": history, "fingerprint": fp, "init_info": init_info}, tmp)

    net = model
    if world > 1:
        dev = model_device(model)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    sampler = StepBatchSampler(len(data), B, seed, step, total, rank, world)
    loader = step_loader(data, sampler, seed=seed, num_negatives=cfg["num_negatives"], num_workers=num_workers)
    model.train()
    t0 = time.time()
    bar = tqdm(total=total, initial=step, desc="train-embedding", unit="step", disable=not progress or rank != 0)
    with _Signals() as sig:
        for batch in loader:
            assert batch.step in (step, -1), (batch.step, step)          # -1: no images for this rank
            trip = batch.triplets
            if len(batch.crops):
                terms = step_losses(net, batch.crops, trip, cfg, space=model.space)
            else:                                  # a DDP rank without images this step still joins the all-reduce
                zero = sum(p.sum() for p in model.parameters()) * 0.0
                terms = {**{t: zero for t in enabled}, "total": zero}
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            counts = [float(len(trip.anchors) * trip.negatives.shape[1]), float(len(trip.parents)),
                      float(len(trip.proposals)), *(float(batch.stats[k]) for k in REL_STATS)]
            losses = {k: float(v.detach()) for k, v in terms.items()}
            stop = float(sig.received is not None)
            if world > 1:                          # losses: mean over the ranks; counts: sums; stop: any rank
                vec = torch.tensor([*losses.values(), *counts, stop], dtype=torch.float64)
                dist.all_reduce(vec)
                n = len(losses)
                losses = dict(zip(losses, (vec[:n] / world).tolist()))
                counts, stop = vec[n:-1].tolist(), float(vec[-1])
            rec = {"step": step, "epoch": step // spe, **{f"loss_{k}": v for k, v in losses.items()},
                   "object_triplets": int(counts[0]), "hierarchical_pairs": int(counts[1]),
                   "batch_proposals": int(counts[2]), **{k: int(c) for k, c in zip(REL_STATS, counts[3:])}}
            if not all(math.isfinite(v) for k, v in rec.items() if k.startswith("loss_")):
                raise LongtailError(f"train-embedding: non-finite loss at step {step} ({rec}); the training "
                                    f"diverged - lower embedding.lr or set embedding.max_tangent_norm > 0.")
            history.append(rec)
            if on_step:
                on_step(step, rec)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss_total']:.4f}")
            if step % spe == 0 or step == total or (cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0) \
                    or stop:
                save(step)
            if stop and step < total:
                sig.preempt("train-embedding", step, total, ckpt, world)
    bar.close()
    return {**summarize(history, spe, time.time() - t0), **init_info}


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
    if history[0]["epoch"] == 0:                     # relation counts of the images seen in the first epoch
        for k in REL_STATS:
            out[k] = int(sum(h.get(k, 0) for h in first))
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
