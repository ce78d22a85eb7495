"""Every Table 2 embedding variant (params.yaml embedding.variants) changes what it says it changes: its losses, its
margin / weights, its space, dimension and curvature, its proposals per image, its backbone, on a one-step
training of the real sample (jittered GT masks of 4 prepared train images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_embedding import jittered_proposals, small_cfg

from longtail.embedding.variants import variant_config
from longtail.proposals.format import write_proposals

# what each overridable key must change in a one-step run (keys not listed: checked in the config only)
CHECKED = {"losses", "alpha", "beta", "gamma", "space", "dim", "curvature", "proposals_per_image", "backbone",
           "frozen_stages", "max_steps", "crop_size"}


@pytest.fixture(scope="module")
def train_set(tmp_path_factory, train_coco):
    recs, images = jittered_proposals(train_coco, 4)
    return write_proposals(tmp_path_factory.mktemp("variants") / "gt" / "train", recs, images, method="gt",
                           dataset="train.json", topk=1000, nms_iou=1.0)


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _step0(cfg: dict, ts) -> tuple[dict, object]:
    """The logged record of the first training step from the seeded init, and the model."""
    from longtail.embedding.train import build_model, train

    torch.manual_seed(0)
    model = build_model(cfg)
    recs = []
    train(model, ts, cfg, seed=0, progress=False, on_step=lambda s, r: recs.append(r))
    return recs[0], model


def test_every_variant_takes_effect(params, train_set, one_thread):
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.train import make_training_set

    emb = params["embedding"]
    variants = emb["variants"]
    assert {"euclidean", "no_mask", "no_object", "no_hier", "alpha0.1", "beta0.1"} <= set(variants)
    fast = {"crop_size": 16, "images_per_batch": 4, "max_steps": 1, "epochs": 1, "hidden": [16, 8]}
    base = small_cfg(params, **fast)
    ref_cfg = variant_config(base, "poincare")
    _, recs, ids, images = load_proposal_set(str(train_set), ref_cfg["proposals_per_image"])
    ts = make_training_set(recs, ids, images, ref_cfg, progress=False)
    ref, _ = _step0(ref_cfg, ts)
    assert {"loss_mask", "loss_object", "loss_hierarchical"} <= set(ref) and ref["hierarchical_pairs"] > 0
    per_image = np.bincount([r["image_id"] for r in load_proposal_set(str(train_set), 0)[1]])
    per_image = per_image[per_image > 0]
    for name, overrides in variants.items():
        cfg = variant_config(base, name)
        overrides = overrides or {}
        for k, v in overrides.items():
            assert cfg[k] == v, (name, k)
        run = {**cfg, "max_steps": 1, "crop_size": 16}           # one step at the tiny crops of ts
        rec, model = _step0(run, ts)
        terms = {k[len("loss_"):]: v for k, v in rec.items() if k.startswith("loss_") and k != "loss_total"}
        # Eq. 5 with the variant's weights over the variant's terms
        weight = {"mask": cfg["beta"], "object": cfg["gamma"], "hierarchical": 1.0}
        assert rec["loss_total"] == pytest.approx(sum(weight[t] * v for t, v in terms.items()), rel=1e-6), name
        assert set(terms) == set(cfg["losses"]), name
        if not overrides:
            assert rec == pytest.approx(ref), name
        if "losses" in overrides:                                  # a switched-off term is not computed at all
            assert set(terms) < {"mask", "object", "hierarchical"}
            if "mask" in terms:   # same crops through the network (BatchNorm batch statistics): same other terms
                for t in terms:
                    assert terms[t] == pytest.approx(ref[f"loss_{t}"]), (name, t)
        if "alpha" in overrides:                                   # the hinge margin: every term moves with alpha
            sign = np.sign(overrides["alpha"] - emb["alpha"])
            diff = np.array([terms[t] - ref[f"loss_{t}"] for t in terms])
            assert (np.sign(diff) * sign >= 0).all() and (np.abs(diff) > 1e-6).any(), (name, diff)
        if {"beta", "gamma"} & set(overrides):                   # weights only: same terms, another total
            for t in terms:
                assert terms[t] == pytest.approx(ref[f"loss_{t}"]), (name, t)
            assert abs(rec["loss_total"] - ref["loss_total"]) > 1e-6, name
        if "space" in overrides:
            assert model.space.name == overrides["space"]
            assert model.space.curvature == (0.0 if overrides["space"] == "euclidean" else cfg["curvature"])
            assert abs(rec["loss_total"] - ref["loss_total"]) > 1e-6, name
        if "curvature" in overrides and cfg["space"] == "poincare":
            assert model.space.curvature == overrides["curvature"]
        if "dim" in overrides:
            from longtail.embedding.train import embed_crops

            assert embed_crops(model, ts.crops[:3, 0], progress=False).shape == (3, overrides["dim"]), name
        if "proposals_per_image" in overrides:
            n = overrides["proposals_per_image"]
            got = len(load_proposal_set(str(train_set), n)[1])
            assert got == int(np.minimum(per_image, n).sum() if n else per_image.sum()), name
            assert got != len(recs) or per_image.max() <= min(n, emb["proposals_per_image"]), name
        if "backbone" in overrides:
            assert model.backbone_spec["type"] == overrides["backbone"].rstrip("012"), name
            assert type(model.backbone).__name__ == ("ResNet18Backbone" if overrides["backbone"] == "resnet18"
                                                     else "EfficientNetLiteBackbone"), name
        if "frozen_stages" in overrides and overrides["frozen_stages"] == -1:
            assert all(p.requires_grad for p in model.parameters()), name
        unchecked = set(overrides) - CHECKED
        assert unchecked <= {"lr", "epochs", "head_init"}, f"{name}: add a check for {unchecked}"


def test_cli_variant_recorded_in_model_and_metrics(params, train_set, tmp_path, monkeypatch, one_thread):
    """`train-embedding --variant`: model.pt records the variant's space / dim / curvature / config and the
    metrics file carries only the variant's loss terms."""
    from longtail.cli import main

    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")
    sets = ["--set", "embedding.max_steps=1", "--set", "embedding.crop_size=16", "--set", "embedding.epochs=1",
            "--set", "embedding.backbone=resnet18", "--set", "embedding.frozen_stages=-1",
            "--set", "embedding.hidden=[16, 8]", "--set", "embedding.images_per_batch=4"]
    for variant in ("no_hier", "euclidean"):
        out = tmp_path / "gt" / variant
        assert main(["train-embedding", "--proposals", str(train_set), "--variant", variant, "--out-dir", str(out),
                     *sets]) == 0
        saved = torch.load(out / "model.pt", weights_only=False)
        cfg = saved["config"]
        assert cfg["variant"] == variant and saved["space"] == cfg["space"]
        assert saved["dim"] == params["embedding"]["dim"] == saved["model"][_last_weight(saved["model"])].shape[0]
        m = json.loads((out / "metrics.json").read_text())
        assert m["steps"] == 1
        losses = {k[len("first_epoch_loss_"):] for k in m if k.startswith("first_epoch_loss_")}
        if variant == "no_hier":
            assert cfg["losses"] == ["mask", "object"] and losses == {"mask", "object", "total"}
            assert saved["space"] == "poincare" and saved["curvature"] == params["embedding"]["curvature"]
        else:
            assert saved["space"] == "euclidean" and losses == {"mask", "object", "hierarchical", "total"}


def _last_weight(state: dict) -> str:
    """The key of the embedding head's last linear weight (output rows = dim)."""
    return [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2][-1]
