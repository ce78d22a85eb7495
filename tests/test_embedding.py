"""Embedding stage (Weng et al. 2021, 3.2, 4.1): sampling, losses, boundary safety, training, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from longtail.common import LongtailError
from longtail.common.masks import decode_mask, encode_mask, to_rle
from longtail.embedding.crops import mask_crops
from longtail.embedding.embed import select_anchors
from longtail.embedding.losses import loss_hierarchical, loss_mask, loss_object, total_loss
from longtail.embedding.model import EmbeddingNet, Space
from longtail.embedding.sampling import build_relations, sample_triplets, top_per_image
from longtail.proposals.format import make_record, read_proposals, write_proposals

ALPHA = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Like embedding.threads: 1 (OpenMP threads on busy shared cores are many times slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- helpers ---------------------------------------------------------------------------------------------

def box_mask(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def jittered_proposals(coco: dict, n_images: int) -> tuple[list[dict], list[dict]]:
    """GT masks of the first images as proposals + a shifted copy (IoU > 0.4: object positive) + the
    upper-left quarter (inside the mask, ~1/4 of its area: hierarchical child) of each."""
    images = sorted(coco["images"], key=lambda im: im["id"])[:n_images]
    recs = []
    for im in images:
        for a in coco["annotations"]:
            if a["image_id"] != im["id"] or a.get("iscrowd"):
                continue
            m = decode_mask(to_rle(a["segmentation"], im["height"], im["width"]))
            if m.sum() < 100:
                continue
            recs.append(make_record(im["id"], m, 1.0))
            recs.append(make_record(im["id"], np.roll(m, (2, 3), axis=(0, 1)), 0.9))
            ys, xs = np.nonzero(m)
            part = m & (np.arange(m.shape[0])[:, None] < np.median(ys)) & (np.arange(m.shape[1])[None] < np.median(xs))
            if part.sum() > 10:
                recs.append(make_record(im["id"], part, 0.5))
    return recs, images


@pytest.fixture(scope="module")
def sample_sets(tmp_path_factory, train_coco, val_coco):
    """Proposal sets in the shared format built from the real prepared sample (train: 4 images, val: 3)."""
    root = tmp_path_factory.mktemp("emb_props")
    out = {}
    for split, coco, n in (("train", train_coco, 4), ("val", val_coco, 3)):
        recs, images = jittered_proposals(coco, n)
        out[split] = write_proposals(root / split, recs, images, method="gt-jitter", dataset=f"{split}.json",
                                     topk=100, nms_iou=1.0)
    return out


def small_cfg(params, **kw) -> dict:
    # training mechanics on tiny crops: the paper's ResNet-18 (the EfficientNet-Lite default needs >= 32 px),
    # torch's default init of the FC layers (head_init: pca is tested on its own and in the resume test)
    cfg = {**params["embedding"], "backbone": "resnet18", "frozen_stages": -1, "head_init": "random"}
    cfg.update(kw)
    return cfg


# --- sampling --------------------------------------------------------------------------------------------

def test_relations_and_triplets_on_hand_built_masks():
    H = W = 100
    masks = [
        box_mask(H, W, 10, 10, 50, 50),   # 0 A: anchor
        box_mask(H, W, 12, 14, 52, 54),   # 1 A': IoU(A, A') = 1296/1904 = 0.68 -> positive
        box_mask(H, W, 15, 15, 25, 25),   # 2 C: inside A, 100/1600 of its area -> child of A and A'
        box_mask(H, W, 60, 60, 90, 90),   # 3 D: disjoint -> negative
        box_mask(H, W, 40, 40, 70, 70),   # 4 E: IoU(A, E) = 100/2400 -> neither positive nor negative
        box_mask(H, W, 30, 30, 31, 32),   # 5 speck inside A: area ratio 2/1600 < 0.01 -> not a child
        box_mask(H, W, 0, 0, 30, 30),     # 6 other image
        box_mask(H, W, 50, 50, 80, 80),   # 7 other image
    ]
    rles = [encode_mask(m) for m in masks]
    image_ids = [1, 1, 1, 1, 1, 1, 2, 2]
    rel = build_relations(rles, image_ids, pos_iou=0.4, neg_max_iou=0.0, child_containment=0.9,
                          child_max_area_ratio=0.5, child_min_area_ratio=0.01)
    assert rel.positives[0].tolist() == [1] and rel.positives[1].tolist() == [0]
    assert rel.positives[2].tolist() == [] and rel.positives[3].tolist() == []
    assert rel.negatives[0].tolist() == [3]              # E, C, the speck overlap A; other image not here
    assert sorted(rel.negatives[3].tolist()) == [0, 1, 2, 5]
    assert rel.children[0].tolist() == [2] and rel.children[1].tolist() == [2]
    assert rel.children[3].tolist() == [] and rel.children[2].tolist() == []   # the speck is not inside C
    assert rel.negatives[6].tolist() == [7] and rel.positives[6].tolist() == []
    assert rel.stats["anchors_with_positive"] == 2 and rel.stats["num_images"] == 2

    seen_neg = set()
    for seed in range(30):
        trip = sample_triplets(rel, [0, 1], np.random.default_rng(seed), num_negatives=3)
        assert sorted(trip.proposals.tolist()) == list(range(8))
        assert trip.anchors.tolist() == [0, 1] and trip.positives.tolist() == [1, 0]
        assert trip.negatives.shape == (2, 3)
        for a, negs in zip(trip.anchors, trip.negatives):
            # non-overlapping same-image proposal D or any proposal of the other image
            assert set(negs.tolist()) <= {3, 6, 7}
            assert len(set(negs.tolist())) == 3              # 3 candidates: drawn without replacement
            seen_neg |= set(negs.tolist())
        assert dict(zip(trip.parents.tolist(), trip.children.tolist())) == {0: 2, 1: 2}
    assert seen_neg == {3, 6, 7}
    # a batch of image 1 alone: only D is a negative candidate -> drawn with replacement
    trip = sample_triplets(rel, [0], np.random.default_rng(0), num_negatives=3)
    assert trip.negatives.tolist() == [[3, 3, 3], [3, 3, 3]]


def test_top_per_image_and_empty_masks():
    recs = [{"image_id": 1, "score": s} for s in (0.9, 0.1, 0.5)] + [{"image_id": 2, "score": 0.3}]
    assert top_per_image(recs, 2) == [0, 2, 3]
    assert top_per_image(recs, 0) == [0, 1, 2, 3]
    # an empty mask is excluded from every relation
    m = box_mask(20, 20, 0, 0, 10, 10)
    rles = [encode_mask(m), encode_mask(np.zeros((20, 20), bool)), encode_mask(m)]
    rel = build_relations(rles, [1, 1, 1], valid=np.array([True, False, True]))
    assert rel.positives[0].tolist() == [2] and rel.negatives[0].tolist() == []
    assert rel.stats["num_proposals"] == 2


def test_crops_full_fg_bg():
    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 0] = 200
    mask = box_mask(40, 60, 10, 20, 30, 40)
    mask[10:20, 20:30] = False                            # mask = box minus its top-left quarter
    c = mask_crops(img, mask, 16)
    assert c.shape == (3, 3, 16, 16)
    full, fg, bg = c
    assert (full[0] == 200).all()
    # fg: image inside the mask, ImageNet mean colour (124) outside; bg the opposite
    assert fg[0, 12:, 12:].min() == 200 and fg[0, :6, :6].max() == 124
    assert bg[0, :6, :6].min() == 200 and bg[0, 12:, 12:].max() == 124
    assert mask_crops(img, np.zeros((40, 60), bool), 16) is None


# --- losses ----------------------------------------------------------------------------------------------

def poincare_dist(x, y):
    """Eq. 2, independent numpy version."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return np.arccosh(1 + 2 * np.sum((x - y) ** 2) / ((1 - x @ x) * (1 - y @ y)))


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_losses_match_hand_computed_values():
    sp = Space("poincare", 1.0)
    o, a, b = [0.0, 0.0], [0.5, 0.0], [0.0, 0.6]
    # Eq. 1: full = a, fg = o (close to full?), bg = b
    expect = max(0.0, ALPHA - poincare_dist(a, b) + poincare_dist(a, o))
    assert float(loss_mask(sp, t(a), t(o), t(b), ALPHA)) == pytest.approx(expect, abs=1e-9)
    assert poincare_dist(a, o) == pytest.approx(2 * math.atanh(0.5))
    # Eq. 1 violated: bg closer than fg
    far = [-0.9, 0.0]
    expect = ALPHA - poincare_dist(a, [0.45, 0.0]) + poincare_dist(a, far)
    assert float(loss_mask(sp, t(a), t(far), t([0.45, 0.0]), ALPHA)) == pytest.approx(expect, abs=1e-9)
    # Eq. 3 (standard sign): positive near, negatives far -> 0; swapped -> alpha + d(a,p) - d(a,n), averaged
    anchor, pos, negs = t(a), t([0.45, 0.05]), torch.tensor([[[-0.7, 0.0], [0.0, -0.8], [0.5, 0.1]]],
                                                            dtype=torch.float64)
    terms = [max(0.0, ALPHA + poincare_dist(a, [0.45, 0.05]) - poincare_dist(a, n)) for n in negs[0].tolist()]
    assert terms[0] == 0 and terms[2] > 0
    assert float(loss_object(sp, anchor, pos, negs, ALPHA)) == pytest.approx(np.mean(terms), abs=1e-9)
    # Eq. 4: child farther from the origin than its parent by alpha -> 0, else the gap
    assert float(loss_hierarchical(sp, t([0.1, 0.0]), t([0.0, 0.5]), ALPHA)) == 0.0
    expect = ALPHA - 2 * math.atanh(0.1) + 2 * math.atanh(0.5)
    assert float(loss_hierarchical(sp, t([0.0, 0.5]), t([0.1, 0.0]), ALPHA)) == pytest.approx(expect, abs=1e-9)
    # Eq. 5 weights and term removal
    terms = {"mask": torch.tensor(1.0), "object": torch.tensor(2.0), "hierarchical": torch.tensor(3.0)}
    assert float(total_loss(terms, 0.2, 0.3)) == pytest.approx(0.2 + 0.6 + 3.0)
    assert float(total_loss(terms, 0.2, 0.3, ("object",))) == pytest.approx(0.6)
    # Euclidean ablation: plain norms
    eu = Space("euclidean")
    expect = ALPHA - 0.5 + np.hypot(0.5, 0.6)
    assert float(loss_mask(eu, t([0.0, 0.6]), t([0.5, 0.0]), t([0.0, 0.1]), ALPHA)) == pytest.approx(expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_finite_at_ball_boundary(dtype):
    """Points at norm 1 - 1e-7: losses and gradients finite (no NaN / inf)."""
    sp = Space("poincare", 1.0)
    g = torch.Generator().manual_seed(0)
    def boundary(*shape):
        v = torch.randn(*shape, 2, generator=g, dtype=torch.float64)
        v = v / v.norm(dim=-1, keepdim=True) * (1 - 1e-7)
        return v.to(dtype).requires_grad_(True)
    full, fg, bg, pos, child = (boundary(8) for _ in range(5))
    neg = boundary(8, 3)
    same = fg.detach().clone().requires_grad_(True)          # identical points: d = 0, gradient of a norm at 0
    terms = {"mask": loss_mask(sp, full, fg, bg, ALPHA), "object": loss_object(sp, fg, pos, neg, ALPHA),
             "hierarchical": loss_hierarchical(sp, fg, child, ALPHA)}
    total = total_loss(terms, 0.2, 0.2) + loss_mask(sp, same, same, bg, ALPHA)
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(v) for v in terms.values())
    for x in (full, fg, bg, pos, child, neg, same):
        assert x.grad is not None and torch.isfinite(x.grad).all()
    # distances stay finite and large (projected just inside the ball)
    assert 5 < float(sp.dist0(sp.project(full.detach().double())).min()) < 30


