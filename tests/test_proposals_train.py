"""Real (few-iteration) trainings of the proposal networks with mmengine's Runner on the sample data: Mask R-CNN
(+ resume, propose, eval), Mask R-CNN with the dense contrastive loss, SOLOv2; bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longtail import REPO_ROOT
from longtail.cli import main
from longtail.proposals.format import read_proposals

from conftest import require_mmcv_ops  # noqa: E402

require_mmcv_ops()   # skip without mmcv's compiled ops; CI (LONGTAIL_REQUIRE_MMCV_OPS=1) fails instead

TINY = ["--set", "proposals.train.batch_size=1", "--set", "proposals.train.scale=[160,160]",
        "--set", "proposals.train.checkpoint_interval=1", "--set", "proposals.train.log_interval=1",
        "--set", "proposals.train.warmup_iters=1", "--set", "proposals.train.init=random"]


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("LONGTAIL_MLFLOW", "0")


def _coco_mini(split: str, n_images: int) -> dict:
    d = json.loads((REPO_ROOT / f"data/coco-mini/annotations/instances_{split}2017.json").read_text())
    base = set(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["data"]["base_categories"])
    keep = set(sorted({a["image_id"] for a in d["annotations"]})[:n_images])
    return {"images": [dict(im, file_name=f"data/coco-mini/{split}2017/{im['file_name']}") for im in d["images"]
                       if im["id"] in keep],
            "annotations": [a for a in d["annotations"] if a["image_id"] in keep],
            "categories": [dict(c, split="base" if c["name"] in base else "novel") for c in d["categories"]]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train, val = _coco_mini("train", 6), _coco_mini("val", 4)
    (root / "train.json").write_text(json.dumps(train))   # novel annotations included: training must drop them
    (root / "val.json").write_text(json.dumps(val))
    return root, train, val


@pytest.fixture(scope="module")
def maskrcnn(data, tmp_path_factory):
    root, _, _ = data
    work = tmp_path_factory.mktemp("maskrcnn")
    rc = main(["train-proposals", "--model", "maskrcnn", "--train-json", str(root / "train.json"),
               "--val-json", str(root / "val.json"), "--work-dir", str(work), *TINY,
               "--set", "proposals.train.max_iters=2"])
    assert rc == 0
    return work


@pytest.mark.slow
def test_maskrcnn_trains_on_base_only_and_logs(maskrcnn, data):
    _, train, _ = data
    m = json.loads((maskrcnn / "metrics.json").read_text())
    assert m["iterations"] == 2 and m["start_iter"] == 0
    assert m["train/loss"] > 0 and m["train/loss_mask"] > 0 and m["train/loss_rpn_cls"] > 0
    assert 0.0 <= m["val/coco_segm_mAP"] <= 1.0 and 0.0 <= m["val/coco_bbox_mAP"] <= 1.0
    agn = json.loads((maskrcnn / "data/train_agnostic.json").read_text())
    base = {c["id"] for c in train["categories"] if c["split"] == "base"}
    n_base = sum(1 for a in train["annotations"] if a["category_id"] in base)
    assert len(agn["annotations"]) == n_base < len(train["annotations"])
    assert agn["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert m["train_annotations"] == sum(1 for a in agn["annotations"] if not a.get("iscrowd", 0))
    assert (maskrcnn / "model.pth").stat().st_size > 1e6 and (maskrcnn / "config.py").exists()


@pytest.mark.slow
def test_maskrcnn_resumes_from_last_checkpoint(maskrcnn, data, tmp_path):
    root, _, _ = data

    work = tmp_path / "resume"
    shutil.copytree(maskrcnn, work)
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    rc = main(["train-proposals", "--model", "maskrcnn", "--train-json", str(root / "train.json"),
               "--work-dir", str(work), *TINY, "--set", "proposals.train.max_iters=3"])
    assert rc == 0
    m = json.loads((work / "metrics.json").read_text())
    assert m["start_iter"] == 2 and m["iterations"] == 3
    assert (work / "iter_3.pth").exists()


def _rle(seg: dict) -> dict:
    """A stored RLE as pycocotools takes it (counts as bytes)."""
    c = seg["counts"]
    return {"size": list(seg["size"]), "counts": c.encode("ascii") if isinstance(c, str) else c}


def _cocoeval_ar100(val: dict, records: list[dict], split: str, iou_type: str) -> float:
    """AR@100 by pycocotools' COCOeval itself, class-agnostic (useCats=0), GT = the ``split`` categories'
    annotations (base, novel or all) on every image of ``val``, every proposal of ``records``."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = {c["id"] for c in val["categories"] if split == "all" or c["split"] == split}
    gt = COCO()
    gt.dataset = {"images": val["images"], "categories": [{"id": 1, "name": "object"}],
                  "annotations": [dict(a, category_id=1) for a in val["annotations"] if a["category_id"] in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dets = [{"image_id": r["image_id"], "category_id": 1, "score": r["score"],
                 **({"segmentation": _rle(r["segmentation"])} if iou_type == "segm" else {"bbox": r["bbox"]})}
                for r in records]
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.params.useCats = 0
        ev.params.imgIds = sorted(im["id"] for im in val["images"])
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[8])                                     # AR at maxDets 100


@pytest.mark.slow
def test_maskrcnn_propose_and_eval(maskrcnn, data, tmp_path):
    from pycocotools import mask as mask_utils

    from longtail.common.params import load_params

    root, _, val = data
    topk = int(load_params()["proposals"]["topk"])
    nms_iou = 0.3      # below the network's own box NMS (0.5), so that the mask NMS has masks to remove
    out = tmp_path / "maskrcnn" / "val"
    assert main(["propose", "--method", "maskrcnn", "--model-dir", str(maskrcnn), "--dataset",
                 str(root / "val.json"), "--out-dir", str(out), "--device", "cpu",
                 "--set", f"proposals.nms_iou={nms_iou}"]) == 0
    index, recs = read_proposals(out)
    assert index["model_dir"] == str(maskrcnn) and index["topk"] == topk and index["nms_iou"] == nms_iou
    assert sorted(im["id"] for im in index["images"]) == sorted(im["id"] for im in val["images"])
    assert all(r["category_id"] == 1 and 0.0 <= r["score"] <= 1.0 for r in recs)
    sizes = {im["id"]: [im["height"], im["width"]] for im in val["images"]}
    # the network's raw outputs (proposals.score_thr / pre_nms) that the verb's greedy mask NMS started from
    from longtail.proposals.inference import predict_dataset

    pcfg = load_params()["proposals"]
    raw = predict_dataset(maskrcnn, val, score_thr=pcfg["score_thr"], pre_nms=pcfg["pre_nms"])
    pairs = dropped = 0
    for im in index["images"]:
        mine = [r for r in recs if r["image_id"] == im["id"]]
        assert len(mine) == im["num_proposals"] <= topk
        scores = [r["score"] for r in mine]
        assert scores == sorted(scores, reverse=True)
        assert all(list(r["segmentation"]["size"]) == sizes[im["id"]] for r in mine)
        rles = [_rle(r["segmentation"]) for r in mine]
        if len(rles) > 1:                                         # kept masks overlap at most the NMS IoU
            iou = mask_utils.iou(rles, rles, [0] * len(rles))
            off = iou[~np.eye(len(rles), dtype=bool)]
            assert off.max() <= nms_iou + 1e-9, (im["id"], float(off.max()))
            pairs += off.size
        # greedy NMS: every kept mask is a raw output; every raw output left out overlaps a kept one with a
        # score at least its own by more than the NMS IoU (or top-K was full)
        kept = {r["segmentation"]["counts"] for r in mine}
        theirs = [r for r in raw if r["image_id"] == im["id"]]
        assert kept <= {r["segmentation"]["counts"] for r in theirs}
        left = [r for r in theirs if r["segmentation"]["counts"] not in kept]
        dropped += len(left)
        if left and len(mine) < topk:
            ov = mask_utils.iou([_rle(r["segmentation"]) for r in left], rles, [0] * len(rles))
            better = np.array([[k["score"] >= r["score"] for k in mine] for r in left])
            assert ((ov > nms_iou) & better).any(axis=1).all(), im["id"]
    assert len(recs) > 0 and pairs > 0 and dropped > 0            # the checks above saw real proposals and NMS
    metrics = tmp_path / "metrics.json"
    assert main(["eval-proposals", "--proposals", str(out), "--dataset", str(root / "val.json"),
                 "--out", str(metrics)]) == 0
    m = json.loads(metrics.read_text())
    for iou_type in ("segm", "bbox"):
        for sub in ("base", "novel", "all"):
            want = _cocoeval_ar100(val, recs, sub, iou_type)
            assert m[iou_type][sub]["AR100"] == pytest.approx(want, abs=1e-9), (iou_type, sub, want)
    print({t: {s: m[t][s]["AR100"] for s in ("base", "novel", "all")} for t in ("segm", "bbox")})


class _Stop(Exception):
    pass


def _train_cfg_and_rc(monkeypatch, data, work: Path, *sets: str):
    """`train-proposals --model maskrcnn` up to the mmengine Runner (not run): (the config it would train, rc)."""
    from longtail.proposals import training

    seen = {}

    def stop(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        raise _Stop

    monkeypatch.setattr(training, "run_mmengine", stop)
    root, _, _ = data
    argv = ["train-proposals", "--model", "maskrcnn", "--train-json", str(root / "train.json"), "--work-dir",
            str(work), *TINY]
    for s in sets:
        argv += ["--set", s]
    try:
        rc = main(argv)
    except _Stop:
        rc = None
    return seen.get("cfg"), rc


R50 = "proposals.models.maskrcnn=workflow/mmdet/maskrcnn_r50_fpn_cpu.py"


def test_train_init_hierarchy_and_auto(monkeypatch, data, tmp_path, pixel_embedding_ckpt, capsys, caplog):
    """proposals.train.init (docs/proposals.md): hierarchy loads the pixel embedding's ResNet-50 into the mmdet
    backbone; auto does the same when the checkpoint exists and is random init (no init_cfg) when it is missing
    or matches nothing (the EfficientNet-Lite default); hierarchy without the file is an error naming it."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from longtail.hierarchy.pixel_embedding import load_pixel_embedding

    pe = load_pixel_embedding(pixel_embedding_ckpt).backbone.state_dict()
    register_all_modules(init_default_scope=False)
    for init in ("hierarchy", "auto"):
        cfg, rc = _train_cfg_and_rc(monkeypatch, data, tmp_path / init, R50, f"proposals.train.init={init}",
                                    f"proposals.train.hierarchy_checkpoint={pixel_embedding_ckpt}")
        assert rc is None and cfg.model.backbone.init_cfg == {"type": "Pretrained",
                                                              "checkpoint": str(tmp_path / init / "hierarchy_backbone.pth")}
        backbone = MODELS.build(cfg.model.backbone)
        backbone.init_weights()                                  # what the Runner does before training
        got = backbone.state_dict()
        shared = [k for k in got if k in pe]
        assert len(shared) > 300 and "layer4.2.conv3.weight" in shared
        assert all(torch.equal(got[k], pe[k]) for k in shared), init
    missing = tmp_path / "no_such_pe.pt"
    cfg, rc = _train_cfg_and_rc(monkeypatch, data, tmp_path / "auto_missing", R50, "proposals.train.init=auto",
                                f"proposals.train.hierarchy_checkpoint={missing}")
    assert rc is None and cfg.model.backbone.init_cfg is None and not (tmp_path / "auto_missing" /
                                                                       "hierarchy_backbone.pth").exists()
    caplog.clear()
    cfg, rc = _train_cfg_and_rc(monkeypatch, data, tmp_path / "auto_effl0", "proposals.train.init=auto",
                                f"proposals.train.hierarchy_checkpoint={pixel_embedding_ckpt}")
    assert rc is None and cfg.model.backbone.init_cfg is None and cfg.model.backbone.pretrained is False
    assert "no tensor matches the backbone of EfficientNetLite" in caplog.text
    capsys.readouterr()
    cfg, rc = _train_cfg_and_rc(monkeypatch, data, tmp_path / "h_missing", R50, "proposals.train.init=hierarchy",
                                f"proposals.train.hierarchy_checkpoint={missing}")
    err = capsys.readouterr().err
    assert rc == 2 and cfg is None and str(missing) in err and "proposals.train.init=hierarchy" in err, err
    cfg, rc = _train_cfg_and_rc(monkeypatch, data, tmp_path / "h_effl0", "proposals.train.init=hierarchy",
                                f"proposals.train.hierarchy_checkpoint={pixel_embedding_ckpt}")
    err = capsys.readouterr().err
    assert rc == 2 and str(pixel_embedding_ckpt) in err and "no tensor matches" in err, err


@pytest.mark.slow
def test_dcl_maskrcnn_trains_with_contrastive_loss(data, tmp_path):
    root, _, _ = data
    rc = main(["train-proposals", "--model", "maskrcnn_dcl", "--train-json", str(root / "train.json"),
               "--work-dir", str(tmp_path), *TINY, "--set", "proposals.train.max_iters=2",
               "--set", "proposals.dcl.num_samples=8"])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert "train/loss_dcl" in m and m["train/loss_dcl"] > 0
    cfg = (tmp_path / "config.py").read_text()
    assert "DCLFCNMaskHead" in cfg and "num_samples=8" in cfg


@pytest.mark.slow
def test_solov2_trains_and_proposes(data, tmp_path):
    root, _, _ = data
    work = tmp_path / "solov2"
    rc = main(["train-proposals", "--model", "solov2", "--train-json", str(root / "train.json"),
               "--work-dir", str(work), *TINY, "--set", "proposals.train.max_iters=2"])
    assert rc == 0
    m = json.loads((work / "metrics.json").read_text())
    assert m["iterations"] == 2 and m["train/loss_mask"] > 0 and m["train/loss_cls"] > 0
    out = tmp_path / "solov2_val"
    assert main(["propose", "--method", "solov2", "--model-dir", str(work), "--dataset", str(root / "val.json"),
                 "--out-dir", str(out), "--device", "cpu"]) == 0
    index, _ = read_proposals(out)
    assert all(im["num_proposals"] <= 50 for im in index["images"])


def test_bad_training_input(data, tmp_path, capsys):
    root, train, _ = data
    novel_only = dict(train, annotations=[a for a in train["annotations"]
                                          if a["category_id"] not in {c["id"] for c in train["categories"]
                                                                      if c["split"] == "base"}])
    p = tmp_path / "novel_only.json"
    p.write_text(json.dumps(novel_only))
    assert main(["train-proposals", "--model", "maskrcnn", "--train-json", str(p), "--work-dir",
                 str(tmp_path / "w"), *TINY]) == 2
    assert "training set is empty" in capsys.readouterr().err
    assert main(["train-proposals", "--model", "maskrcnn", "--train-json", str(root / "train.json"),
                 "--work-dir", str(tmp_path / "w"), "--set", "proposals.models.maskrcnn=workflow/mmdet/nope.py"]) == 2
    assert "nope.py" in capsys.readouterr().err
    bad = tmp_path / "bad_cfg.py"
    bad.write_text(f"_base_ = '{REPO_ROOT}/workflow/mmdet/maskrcnn_r50_fpn_cpu.py'\n"
                   "optim_wrapper = dict(_delete_=True, type='OptimWrapper', optimizer='SGD')\n")
    assert main(["train-proposals", "--model", "maskrcnn", "--train-json", str(root / "train.json"),
                 "--work-dir", str(tmp_path / "w"), "--set", f"proposals.models.maskrcnn={bad}"]) == 2
    assert "optim_wrapper.optimizer" in capsys.readouterr().err
    assert main(["train-proposals", "--model", "nosuch", "--train-json", str(root / "train.json"),
                 "--work-dir", str(tmp_path / "w")]) == 2
    assert "proposals.models" in capsys.readouterr().err


@pytest.mark.parametrize("name,head", [("maskrcnn_r50_fpn_agnostic_1x_coco", "FCNMaskHead"),
                                       ("maskrcnn_dcl_r50_fpn_agnostic_1x_coco", "DCLFCNMaskHead"),
                                       ("solov2_r50_fpn_agnostic_1x_coco", "SOLOV2Head")])
def test_hpc_configs_keep_their_schedule_and_build(name, head):
    """HPC profile: params with nulls keep mmdet's 1x epoch schedule, ImageNet init; the model builds, 1 class."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from longtail.common.params import load_params
    from longtail.proposals.training import apply_params, load_config

    params = load_params(overrides=["proposals.train.max_iters=null", "proposals.train.batch_size=null",
                                    "proposals.train.lr=null", "proposals.train.scale=null"])
    cfg = load_config(f"workflow/mmdet/{name}.py")
    apply_params(cfg, params["proposals"], 0, name)
    assert cfg.train_cfg.type == "EpochBasedTrainLoop" and cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size == 2 and cfg.optim_wrapper.optimizer.lr in (0.02, 0.01)
    assert cfg.model.backbone.init_cfg.checkpoint == "torchvision://resnet50"
    assert ("scale", (1333, 800)) in cfg.train_dataloader.dataset.pipeline[2].items()
    register_all_modules()
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if name.startswith("maskrcnn"):
        assert type(model.roi_head.mask_head).__name__ == head
        assert model.roi_head.bbox_head.num_classes == 1 and model.roi_head.mask_head.num_classes == 1
    else:
        assert type(model.mask_head).__name__ == head and model.mask_head.num_classes == 1


@pytest.mark.parametrize("name,hpc", [("maskrcnn_r50_fpn_cpu", "maskrcnn_r50_fpn_agnostic_1x_coco"),
                                      ("maskrcnn_dcl_r50_fpn_cpu", "maskrcnn_dcl_r50_fpn_agnostic_1x_coco"),
                                      ("solov2_r50_fpn_cpu", "solov2_r50_fpn_agnostic_1x_coco")])
def test_cpu_configs_share_the_cpu_runtime(name, hpc):
    """CPU profile = its HPC config (same model up to the backbone init) + workflow/mmdet/_cpu_runtime.py."""
    from mmengine.config import Config

    cpu, full = (Config.fromfile(str(REPO_ROOT / f"workflow/mmdet/{n}.py")) for n in (name, hpc))
    rt = Config.fromfile(str(REPO_ROOT / "workflow/mmdet/_cpu_runtime.py"))
    assert cpu.train_cfg.to_dict() == {"type": "IterBasedTrainLoop", "max_iters": 120, "val_interval": 120}
    assert cpu.train_dataloader.dataset.pipeline == rt.cpu_train_pipeline
    assert cpu.test_dataloader.dataset.pipeline == rt.cpu_test_pipeline
    assert cpu.train_dataloader.num_workers == 0 and cpu.default_hooks.checkpoint.interval == 40
    assert cpu.param_scheduler == rt.cpu_param_scheduler
    # the HPC dataset, model type and heads are inherited unchanged
    assert cpu.train_dataloader.dataset.ann_file == full.train_dataloader.dataset.ann_file
    assert cpu.model.type == full.model.type and cpu.model.backbone.init_cfg is None
    head = "roi_head" if "roi_head" in full.model else "mask_head"
    assert cpu.model[head].type == full.model[head].type


# --- the shared mmengine runner: launch from the environment, auto_scale_lr, checkpoints, preemption -------------

@pytest.mark.parametrize("env,launcher,world,rank", [
    ({}, "none", 1, 0),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "pytorch", 2, 1),          # torchrun --nproc_per_node 2
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, "none", 1, 0),            # torchrun --nproc_per_node 1
    ({"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}, "slurm", 4, 3),  # srun -n 4
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, "none", 1, 0),                     # the job step of one task
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "5"},
     "pytorch", 8, 5),                                                             # torchrun inside srun -n1
])
def test_launcher_from_env(env, launcher, world, rank):
    from longtail.common.distributed import is_rank_zero, launcher_from_env, rank_from_env, world_size_from_env

    assert launcher_from_env(env) == launcher
    assert world_size_from_env(env) == world and rank_from_env(env) == rank
    assert is_rank_zero(env) == (rank == 0)


