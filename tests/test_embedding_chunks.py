"""Savings of train-embedding / embed CPU that must change no number (issue 17: make run on 2 cores).

* The frozen backbone runs on the CPU in chunks of CPU_CHUNK..2*CPU_CHUNK-1 crops (model.py's CPU_CHUNK): the
  same bits as one big batch, so the trained model and the embeddings of the chunked path equal the unchunked
  ones exactly (real crops of the sample, the default EfficientNet-Lite1 at 96 px).
* The PCA head init reads only the fg crops of an image (``fg_crops``).
* The streaming dataset hands out an uncapped training item again in later epochs (its memo) instead of
  cutting its crops and building its relations again.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import longtail.embedding.model as model_mod
from longtail.proposals.format import write_proposals
from test_embedding import jittered_proposals, one_thread, quarter_tree, small_cfg  # noqa: F401 (one_thread: autouse)


@pytest.fixture(scope="module")
def lite_props(tmp_path_factory, params, train_coco):
    """The default backbone (EfficientNet-Lite1, frozen, 96 px, pca head) and jittered GT proposals of 8 sample
    training images (> 2 * CPU_CHUNK fg crops, so that the PCA pass and a 4-image step are chunked)."""
    emb = params["embedding"]
    recs, images = jittered_proposals(train_coco, 8)
    props = write_proposals(tmp_path_factory.mktemp("chunks") / "train", recs, images, method="gt-jitter",
                            dataset="train.json", topk=100, nms_iou=1.0)
    cfg = small_cfg(params, backbone=emb["backbone"], frozen_stages=emb["frozen_stages"], crop_size=emb["crop_size"],
                    head_init="pca", images_per_batch=4, epochs=1, max_steps=2)
    return cfg, props


@pytest.fixture(scope="module")
def lite_set(lite_props):
    """The in-RAM training set of ``lite_props``."""
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.train import make_training_set

    cfg, props = lite_props
    _, recs, ids, images = load_proposal_set(str(props), cfg["proposals_per_image"])
    return cfg, make_training_set(recs, ids, images, cfg, progress=False)


def test_fg_crops_of_the_pca_pass_equal_the_items_fg_crops(lite_props, lite_set):
    """The PCA head init reads only the fg crops of an image (``fg_crops``: no full/bg crops, no relations or
    region tree): the same bytes as the training item's fg crops, image by image, streaming and in RAM."""
    from longtail.embedding.dataset import training_dataset
    from longtail.embedding.train import InMemoryImages

    cfg, props = lite_props
    ds = training_dataset(props, {**cfg, "max_proposals_per_step": 0}, seed=0)
    ram = InMemoryImages(lite_set[1])
    assert len(ds) == len(ram) == 8
    for i in range(len(ds)):
        want = ds[i].crops[:, 1]
        assert want.shape[0] > 0 and torch.equal(ds.fg_crops(i), want), i
        assert torch.equal(ram.fg_crops(i), want), i


def test_chunked_backbone_equals_one_batch(lite_set):
    from longtail.embedding.crops import to_input
    from longtail.embedding.train import build_model

    cfg, ts = lite_set
    C = model_mod.CPU_CHUNK
    x = to_input(torch.as_tensor(ts.crops).flatten(0, 1))               # full, fg, bg crops of real proposals
    x = x[:150]                                       # 4 chunks of the default CPU_CHUNK (32), the last one longer
    model = build_model(cfg).eval()
    assert model.backbone_frozen
    with torch.no_grad():
        whole = model.backbone(x)
    chunked = model.frozen_backbone(x)
    assert chunked.shape == whole.shape and torch.equal(chunked, whole)
    # small batches run whole (a batch below 2 * CPU_CHUNK is computed as it came)
    with torch.no_grad():
        assert torch.equal(model.frozen_backbone(x[:C + 1]), model.backbone(x[:C + 1]))