def test_network_outputs_inside_ball_and_finite_gradients_when_saturated():
    torch.manual_seed(0)
    net = EmbeddingNet(dim=2, max_tangent_norm=0.0)
    with torch.no_grad():
        net.head[-1].weight.mul_(1e4)                     # tangent vectors of huge norm -> tanh saturates
    x = torch.randn(6, 3, 32, 32)
    z = net(x)
    assert z.dtype == torch.float64 and z.shape == (6, 2)
    assert (z.norm(dim=-1) < 1).all() and (z.norm(dim=-1) > 0.99).all()
    loss = loss_mask(net.space, z[:2], z[2:4], z[4:], ALPHA) + loss_hierarchical(net.space, z[:3], z[3:], ALPHA)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    # clipping bounds the distance to the origin by 2 * max_tangent_norm
    net.max_tangent_norm = 1.5
    d0 = net.space.dist0(net(x))
    assert float(d0.max().detach()) == pytest.approx(3.0, abs=1e-6)


# --- training on the real sample -------------------------------------------------------------------------

def make_set(params, sets, split="train", **kw):
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.train import make_training_set

    cfg = small_cfg(params, **kw)
    _, recs, ids, images = load_proposal_set(str(sets[split]), cfg["proposals_per_image"])
    return cfg, make_training_set(recs, ids, images, cfg, progress=False)


