"""The CUDA branches, on a machine with a GPU: `pytest -m gpu` (skipped without CUDA; the CPU suite, where
these are skipped, stays the CI gate). Each test checks that the work really ran on the GPU, not only that the
code path was entered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from longtail import REPO_ROOT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device; run `pytest -m gpu` on a GPU machine")]


def check_select_device(expect: str) -> None:
    from longtail.common.runtime import gpu_device, select_device

    assert select_device("cuda", "test").type == expect
    assert select_device("auto", "test").type == expect
    assert gpu_device(1, "test").type == expect
    assert select_device("cpu", "test").type == "cpu" and gpu_device(0, "test").type == "cpu"


def check_embedding_trainer(params: dict, train_coco: dict, tmp_path, expect: str) -> None:
    """train-embedding's device path (pick_device from embedding.gpu, model.to(device)): two steps on GT masks;
    the model, its gradients' updates and the losses live on ``expect``."""
    from longtail.common.masks import decode_mask, to_rle
    from longtail.embedding.inputs import load_proposal_set
    from longtail.embedding.train import build_model, make_training_set, model_device, pick_device, train
    from longtail.proposals.format import make_record, write_proposals

    images = sorted(train_coco["images"], key=lambda im: im["id"])[:2]
    recs = []
    for im in images:
        for a in train_coco["annotations"]:
            if a["image_id"] == im["id"] and not a.get("iscrowd"):
                m = decode_mask(to_rle(a["segmentation"], im["height"], im["width"]))
                if m.sum() >= 100:
                    recs += [make_record(im["id"], m, 1.0), make_record(im["id"], np.roll(m, (2, 3), (0, 1)), 0.9)]
    set_dir = write_proposals(tmp_path / "gt", recs, images, method="gt", dataset="train.json", topk=100,
                              nms_iou=1.0)
    cfg = {**params["embedding"], "backbone": "resnet18", "frozen_stages": -1, "head_init": "random",
           "crop_size": 32, "images_per_batch": 2, "epochs": 1, "max_steps": 2, "gpu": 1}
    _, kept, ids, imgs = load_proposal_set(str(set_dir), cfg["proposals_per_image"])
    ts = make_training_set(kept, ids, imgs, cfg, progress=False)
    torch.manual_seed(0)
    device = pick_device(cfg["gpu"])
    assert device.type == expect
    model = build_model(cfg).to(device)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = train(model, ts, cfg, seed=0, progress=False)
    assert model_device(model).type == expect
    assert all(v.device.type == expect for v in model.state_dict().values())
    assert summary["steps"] >= 1 and np.isfinite(summary["last_epoch_loss_total"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def check_maskrcnn_forward(expect: str) -> None:
    """A tiny Mask R-CNN (the CPU R50 config, random init) on a real image: inference and one training loss on
    ``expect`` (mmcv's RoIAlign / NMS kernels for that device)."""
    from mmdet.apis import inference_detector, init_detector
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    from PIL import Image

    cfg = str(REPO_ROOT / "workflow/mmdet/maskrcnn_r50_fpn_cpu.py")
    model = init_detector(cfg, checkpoint=None, device=f"{expect}:0" if expect == "cuda" else expect)
    val = json.loads((REPO_ROOT / "data/coco-mini/annotations/instances_val2017.json").read_text())
    im = val["images"][0]
    img = np.asarray(Image.open(REPO_ROOT / "data/coco-mini/val2017" / im["file_name"]).convert("RGB"))[..., ::-1]
    img = np.ascontiguousarray(img[:256, :256])
    res = inference_detector(model, img)
    assert next(model.parameters()).device.type == expect
    assert res.pred_instances.masks.shape[1:] == img.shape[:2]
    # one training forward: losses computed on the device
    model.train()
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()
    sample = DetDataSample(metainfo={"img_shape": img.shape[:2], "ori_shape": img.shape[:2], "pad_shape": img.shape[:2],
                                     "scale_factor": (1.0, 1.0), "batch_input_shape": img.shape[:2]})
    m = np.zeros((1, *img.shape[:2]), np.uint8)
    m[0, 40:120, 60:160] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[60.0, 40.0, 160.0, 120.0]]), labels=torch.tensor([0]),
                                       masks=BitmapMasks(m, *img.shape[:2]))
    data = model.data_preprocessor({"inputs": [x], "data_samples": [sample]}, training=True)
    losses = model(**data, mode="loss")
    assert losses["loss_mask"].device.type == expect and losses["loss_rpn_cls"][0].device.type == expect
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(t.sum() for t in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()


def test_select_device_cuda():
    check_select_device("cuda")


def test_embedding_trainer_on_cuda(params, train_coco, tmp_path):
    check_embedding_trainer(params, train_coco, tmp_path, "cuda")


def test_maskrcnn_forward_on_cuda():
    check_maskrcnn_forward("cuda")
