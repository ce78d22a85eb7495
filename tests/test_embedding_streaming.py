"""The per-image data path of train-embedding / embed (issue 15): same steps as the in-RAM path, bounded
memory, resumable incremental embed, DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from longtail.common import LongtailError
from longtail.embedding.dataset import ProposalImageDataset, ProposalIndex, StepBatchSampler
from longtail.embedding.sampling import sample_triplets, top_per_image
from longtail.proposals.format import write_proposals
from test_embedding import jittered_proposals, one_thread, quarter_tree, small_cfg  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def train_set(tmp_path_factory, train_coco):
    """Jittered GT proposals of 5 real sample images + a region tree for the first image."""
    root = tmp_path_factory.mktemp("stream")
    recs, images = jittered_proposals(train_coco, 5)
    props = write_proposals(root / "train", recs, images, method="gt-jitter", dataset="train.json", topk=100,
                            nms_iou=1.0)
    return props, quarter_tree(props, root / "trees")


def test_proposal_index_reads_records_per_image(train_set, tmp_path):
    import shutil

    from longtail.proposals.format import read_proposals

    props, _ = train_set
    _, recs = read_proposals(props)
    for n in (0, 2):
        idx = ProposalIndex(props, n)
        assert idx.record_ids.tolist() == top_per_image(recs, n)
        assert idx.proposals_in_file == len(recs)
        for image_id in idx.image_ids.tolist():
            pos, got = idx.records(image_id)
            want = [recs[i] for i in idx.record_ids[pos]]
            assert got == want and all(r["image_id"] == image_id for r in got)
    # a shard cut short by a killed copy is named, not read as a shorter set
    cut = tmp_path / "cut"
    shutil.copytree(props, cut)
    shard = next((cut / "shards").glob("*.jsonl"))
    text = shard.read_bytes()
    shard.write_bytes(text[:len(text) // 2])
    with pytest.raises(LongtailError, match="truncated|not JSON"):
        ProposalIndex(cut, 0)


def reference_losses(model, ts, cfg, seed, steps):
    """The in-RAM training loop as it was before the streaming path (global relations, global triplets)."""
    import geoopt

    from longtail.embedding.train import batch_losses

    images = [k for k, idx in enumerate(ts.relations.images) if len(idx)]
    B = cfg["images_per_batch"]
    spe = -(-len(images) // B)
    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    out = []
    model.train()
    for step in range(steps):
        epoch, b = divmod(step, spe)
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        batch = [images[i] for i in order[b * B:(b + 1) * B]]
        trip = sample_triplets(ts.relations, batch, np.random.default_rng([seed, 1, step]), cfg["num_negatives"])
        terms = batch_losses(model, ts, trip, cfg)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        out.append({k: float(v.detach()) for k, v in terms.items()})
    return out


def test_streaming_steps_equal_in_ram_path(params, train_set):
    """Per-image dataset + DataLoader (2 workers) gives the in-RAM path's losses, step by step, exactly."""
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.sampling import load_region_trees
    from longtail.embedding.train import build_model, make_training_set, train

    props, trees = train_set
    cfg = small_cfg(params, crop_size=16, images_per_batch=2, epochs=2, max_steps=4, hidden=[16, 8],
                    proposals_per_image=0)
    _, recs, ids, images = load_proposal_set(str(props), cfg["proposals_per_image"])
    ts = make_training_set(recs, ids, images, cfg, progress=False, trees=load_region_trees(str(trees), images))
    assert ts.relations.stats["region_tree_pairs"] >= 1
    torch.manual_seed(0)
    ref = reference_losses(build_model(cfg), ts, cfg, seed=3, steps=4)

    ds = ProposalImageDataset(ProposalIndex(props, cfg["proposals_per_image"]), cfg, trees_dir=trees, seed=3)
    assert ds.image_ids.tolist() == sorted({r["image_id"] for r in recs})
    got = []
    torch.manual_seed(0)
    summary = train(build_model(cfg), ds, cfg, seed=3, progress=False, num_workers=2,
                    on_step=lambda s, rec: got.append({k[5:]: v for k, v in rec.items() if k.startswith("loss_")}))
    assert summary["steps"] == 4
    assert got == ref                                     # bitwise: same crops, triplets and batch order