def test_trained_model_and_embeddings_equal_unchunked(lite_set, monkeypatch):
    """train (pca head init + 2 steps) and embed_crops with chunks == with CPU_CHUNK so large that nothing is
    chunked (the code before chunking): every tensor of the state dict and every embedding bit-identical."""
    from longtail.embedding.train import build_model, embed_crops, train

    cfg, ts = lite_set

    def run():
        torch.manual_seed(0)
        model = build_model(cfg)
        sizes = []
        model.backbone.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
        summary = train(model, ts, cfg, seed=0, progress=False)
        z = embed_crops(model, ts.crops[:, 1], batch_size=256, progress=False)
        return model.state_dict(), z, summary, sizes

    sd, z, summary, sizes = run()
    assert summary["steps"] == 2 and summary["head_init_crops"] == len(ts.crops) > 2 * model_mod.CPU_CHUNK
    assert max(sizes) < 2 * model_mod.CPU_CHUNK and min(sizes) >= 16, sizes      # chunked (>= 16: same bits)
    monkeypatch.setattr(model_mod, "CPU_CHUNK", 10 ** 6)
    sd_ref, z_ref, _, sizes_ref = run()
    assert max(sizes_ref) > 2 * 32, sizes_ref                                   # the reference was not chunked
    assert sd.keys() == sd_ref.keys()
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd), [k for k in sd if not torch.equal(sd[k], sd_ref[k])]
    assert np.array_equal(z, z_ref)


def _same_item(a, b) -> bool:
    return (a.image_id == b.image_id and np.array_equal(a.record_ids, b.record_ids) and torch.equal(a.crops, b.crops)
            and a.tree_pairs == b.tree_pairs and a.empty == b.empty and all(
                len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
                for x, y in ((a.positives, b.positives), (a.negatives, b.negatives), (a.children, b.children))))


def test_item_memo_gives_the_fresh_items_and_skips_capped_ones(lite_props, tmp_path):
    """Later epochs get the memoised item of an uncapped image: equal to a fresh dataset's (crops, relations incl.
    the region-tree pair); an image capped by max_proposals_per_step gets a fresh subset every step, never a memo."""
    from longtail.embedding.dataset import training_dataset

    cfg, props = lite_props
    cfg = {**cfg, "crop_size": 16}
    trees = quarter_tree(props, tmp_path / "trees")
    ds = training_dataset(props, cfg, trees_dir=trees, seed=0)
    assert ds.max_per_image > 0
    for step in (0, 1, 7):
        for i in range(len(ds)):
            fresh = training_dataset(props, cfg, trees_dir=trees, seed=0)[(i, step)]
            assert _same_item(ds[(i, step)], fresh), (i, step)
    assert len(ds._memo) == len(ds) and sum(it.tree_pairs for it in ds._memo.values()) >= 1
    capped = training_dataset(props, {**cfg, "max_proposals_per_step": 8}, trees_dir=trees, seed=0)  # 2 an image
    assert capped.max_per_image == 2
    for i in range(len(capped)):
        for step in (0, 1, 2):
            fresh = training_dataset(props, {**cfg, "max_proposals_per_step": 8}, trees_dir=trees, seed=0)
            assert _same_item(capped[(i, step)], fresh[(i, step)]), (i, step)
    assert {tuple(capped[(0, s)].record_ids) for s in range(6)} != {tuple(capped[(0, 0)].record_ids)}


def test_no_item_memo_in_dataloader_workers(lite_props):
    """A DataLoader worker is started anew every epoch: the items it reads are not kept (its memo would only cost
    up to ITEM_MEMO_BYTES a worker); read in the main process, they are."""
    from longtail.embedding.dataset import training_dataset

    cfg, props = lite_props
    cfg = {**cfg, "crop_size": 16}
    ds = training_dataset(props, cfg, seed=0)
    probe = torch.utils.data.DataLoader(_MemoSize(ds), batch_size=None, num_workers=1, sampler=range(len(ds)))
    assert list(probe) == [0] * len(ds)            # inside the worker: nothing kept
    ds[(0, 0)]
    assert len(ds._memo) == 1                        # main process: kept


class _MemoSize(torch.utils.data.Dataset):
    """Reads item i in the worker, then reports the size of that worker's memo."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.ds[(i, 0)]
        return len(self.ds._memo)