def fixed_batch_loss(model, ts, cfg, seed=123) -> dict:
    from longtail.embedding.train import batch_losses

    trip = sample_triplets(ts.relations, list(range(len(ts.relations.images))), np.random.default_rng(seed))
    with torch.no_grad():
        return {k: float(v) for k, v in batch_losses(model, ts, trip, cfg).items()}


def test_losses_decrease_on_real_sample(params, sample_sets):
    from longtail.embedding.train import build_model, train

    cfg, ts = make_set(params, sample_sets, crop_size=32, images_per_batch=4, epochs=12, max_steps=0, lr=1e-3)
    rel = ts.relations.stats
    assert rel["anchors_with_positive"] > 0 and rel["anchors_with_child"] > 0
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    before = fixed_batch_loss(model, ts, cfg)
    summary = train(model, ts, cfg, seed=0, progress=False)
    model.train()
    after = fixed_batch_loss(model, ts, cfg)
    assert summary["steps"] == 12
    print("fixed-batch losses before/after 12 steps:", before, after)
    assert after["total"] < 0.7 * before["total"], (before, after)
    assert after["mask"] < before["mask"] and after["object"] < before["object"]
    assert summary["last_epoch_loss_total"] < summary["first_epoch_loss_total"]


@pytest.mark.parametrize("space", ["poincare", "euclidean"])
def test_pca_head_init_maps_crops_to_their_principal_components(params, sample_sets, space):
    """head_init: pca (the feature-preserving init, issue 17): the untrained network's tangent vectors of the
    training fg crops are their top principal components (numpy SVD of the same features), RMS norm
    head_init_norm, through two ReLU layers."""
    from longtail.embedding.crops import to_input
    from longtail.embedding.train import InMemoryImages, build_model, init_head

    cfg, ts = make_set(params, sample_sets, crop_size=32, hidden=[16, 8], dim=5, space=space, head_init="pca",
                       head_init_images=0, head_init_norm=1.5, max_tangent_norm=0.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    info = init_head(model, InMemoryImages(ts), cfg, seed=0)
    assert info["head_init_crops"] == len(ts.crops) and info["head_init_components"] == 4   # 8 // 2 < dim
    model.eval()
    with torch.no_grad():
        x = to_input(torch.as_tensor(ts.crops[:, 1]))
        f = model.head_input(x).double().numpy()
        v = model.tangent(x).numpy()
    fc = f - f.mean(0)
    proj = fc @ np.linalg.svd(fc, full_matrices=False)[2][:4].T
    for j in range(4):                                     # each output = +-s * component j (the sign is free)
        assert abs(np.corrcoef(v[:, j], proj[:, j])[0, 1]) > 0.999, j
    assert np.allclose(v[:, 4], 0.0)                       # beyond what the hidden layers carry: 0 at the start
    assert np.sqrt((v ** 2).sum(1).mean()) == pytest.approx(1.5, rel=0.02)
    # the Poincare points of the untrained network are the components mapped into the ball
    z = model(x).detach()
    assert torch.allclose(z, model.space.expmap0(torch.as_tensor(v)), atol=1e-9)


def test_checkpoint_resume_equals_uninterrupted_run(params, sample_sets, tmp_path):
    from longtail.embedding.train import build_model, train

    cfg, ts = make_set(params, sample_sets, crop_size=16, images_per_batch=2, epochs=2, max_steps=0,
                       checkpoint_every=1, proposals_per_image=6, hidden=[16, 8], head_init="pca")
    def fresh():
        torch.manual_seed(0)
        return build_model(cfg)
    full = train(fresh(), ts, cfg, seed=0, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    train(fresh(), ts, {**cfg, "max_steps": 2}, seed=0, checkpoint=ckpt, progress=False)
    assert torch.load(ckpt, weights_only=False)["step"] == 2
    # same config (max_steps is part of the fingerprint, so resume with the full config's checkpoint)
    state = torch.load(ckpt, weights_only=False)
    from longtail.embedding.train import fingerprint
    state["fingerprint"] = fingerprint(cfg, ts, 0)
    torch.save(state, ckpt)
    ran = []
    resumed = train(fresh(), ts, cfg, seed=0, checkpoint=ckpt, progress=False, on_step=lambda s, r: ran.append(s))
    assert ran == [2, 3]                                   # only the missing steps were run
    assert resumed["steps"] == full["steps"] == 4
    assert resumed["last_epoch_loss_total"] == pytest.approx(full["last_epoch_loss_total"], rel=1e-5)
    # another configuration's checkpoint is not resumed
    ran.clear()
    train(fresh(), ts, {**cfg, "alpha": 0.5}, seed=0, checkpoint=ckpt, progress=False,
          on_step=lambda s, r: ran.append(s))
    assert ran == [0, 1, 2, 3]


# --- anchors and CLI -------------------------------------------------------------------------------------

def test_select_anchors_on_train_split(train_coco):
    anns, missing = select_anchors(train_coco, 3, seed=0, min_area=64)
    eligible = {}
    for a in train_coco["annotations"]:
        if not a.get("iscrowd") and a["area"] >= 64:
            eligible[a["category_id"]] = eligible.get(a["category_id"], 0) + 1
    per_cat = {}
    for a in anns:
        per_cat[a["category_id"]] = per_cat.get(a["category_id"], 0) + 1
    assert per_cat == {c: min(3, n) for c, n in eligible.items()}
    assert sorted(missing) == sorted(c["id"] for c in train_coco["categories"] if c["id"] not in eligible)
    again, _ = select_anchors(train_coco, 3, seed=0, min_area=64)
    assert [a["id"] for a in again] == [a["id"] for a in anns]
    with pytest.raises(LongtailError, match="annotations"):
        select_anchors({"images": []}, 3, seed=0)



def quarter_tree(proposal_set, trees):
    """A region-tree folder for the first image of a jittered-GT proposal set: leaves = its quarter proposal, the
    rest of its GT mask, background (so the tree's parent/child pair is that quarter inside the GT mask)."""
    from longtail.hierarchy.tree import RegionTree

    recs = read_proposals(proposal_set)[1]
    gt_mask, quarter = decode_mask(recs[0]["segmentation"]), None
    for r in recs[1:]:
        m = decode_mask(r["segmentation"])
        if r["image_id"] == recs[0]["image_id"] and r["score"] == 0.5 and (m & gt_mask).sum() == m.sum():
            quarter = m
            break
    assert quarter is not None
    leaves = np.full(gt_mask.shape, 2, np.int32)
    leaves[gt_mask], leaves[quarter] = 1, 0
    trees.mkdir()
    RegionTree(np.array([3, 3, 4, 4, 4]), np.array([0, 0, 0, 1.0, 2.0]), leaves).save(trees / "a.npz")
    (trees / "index.json").write_text(json.dumps({"images": [{"image_id": recs[0]["image_id"], "tree": "a.npz"}]}))
    return trees

def test_cli_train_and_embed(params, sample_sets, train_coco, tmp_path):
    from longtail.cli import main

    trees = quarter_tree(sample_sets["train"], tmp_path / "trees")

    out = tmp_path / "gt" / "poincare"
    sets = ["--set", "embedding.max_steps=2", "--set", "embedding.crop_size=16", "--set", "embedding.epochs=2",
            "--set", "embedding.backbone=resnet18", "--set", "embedding.frozen_stages=-1"]
    assert main(["train-embedding", "--proposals", str(sample_sets["train"]), "--variant", "poincare",
                 "--out-dir", str(out), "--region-trees", str(trees), *sets]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 and m["num_images"] == 4 and not (out / "checkpoint.pt").exists()
    assert m["region_tree_pairs"] >= 1                     # (GT mask, its quarter), possibly the shifted copy
    anchors = tmp_path / "train.json"
    anchors.write_text(json.dumps(train_coco))
    npz = out / "embeddings.npz"
    assert main(["embed", "--model", str(out / "model.pt"), "--proposals", str(sample_sets["val"]),
                 "--anchors", str(anchors), "--out", str(npz), "--metrics", str(out / "embed_metrics.json"),
                 "--set", "embedding.anchors_per_category=2"]) == 0
    z = np.load(npz)
    recs = read_proposals(sample_sets["val"])[1]
    ids = top_per_image(recs, params["embedding"]["proposals_per_image"])   # the top 50 of each image
    n = len(ids)
    assert len(recs) > n > 0
    assert z["proposal_embeddings"].shape == (n, params["embedding"]["dim"]) and z["proposal_embeddings"].dtype == np.float32
    assert z["proposal_ids"].tolist() == ids
    assert z["proposal_image_ids"].tolist() == [recs[i]["image_id"] for i in ids]
    assert np.allclose(z["proposal_scores"], [recs[i]["score"] for i in ids])
    anns, missing = select_anchors(train_coco, 2, seed=params["seed"], min_area=params["embedding"]["anchor_min_area"])
    assert z["anchor_ann_ids"].tolist() == [a["id"] for a in anns]
    assert z["anchor_category_ids"].tolist() == [a["category_id"] for a in anns]
    assert str(z["space"]) == "poincare" and float(z["curvature"]) == 1.0
    for key in ("proposal_embeddings", "anchor_embeddings"):
        assert np.isfinite(z[key]).all() and (np.linalg.norm(z[key], axis=1) < 1).all()
    em = json.loads((out / "embed_metrics.json").read_text())
    assert em["num_proposals"] == n and em["categories_without_anchor"] == len(missing)


def test_cli_bad_input(sample_sets, tmp_path, capsys):
    from longtail.cli import main

    assert main(["train-embedding", "--proposals", str(sample_sets["train"]), "--variant", "nope",
                 "--out-dir", str(tmp_path / "x")]) == 2
    assert "embedding.variants" in capsys.readouterr().err
    empty = write_proposals(tmp_path / "empty", [], [], method="gt", dataset="x.json", topk=1, nms_iou=1.0)
    assert main(["train-embedding", "--proposals", str(empty), "--out-dir", str(tmp_path / "y")]) == 2
    assert "no proposals" in capsys.readouterr().err
    assert main(["embed", "--model", str(tmp_path / "missing.pt"), "--proposals", str(sample_sets["val"]),
                 "--anchors", "x.json", "--out", str(tmp_path / "e.npz"), "--metrics", str(tmp_path / "m.json")]) == 2
    assert "train-embedding" in capsys.readouterr().err


@pytest.mark.slow
def test_train_embedding_logs_to_mlflow(sample_sets, tmp_path, monkeypatch):
    """Params, per-step loss curves and the metrics file's numbers reach MLflow (tmp sqlite store)."""
    from mlflow.tracking import MlflowClient

    from longtail.cli import main
    from longtail.common import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("LONGTAIL_MLFLOW", "1")
    monkeypatch.delenv("LONGTAIL_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr(tracking, "EXPERIMENT", "test-emb")
    out = tmp_path / "emb"
    assert main(["train-embedding", "--proposals", str(sample_sets["train"]), "--variant", "euclidean",
                 "--out-dir", str(out), "--set", "embedding.max_steps=2", "--set", "embedding.crop_size=16",
                 "--set", "embedding.images_per_batch=2", "--set", "embedding.backbone=resnet18"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-emb")
    runs = client.search_runs([exp.experiment_id], "tags.`longtail.stage` = 'train-embedding'")
    assert len(runs) == 1
    run = runs[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["steps"] == metrics["steps"] == 2
    assert run.data.metrics["anchors_with_positive"] == metrics["anchors_with_positive"]
    assert run.data.params["space"] == "euclidean" and run.data.params["variant"] == "euclidean"
    assert run.data.tags["longtail.variant"] == "euclidean" and "mlflow.parentRunId" in run.data.tags
    curve = client.get_metric_history(run.info.run_id, "loss_total")
    assert [m.step for m in curve] == [0, 1]


def test_region_tree_pairs_on_hand_built_tree():
    """Quadrant leaves 0-3 (TL, TR, BL, BR), node 4 = top half, 5 = bottom half, 6 = root."""
    from longtail.embedding.sampling import region_tree_pairs
    from longtail.hierarchy.tree import RegionTree

    H = W = 20
    leaves = np.zeros((H, W), np.int32)
    leaves[:10, 10:], leaves[10:, :10], leaves[10:, 10:] = 1, 2, 3
    tree = RegionTree(np.array([4, 4, 5, 5, 6, 6, 6]), np.array([0, 0, 0, 0, 1.0, 1.0, 2.0]), leaves)
    assert tree.areas().tolist() == [100, 100, 100, 100, 200, 200, 400]
    masks = [
        box_mask(H, W, 0, 0, 10, 20),     # 0 -> node 4 (top half)
        box_mask(H, W, 0, 0, 10, 10),     # 1 -> leaf 0, inside node 4
        box_mask(H, W, 3, 10, 13, 20),    # 2 -> leaf 1 (IoU 70/130), only 70% inside mask 0
        box_mask(H, W, 11, 0, 20, 20),    # 3 -> node 5 (IoU 180/200): not under node 4
        box_mask(H, W, 0, 0, 20, 20),     # 4 -> root
        box_mask(H, W, 0, 0, 4, 4),       # 5 -> matches nothing (best IoU 16/100 < 0.5)
    ]
    rles = [encode_mask(m) for m in masks]
    pairs = set(region_tree_pairs(rles, [7] * 6, {7: tree}, match_iou=0.5, max_area_ratio=0.5))
    assert pairs == {(0, 1), (0, 2), (4, 0), (4, 1), (4, 2), (4, 3)}
    # area ratio: |0| / |4| = 200 / 400 and |1| / |0| = 100 / 200 exceed 0.45, |3| / |4| = 180 / 400 does not
    pairs_tight = set(region_tree_pairs(rles, [7] * 6, {7: tree}, match_iou=0.5, max_area_ratio=0.45))
    assert pairs_tight == {(4, 1), (4, 2), (4, 3)}
    # the containment rule alone misses (0, 2); the tree adds it
    rel = build_relations(rles, [7] * 6, extra_children=sorted(pairs))
    plain = build_relations(rles, [7] * 6)
    assert 2 not in plain.children[0].tolist() and 2 in rel.children[0].tolist()
    assert region_tree_pairs(rles, [8] * 6, {7: tree}) == []          # no tree for that image
    with pytest.raises(LongtailError, match="shape"):
        region_tree_pairs([encode_mask(np.ones((5, 5), bool))], [7], {7: tree})