def test_max_proposals_per_step_caps_each_image(params, train_set):
    props, _ = train_set
    cfg = small_cfg(params, crop_size=16, proposals_per_image=0)
    idx = ProposalIndex(props, 0)
    ds = ProposalImageDataset(idx, cfg, max_per_image=2, seed=0)
    full = ProposalImageDataset(idx, cfg, seed=0)
    a, b, c = ds[(0, 0)], ds[(0, 0)], ds[(0, 5)]
    assert len(full[(0, 0)].record_ids) > 2
    assert len(a.record_ids) == 2 and a.crops.shape[:2] == (2, 3)
    assert a.record_ids.tolist() == b.record_ids.tolist()             # seeded by (seed, step, image)
    assert set(a.record_ids) <= set(full[(0, 0)].record_ids)
    subsets = {tuple(ds[(0, s)].record_ids.tolist()) for s in range(8)}
    assert len(subsets) > 1 and c.crops.dtype == torch.uint8          # another subset on other steps


def test_step_sampler_splits_the_global_batch_across_ranks():
    full = StepBatchSampler(10, 4, seed=1, start=0, total=6)
    r0 = list(StepBatchSampler(10, 4, seed=1, start=0, total=6, rank=0, world=2))
    r1 = list(StepBatchSampler(10, 4, seed=1, start=0, total=6, rank=1, world=2))
    for s, batch in enumerate(full):
        assert sorted(batch) == sorted(r0[s] + r1[s])                    # the global batch is kept
        assert not set(r0[s]) & set(r1[s])
    assert list(StepBatchSampler(10, 4, seed=1, start=4, total=6)) == list(full)[4:]   # resume at step 4
    epoch0 = [i for b in list(full)[:3] for i, _ in b]
    assert sorted(epoch0) == list(range(10))                          # one epoch = every image once


def test_embed_streams_in_parts_and_resumes(params, train_set, tmp_path):
    """Parts per chunk of images; a rerun keeps the finished parts (not recomputed) and gives the same arrays
    as the in-RAM crops_for_records + embed_crops path."""
    from longtail.embedding import dataset as dataset_mod
    from longtail.embedding.crops import crops_for_records
    from longtail.embedding.embed import PartsWriter, embed_proposal_set
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.train import build_model, embed_crops

    props, _ = train_set
    cfg = small_cfg(params, crop_size=16, hidden=[16, 8], proposals_per_image=6)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    idx = ProposalIndex(props, cfg["proposals_per_image"])
    out = tmp_path / "embeddings.npz"
    arrays, writer = embed_proposal_set(model, idx, cfg, out, fingerprint="a", chunk_images=2, batch_size=5,
                                        progress=False)
    parts = sorted(p.name for p in writer.dir.glob("part-*.npz"))
    assert parts == ["part-000000.npz", "part-000001.npz", "part-000002.npz"]      # 5 images, 2 per part
    _, recs, ids, images = load_proposal_set(str(props), cfg["proposals_per_image"])
    crops, valid = crops_for_records(recs, images, 16, kinds=("fg",), progress=False)
    ref = embed_crops(model, crops[:, 0], 256, progress=False)
    assert arrays["proposal_ids"].tolist() == np.asarray(ids)[valid].tolist()
    np.testing.assert_allclose(arrays["proposal_embeddings"], ref[valid], rtol=0, atol=1e-6)
    assert arrays["proposal_image_ids"].tolist() == [recs[i]["image_id"] for i in np.flatnonzero(valid)]

    # a killed run left parts 0 and 1: the rerun computes only the last chunk's images
    writer.part(2).unlink()
    seen = []
    orig = dataset_mod.ProposalImageDataset.__getitem__
    def counting(self, key):
        seen.append(key)
        return orig(self, key)
    dataset_mod.ProposalImageDataset.__getitem__ = counting
    try:
        again, _ = embed_proposal_set(model, idx, cfg, out, fingerprint="a", chunk_images=2, batch_size=5,
                                      progress=False)
        assert seen == [4]
        seen.clear()
        other, w2 = embed_proposal_set(model, idx, cfg, out, fingerprint="b", chunk_images=2, batch_size=5,
                                       progress=False)
        assert seen == [0, 1, 2, 3, 4]                                  # other fingerprint: parts discarded
    finally:
        dataset_mod.ProposalImageDataset.__getitem__ = orig
    for k in arrays:
        np.testing.assert_array_equal(again[k], arrays[k])
        np.testing.assert_array_equal(other[k], arrays[k])
    w2.finish(other)
    assert out.exists() and not w2.dir.exists()
    with np.load(out) as z:
        np.testing.assert_array_equal(z["proposal_ids"], arrays["proposal_ids"])