def test_only_rank_zero_writes_metrics(tmp_path, monkeypatch):
    """In a torchrun world the ranks > 0 neither log to MLflow nor write the metrics file (rank 0 does)."""
    from longtail.common import tracking

    monkeypatch.setenv("LONGTAIL_MLFLOW", "1")
    for rank, expect in (("1", False), ("0", True)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", rank)
        monkeypatch.setenv("RANK", rank)
        assert tracking.enabled() is expect
        out = tmp_path / f"metrics_{rank}.json"
        tracking.StageRun("train-proposals", None).write_metrics(out, {"iterations": 2})
        assert out.exists() is expect


def _scaled_lr(cfg, world_size: int) -> float:
    """The LR mmengine's Runner trains with for ``cfg`` in a world of ``world_size`` processes (Runner.scale_lr)."""
    from types import SimpleNamespace

    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    fake = SimpleNamespace(world_size=world_size, _train_dataloader=cfg.train_dataloader, param_schedulers=None,
                           logger=SimpleNamespace(info=lambda *a, **k: None))
    Runner.scale_lr(fake, OptimWrapper(opt), cfg.auto_scale_lr)
    return opt.param_groups[0]["lr"]


def test_auto_scale_lr_follows_the_world_size():
    """params lr is for base_batch_size images (null: one process's batch when lr is set, so one process trains
    as before); mmengine scales it to world size x batch per process. The HPC experiment: 0.02 for 16 images."""
    from longtail.common.params import load_params
    from longtail.proposals.runner import load_config
    from longtail.proposals.training import apply_params

    params = load_params()
    cfg = load_config(params["proposals"]["models"]["maskrcnn"])
    apply_params(cfg, params["proposals"], 0, "maskrcnn")
    lr, batch = params["proposals"]["train"]["lr"], params["proposals"]["train"]["batch_size"]
    assert cfg.auto_scale_lr.to_dict() == {"enable": True, "base_batch_size": batch}
    assert _scaled_lr(cfg, 1) == pytest.approx(lr) and _scaled_lr(cfg, 4) == pytest.approx(4 * lr)

    hpc = load_params(overrides=["proposals.train.max_iters=null", "proposals.train.batch_size=2",
                                 "proposals.train.lr=0.02", "proposals.train.base_batch_size=16",
                                 "proposals.train.checkpoint_interval=5000", "proposals.train.max_keep_ckpts=2"])
    cfg = load_config("workflow/mmdet/maskrcnn_r50_fpn_agnostic_1x_coco.py")
    apply_params(cfg, hpc["proposals"], 0, "maskrcnn")
    assert _scaled_lr(cfg, 8) == pytest.approx(0.02) and _scaled_lr(cfg, 2) == pytest.approx(0.005)
    # the 1x epoch schedule stays; checkpoints every 5000 iterations all the same (an epoch is hours at scale)
    assert cfg.train_cfg.type == "EpochBasedTrainLoop"
    assert cfg.default_hooks.checkpoint.to_dict() == {"type": "CheckpointHook", "by_epoch": False, "interval": 5000,
                                                      "max_keep_ckpts": 2}
    keep = load_params(overrides=["proposals.train.max_iters=null", "proposals.train.lr=null",
                                  "proposals.train.batch_size=null"])
    cfg = load_config("workflow/mmdet/maskrcnn_r50_fpn_agnostic_1x_coco.py")
    apply_params(cfg, keep["proposals"], 0, "maskrcnn")      # the config's LR is for the config's base batch
    assert cfg.auto_scale_lr.base_batch_size == 16 and _scaled_lr(cfg, 8) == pytest.approx(0.02)


def _train_cmd(root, work, *extra) -> list[str]:
    return [str(Path(sys.executable).parent / "longtail"), "train-proposals", "--model", "maskrcnn", "--train-json",
            str(root / "train.json"), "--work-dir", str(work), *TINY, *extra]


@pytest.mark.slow
def test_sigusr1_checkpoints_and_the_rerun_resumes(data, tmp_path):
    """SLURM's pre-timeout signal (SIGUSR1): the training writes iter_<n>.pth at the end of the current iteration
    and exits non-zero; the same command then resumes from iteration n."""
    root, _, _ = data
    work = tmp_path / "w"
    env = {**os.environ, "LONGTAIL_MLFLOW": "0"}
    # no regular checkpoint before iteration 1000: the one found after the signal is the signal's
    cmd = _train_cmd(root, work, "--set", "proposals.train.max_iters=1000",
                     "--set", "proposals.train.checkpoint_interval=1000")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:                      # mmengine logs every iteration (log_interval=1)
            lines.append(line)
            if "Iter(train) [   2/1000]" in line:
                proc.send_signal(signal.SIGUSR1)
                break
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + out
    assert proc.returncode == 2, log[-3000:]
    assert "SIGUSR1 received" in log and "rerun the same command" in log, log[-3000:]
    ckpt = Path((work / "last_checkpoint").read_text().strip())
    n = int(ckpt.stem.split("_")[1])
    assert ckpt.exists() and ckpt.parent == work and n >= 2, ckpt
    assert not (work / "model.pth").exists()          # nothing final from an interrupted training
    rc = subprocess.run(_train_cmd(root, work, "--set", f"proposals.train.max_iters={n + 1}"), env=env,
                        capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr[-3000:]
    m = json.loads((work / "metrics.json").read_text())
    assert m["start_iter"] == n and m["iterations"] == n + 1, m


@pytest.mark.slow
def test_two_process_gloo_world(data, tmp_path):
    """torchrun --nproc_per_node 2 on the CPU: mmengine's DDP over gloo, lr scaled x2 by auto_scale_lr (two
    processes x batch 1 = twice the batch one process trains with), rank 0 alone writes model.pth / metrics."""
    root, _, _ = data
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    work = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "--no-python",
           *_train_cmd(root, work, "--set", "proposals.train.max_iters=2", "--set", "proposals.gpu=2",
                       "--set", "proposals.train.warmup_iters=0")]                 # a constant LR to compare
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "device cuda requested but no CUDA device is visible; using the CPU" in log   # proposals.gpu=2
    assert "Distributed launcher: pytorch" in log and "Distributed training: True" in log, log[-4000:]
    assert "LR is set based on batch size of 1 and the current batch size is 2" in log
    m = json.loads((work / "metrics.json").read_text())
    assert m["iterations"] == 2 and m["start_iter"] == 0 and m["train/loss"] > 0
    assert m["train/lr"] == pytest.approx(2 * 0.01)             # TINY: lr 0.01, batch 1 per process, 2 processes
    cfg = (work / "config.py").read_text()
    assert "launcher = 'none'" in cfg and "model_wrapper_cfg" not in cfg and (work / "model.pth").exists()
