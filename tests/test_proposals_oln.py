"""OLN's localisation-quality heads (longtail/proposals/oln.py): the RPN score learns centerness and the RoI score
learns IoU, on positives only; the whole Mask R-CNN of maskrcnn_oln_effl0_fpn_cpu.py trains on a real sample
image. AR on the sample: docs/benchmarks-proposals.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_mmdet, require_mmcv_ops  # noqa: E402

require_mmcv_ops()   # skip without mmcv's compiled ops; CI (LONGTAIL_REQUIRE_MMCV_OPS=1) fails instead

from longtail.proposals.oln import centerness  # noqa: E402
from longtail.proposals.training import load_config  # noqa: E402

CONFIG = "workflow/mmdet/maskrcnn_oln_effl0_fpn_cpu.py"


_build = build_mmdet


def test_centerness():
    pts = torch.tensor([[2.0, 5.0], [1.0, 5.0], [0.0, 5.0], [-1.0, 5.0], [1.0, 1.0]])
    box = torch.tensor([0.0, 0.0, 4.0, 10.0]).expand(len(pts), 4)
    expected = [1.0, np.sqrt(1 / 3), 0.0, 0.0, np.sqrt(1 / 3 * 1 / 9)]
    assert torch.allclose(centerness(pts, box), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def test_rpn_objectness_learns_centerness_on_positives_only():
    """With every score 0 (sigmoid 0.5) the objectness loss is the mean of |0.5 - centerness| over the positive
    anchors, and no negative anchor gets a gradient (a standard RPN pushes every negative towards 0)."""
    from mmdet.structures.bbox import bbox_overlaps

    cfg = load_config(CONFIG)
    rpn = dict(cfg.model.rpn_head, train_cfg=cfg.model.train_cfg.rpn, test_cfg=cfg.model.test_cfg.rpn)
    from mmengine.structures import InstanceData

    gt = InstanceData(bboxes=torch.tensor([[40.0, 30.0, 110.0, 90.0]]), labels=torch.tensor([0]))
    meta = dict(img_shape=(128, 160), pad_shape=(128, 160), batch_input_shape=(128, 160))
    torch.manual_seed(0)
    feats = [torch.randn(1, cfg.model.rpn_head.in_channels, 128 // s, 160 // s) for s in (4, 8, 16, 32, 64)]
    grads = {}
    for kind in ("OlnRPNHead", "RPNHead"):
        head = _build({**{k: v for k, v in rpn.items() if k != "loss_objectness_weight" or kind == "OlnRPNHead"},
                       "type": kind})
        head.init_weights()
        cls_scores, bbox_preds = head(feats)
        cls_scores = [torch.zeros_like(c, requires_grad=True) for c in cls_scores]
        losses = head.loss_by_feat(cls_scores, bbox_preds, [gt], [meta])
        key = "loss_rpn_obj" if kind == "OlnRPNHead" else "loss_rpn_cls"
        total = sum(losses[key])
        total.backward()
        grads[kind] = [c.grad.permute(0, 2, 3, 1).reshape(-1) for c in cls_scores]
        if kind == "OlnRPNHead":
            assert set(losses) == {"loss_rpn_obj", "loss_rpn_bbox"}
            anchors = head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores], device="cpu")
            pos = [g != 0 for g in grads[kind]]
            n = sum(int(p.sum()) for p in pos)
            assert n > 0
            a = torch.cat([lvl[p] for lvl, p in zip(anchors, pos)])
            c = centerness((a[:, :2] + a[:, 2:]) / 2, gt.bboxes.expand(len(a), 4))
            assert total.item() == pytest.approx((0.5 - c).abs().mean().item(), rel=1e-5)
            # each positive's gradient pushes sigmoid(score) towards its own centerness
            g = torch.cat([lvl[p] for lvl, p in zip(grads[kind], pos)])
            assert torch.all((g > 0) == (c < 0.5))
            # OLN's objectness positives: IoU > 0.3 with the GT box, never a background anchor
            iou = bbox_overlaps(a, gt.bboxes)[:, 0]
            assert iou.min() > 0.3 - 1e-6 and c.min() < 0.3 < 0.6 < c.max()   # targets spread over [0, 1]
    n_oln = sum(int((g != 0).sum()) for g in grads["OlnRPNHead"])
    iou_all = bbox_overlaps(torch.cat(anchors), gt.bboxes)[:, 0]
    assert n_oln == min(256, int((iou_all > 0.3).sum()))
    # the standard RPN trains its sampled negatives (IoU < 0.3) too
    std_trained = torch.cat(grads["RPNHead"]) != 0
    assert (iou_all[std_trained] < 0.3).sum() > 100


def test_roi_score_learns_the_iou_of_positive_rois_only():
    """softmax(cls_score)[:, 0] = sigmoid(a - b) is trained to the IoU of each positive RoI with its GT box; negative
    RoIs get no gradient; box regression is the head's own."""
    from mmdet.models.task_modules.assigners import MaxIoUAssigner
    from mmdet.models.task_modules.samplers import RandomSampler
    from mmdet.structures.bbox import bbox2roi, bbox_overlaps
    from mmengine.structures import InstanceData

    cfg = load_config(CONFIG)
    head = _build(cfg.model.roi_head.bbox_head)
    gts = [torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 100.0]]), torch.tensor([[5.0, 5.0, 40.0, 40.0]])]
    rng = np.random.default_rng(0)
    sampling = []
    for gt in gts:
        jitter = torch.from_numpy(rng.uniform(-12, 12, (20, 4))).float()
        props = torch.cat([gt.repeat(10, 1) + jitter[: 10 * len(gt)][: 10 * len(gt)], torch.tensor([[0.0, 0.0, 8.0, 8.0]])])
        pred, gt_inst = InstanceData(priors=props), InstanceData(bboxes=gt, labels=torch.zeros(len(gt), dtype=torch.long))
        assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5).assign(pred, gt_inst)
        sampling.append(RandomSampler(num=64, pos_fraction=0.5, add_gt_as_proposals=True).sample(assign, pred, gt_inst))
    rois = bbox2roi([s.priors for s in sampling])
    torch.manual_seed(0)
    cls_score = torch.randn(len(rois), 2, requires_grad=True)
    bbox_pred = torch.zeros(len(rois), 4, requires_grad=True)
    out = head.loss_and_target(cls_score, bbox_pred, rois, sampling, cfg.model.train_cfg.rcnn)
    losses = out["loss_bbox"]
    assert "loss_cls" not in losses and {"loss_iou", "loss_bbox"} <= set(losses)
    iou = torch.cat([bbox_overlaps(s.pos_priors, s.pos_gt_bboxes, is_aligned=True) for s in sampling])
    assert 0.3 < iou.min() and iou.max() == 1.0          # jittered positives and the GT boxes themselves
    pos = torch.cat([torch.arange(len(s.priors)) < len(s.pos_priors) for s in sampling])
    fg = (cls_score[pos, 0] - cls_score[pos, 1]).sigmoid()
    assert losses["loss_iou"].item() == pytest.approx((fg - iou).abs().mean().item(), rel=1e-6)
    losses["loss_iou"].backward()
    assert torch.all(cls_score.grad[~pos] == 0) and torch.all(cls_score.grad[pos].abs().sum(1) > 0)
    # the detection score mmdet computes at test time is that same sigmoid
    assert torch.allclose(torch.softmax(cls_score, 1)[:, 0], (cls_score[:, 0] - cls_score[:, 1]).sigmoid(), atol=1e-6)