def _ddp_worker(rank, world, port, cfg, props, seed, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from longtail.embedding.train import build_model, init_distributed, train

    r, w, device = init_distributed(0)
    assert (r, w, device.type) == (rank, world, "cpu")
    torch.manual_seed(0)
    model = build_model(cfg)
    ds = ProposalImageDataset(ProposalIndex(props, cfg["proposals_per_image"]), cfg, seed=seed)
    losses = []
    train(model, ds, cfg, seed=seed, checkpoint=f"{result}.ckpt", progress=False,
          on_step=lambda s, rec: losses.append(rec["loss_total"]))
    if rank == 0:
        torch.save({"losses": losses, "model": model.state_dict()}, result)
    import torch.distributed as dist

    dist.destroy_process_group()


def split_emulation(model, ds, cfg, seed, world):
    """One process doing what W DDP ranks do: each rank's share of the step's images (StepBatchSampler), its own
    triplets (collate_images) and BatchNorm statistics, the gradient of the mean of the ranks' losses."""
    import geoopt

    from longtail.embedding.dataset import collate_images, steps_per_epoch
    from longtail.embedding.train import step_losses

    opt = geoopt.optim.RiemannianAdam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = min(steps_per_epoch(len(ds), cfg["images_per_batch"]) * cfg["epochs"], cfg["max_steps"])
    samplers = [iter(StepBatchSampler(len(ds), cfg["images_per_batch"], seed, 0, total, r, world))
                for r in range(world)]
    model.train()
    out = []
    for _ in range(total):
        parts = []
        for sampler in samplers:
            items = []
            for key in next(sampler):
                it = ds[key]
                it.step = key[1]
                items.append(it)
            b = collate_images(items, seed=seed, num_negatives=cfg["num_negatives"])
            parts.append(step_losses(model, b.crops, b.triplets, cfg)["total"])
        loss = sum(parts) / world
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


@pytest.mark.slow
def test_embed_holds_no_crops_while_a_chunk_fills(params, train_set, tmp_path, monkeypatch):
    """A part is written when its last image is embedded; until then only the finished images' ids, scores and
    embeddings wait, not their crops (500 images of 224 px crops would be GBs): when the one chunk of all 5
    images is written, only the current image's crops are alive."""
    import weakref

    from longtail.embedding import embed as embed_mod
    from longtail.embedding.train import build_model

    props, _ = train_set
    cfg = small_cfg(params, crop_size=16, hidden=[16, 8], proposals_per_image=6)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    refs, alive_at_write = [], []
    embed_items = embed_mod.embed_items

    def tracking(m, items):
        refs.extend(weakref.ref(it.crops) for it in items)
        return embed_items(m, items)

    write = embed_mod.PartsWriter.write

    def counting(self, k, arrays):
        alive_at_write.append(sum(r() is not None for r in refs))
        return write(self, k, arrays)

    monkeypatch.setattr(embed_mod, "embed_items", tracking)
    monkeypatch.setattr(embed_mod.PartsWriter, "write", counting)
    arrays, _ = embed_mod.embed_proposal_set(model, ProposalIndex(props, 6), cfg, tmp_path / "e.npz",
                                             fingerprint="a", chunk_images=5, batch_size=1, progress=False)
    assert len(refs) == 5 and alive_at_write == [1] and len(arrays["proposal_ids"]) > 5


def test_ddp_two_processes_gloo_match_one_process(params, train_set, tmp_path):
    """torchrun-style 2-rank gloo world: each rank takes every 2nd image of the step's global batch of 4 (5 images:
    the last step's single image is repeated so that no rank is idle). Its losses equal, to 1e-6, one process
    computing the same split (the mean of the two halves' losses, each with its own triplets and BatchNorm
    statistics); rank 0 alone writes the checkpoint, with the trained weights."""
    import socket

    import torch.multiprocessing as mp

    from longtail.embedding.train import build_model, train

    props, _ = train_set
    cfg = small_cfg(params, crop_size=16, images_per_batch=4, epochs=3, max_steps=3, hidden=[16, 8],
                    proposals_per_image=6, checkpoint_every=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, cfg, props, 5, str(result)), nprocs=2, join=True)
    ddp = torch.load(result, weights_only=False)
    ckpt = torch.load(f"{result}.ckpt", weights_only=False)
    assert ckpt["step"] == 3 and len(ddp["losses"]) == 3
    assert all(torch.equal(ckpt["model"][k], ddp["model"][k]) for k in ddp["model"])
    ds = ProposalImageDataset(ProposalIndex(props, 6), cfg, seed=5)
    torch.manual_seed(0)
    emulated = split_emulation(build_model(cfg), ds, cfg, 5, 2)
    np.testing.assert_allclose(ddp["losses"], emulated, rtol=1e-6)
    torch.manual_seed(0)
    single = []
    train(build_model(cfg), ds, cfg, seed=5, progress=False, on_step=lambda s, rec: single.append(rec["loss_total"]))
    # the 1-process run (one batch of 4 images, triplets among all 4) is another sample of the same loss
    print("loss_total 1 process:", single, "2 ranks:", ddp["losses"])
    assert ddp["losses"] != single and 0.25 < ddp["losses"][0] / single[0] < 4