def test_oln_mask_rcnn_trains_on_a_sample_image(val_coco, repo_root):
    """The whole config: a real sample val image with its GT boxes and masks through model.loss; OLN's losses
    replace the classification ones and every trainable head gets a gradient."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    from PIL import Image
    from pycocotools import mask as mask_utils

    cfg = load_config(CONFIG)
    model = _build(dict(cfg.model, backbone=dict(cfg.model.backbone, pretrained=False)))
    model.init_weights()
    model.train()
    im = next(i for i in val_coco["images"] if sum(a["image_id"] == i["id"] for a in val_coco["annotations"]) >= 3)
    anns = [a for a in val_coco["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd", 0)]
    rgb = np.asarray(Image.open(repo_root / im["file_name"]).convert("RGB"))   # file_name: relative to the repo
    h, w = rgb.shape[:2]
    masks = np.stack([mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w)).reshape(h, w, -1).max(2)
                      if isinstance(a["segmentation"], list) else mask_utils.decode(a["segmentation"]) for a in anns])
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=torch.float32)
    ds = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    ds.gt_instances = InstanceData(bboxes=boxes, labels=torch.zeros(len(anns), dtype=torch.long),
                                   masks=BitmapMasks(masks, h, w))
    data = model.data_preprocessor(dict(inputs=[torch.from_numpy(rgb[..., ::-1].copy()).permute(2, 0, 1)],
                                        data_samples=[ds]), True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert {"loss_rpn_obj", "loss_rpn_bbox", "loss_iou", "loss_bbox", "loss_mask"} <= set(losses)
    assert not {"loss_rpn_cls", "loss_cls"} & set(losses)
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if k.startswith("loss"))   # rpn: per level
    assert torch.isfinite(total)
    total.backward()
    for name in ("rpn_head.rpn_cls", "roi_head.bbox_head.fc_cls", "roi_head.mask_head.conv_logits"):
        assert dict(model.named_parameters())[f"{name}.weight"].grad.abs().sum() > 0, name


def test_roi_head_scores_boxes_by_the_geometric_mean_of_rpn_score_and_iou():
    """OlnRoIHead at test time: score = sqrt(RPN score x predicted IoU) for every kept box (4 disjoint proposals,
    no score threshold); training (loss) is StandardRoIHead's."""
    from mmdet.models.roi_heads import StandardRoIHead
    from mmdet.structures.bbox import bbox2roi
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData

    cfg = load_config(CONFIG)
    head = _build(dict(cfg.model.roi_head, train_cfg=cfg.model.train_cfg.rcnn, test_cfg=cfg.model.test_cfg.rcnn))
    head.init_weights()
    head.eval()
    torch.manual_seed(0)
    x = tuple(torch.randn(1, cfg.model.roi_head.bbox_roi_extractor.out_channels, 128 // s, 160 // s) for s in (4, 8, 16, 32))
    boxes = torch.tensor([[4.0, 4.0, 40.0, 40.0], [60.0, 4.0, 100.0, 50.0], [4.0, 70.0, 50.0, 120.0], [90.0, 70.0, 150.0, 120.0]])
    rpn_scores = torch.tensor([0.9, 0.2, 0.5, 0.05])
    test_cfg = ConfigDict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)
    with torch.no_grad():
        cls = StandardRoIHead._bbox_forward(head, x, bbox2roi([boxes]))["cls_score"]
        res = head.predict_bbox(x, [dict(img_shape=(128, 160))], [InstanceData(bboxes=boxes, scores=rpn_scores)], test_cfg)[0]
    expected = ((cls[:, 0] - cls[:, 1]).sigmoid() * rpn_scores).sqrt()
    assert len(res.scores) == 4
    assert torch.allclose(res.scores.sort().values, expected.sort().values, atol=1e-5)
    assert head._rpn_scores is None
