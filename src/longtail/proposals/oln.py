"""Localisation-quality scoring for class-agnostic proposals (OLN: Kim et al. 2022, "Learning Open-World Object
Proposals without Learning to Classify"), as two small mmdet heads.

A class-agnostic Mask R-CNN trained on the base annotations learns every unlabelled object of its training images
as background: the RPN's objectness and the RoI classifier are trained with negatives, and an unlabelled novel
object is a negative. On the sample its novel AR@100 does not rise with training (docs/benchmarks-proposals.md).
OLN scores a box by how well it is localised instead, learned from positives only:

* ``OlnRPNHead``: the RPN's score channel predicts the **centerness** of an anchor's centre in its assigned
  ground-truth box, ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` (l, r, t, b: distances from the
  anchor's centre to the box's sides), with an L1 loss on the sigmoid over positive anchors only: those of the
  separate objectness assigner / sampler in ``train_cfg.rpn`` (OLN: IoU > 0.3, 256 anchors an image, no
  background), whose targets spread from 0 to 1; no loss on negatives. Box regression is the RPN's own, with its
  own assigner. At test time ``sigmoid(score)`` ranks the proposals as before.
* ``OlnBBoxHead``: the RoI head's two class logits ``(a, b)`` give ``softmax[0] = sigmoid(a - b)``; that is
  trained with an L1 loss to the **IoU** of each positive RoI with its ground-truth box (positives only), so the
  detection score mmdet computes (the softmax) is the predicted IoU. Box regression is the head's own.

* ``OlnRoIHead``: at test time a box's score is OLN's geometric mean ``sqrt(centerness x IoU)`` of its proposal's
  RPN score and the RoI head's predicted IoU.

Deviation from the paper's OLN-Box: the RPN regresses mmdet's smooth-L1 deltas of 3 anchor shapes (OLN: IoU
loss on TBLR distances of one square anchor). Select them in a
config (custom_imports ``longtail.proposals.oln``; ``rpn_head=dict(type='OlnRPNHead')``,
``roi_head=dict(type='OlnRoIHead', bbox_head=dict(type='OlnBBoxHead'))``), as
``workflow/mmdet/maskrcnn_oln_effl0_fpn_cpu.py`` does.
"""

from __future__ import annotations

import torch
from mmdet.models.dense_heads import RPNHead
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_overlaps, get_box_tensor
from torch import Tensor


def centerness(points: Tensor, boxes: Tensor) -> Tensor:
    """Centerness of each point (N, 2) in its box (N, 4: x1, y1, x2, y2): 1 at the box's centre, falling to 0 at
    its sides; 0 for a point outside its box."""
    l, t = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    r, b = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr = torch.stack([l, r], 1).clamp(min=0)
    tb = torch.stack([t, b], 1).clamp(min=0)
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    return ratio.sqrt()


@MODELS.register_module()
class OlnRPNHead(RPNHead):
    """``RPNHead`` whose score is the anchor's centerness in its ground-truth box, learned on the positives of
    ``train_cfg.objectness_assigner`` / ``objectness_sampler`` only (module docstring). ``loss_objectness_weight``
    scales the L1 loss (OLN: 1.0)."""

    def __init__(self, *args, loss_objectness_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.use_sigmoid_cls:
            raise ValueError(f"{type(self).__name__} needs loss_cls with use_sigmoid=True (one score channel)")
        self.loss_objectness_weight = float(loss_objectness_weight)
        self._num_pos = 1.0
        self._objectness_pass = False
        if self.train_cfg:
            missing = [k for k in ("objectness_assigner", "objectness_sampler") if k not in self.train_cfg]
            if missing:
                raise ValueError(f"{type(self).__name__}: train_cfg.rpn needs {' and '.join(missing)} "
                                 "(OLN: MaxIoUAssigner pos_iou_thr 0.3, RandomSampler num 256, pos_fraction 1.0)")
            self.objectness_assigner = TASK_UTILS.build(self.train_cfg["objectness_assigner"])
            self.objectness_sampler = TASK_UTILS.build(self.train_cfg["objectness_sampler"], default_args=dict(context=self))

    def get_targets(self, *args, **kwargs):
        out = super().get_targets(*args, **kwargs)
        labels_list, label_weights_list = out[0], out[1]
        # positives over all levels and images: the normaliser of each level's objectness loss
        self._num_pos = max(float(sum(((lab == 0) & (w > 0)).sum() for lab, w in zip(labels_list, label_weights_list))), 1.0)
        return out

    def loss_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, anchors: Tensor, labels: Tensor,
                            label_weights: Tensor, bbox_targets: Tensor, bbox_weights: Tensor,
                            avg_factor: int) -> tuple:
        if not self._objectness_pass:       # regression targets: the RPN's own box loss, no score loss
            _, loss_bbox = super().loss_by_feat_single(cls_score, bbox_pred, anchors, labels, label_weights,
                                                       bbox_targets, bbox_weights, avg_factor)
            return cls_score.sum() * 0, loss_bbox
        pos = ((labels == 0) & (label_weights > 0)).reshape(-1)
        score = cls_score.permute(0, 2, 3, 1).reshape(-1)[pos]
        if not pos.any():
            return score.sum(), bbox_pred.sum() * 0
        anchors = anchors.reshape(-1, anchors.size(-1))[pos]
        targets = bbox_targets.reshape(-1, bbox_targets.size(-1))[pos]
        gt = targets if self.reg_decoded_bbox else get_box_tensor(self.bbox_coder.decode(anchors, targets))
        target = centerness((anchors[:, :2] + anchors[:, 2:]) / 2, gt).detach()
        loss_obj = (score.sigmoid() - target).abs().sum() / self._num_pos * self.loss_objectness_weight
        return loss_obj, bbox_pred.sum() * 0

    def loss_by_feat(self, cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                     batch_gt_instances_ignore=None) -> dict:
        reg = super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                                   batch_gt_instances_ignore)
        # second pass: the same anchors assigned by the objectness assigner / sampler
        own = self.assigner, self.sampler
        self.assigner, self.sampler, self._objectness_pass = self.objectness_assigner, self.objectness_sampler, True
        try:
            obj = super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances, batch_img_metas,
                                       batch_gt_instances_ignore)
        finally:
            (self.assigner, self.sampler), self._objectness_pass = own, False
        return dict(loss_rpn_obj=obj["loss_rpn_cls"], loss_rpn_bbox=reg["loss_rpn_bbox"])


@MODELS.register_module()
class OlnBBoxHead(Shared2FCBBoxHead):
    """Class-agnostic ``Shared2FCBBoxHead`` whose foreground probability is trained to the IoU of each positive
    RoI with its ground-truth box (positives only; module docstring). ``loss_iou_weight``: OLN's 1.0."""

    def __init__(self, *args, loss_iou_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_classes != 1 or self.custom_cls_channels:
            raise ValueError(f"{type(self).__name__} is class-agnostic: num_classes must be 1 with softmax scores")
        self.loss_iou_weight = float(loss_iou_weight)

    def loss_and_target(self, cls_score: Tensor, bbox_pred: Tensor, rois: Tensor, sampling_results: list,
                        rcnn_train_cfg, concat: bool = True, reduction_override=None) -> dict:
        targets = self.get_targets(sampling_results, rcnn_train_cfg, concat=concat)
        losses = self.loss(None, bbox_pred, rois, *targets, reduction_override=reduction_override)
        labels = targets[0]
        pos = (labels >= 0) & (labels < self.num_classes)
        # get_targets orders each image's rows positives first, images in order: the same order as this list
        iou = torch.cat([bbox_overlaps(get_box_tensor(r.pos_priors), get_box_tensor(r.pos_gt_bboxes), is_aligned=True)
                         for r in sampling_results])
        fg = (cls_score[pos, 0] - cls_score[pos, 1]).sigmoid()
        losses["loss_iou"] = self.loss_iou_weight * ((fg - iou.detach()).abs().mean() if pos.any() else cls_score.sum() * 0)
        return dict(loss_bbox=losses, bbox_targets=targets)


@MODELS.register_module()
class OlnRoIHead(StandardRoIHead):
    """``StandardRoIHead`` whose test-time box score is ``sqrt(rpn score x predicted IoU)`` (OLN's final score);
    its bbox head must be an ``OlnBBoxHead``. Training is the standard head's."""

    _rpn_scores: Tensor | None = None

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg, rescale: bool = False):
        # the RoIs of predict_bbox are the proposals of rpn_results_list, concatenated in order
        self._rpn_scores = torch.cat([r.scores for r in rpn_results_list]) if rpn_results_list else None
        try:
            return super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg, rescale=rescale)
        finally:
            self._rpn_scores = None

    def _bbox_forward(self, x, rois: Tensor) -> dict:
        res = super()._bbox_forward(x, rois)
        if self._rpn_scores is not None:
            cls = res["cls_score"]
            iou = (cls[:, 0] - cls[:, 1]).sigmoid()
            score = (iou * self._rpn_scores.to(iou).clamp(0, 1)).sqrt().clamp(1e-6, 1 - 1e-6)
            # logits whose softmax[0] is the combined score (the bbox head's predict_by_feat applies the softmax)
            res["cls_score"] = torch.stack([torch.logit(score), torch.zeros_like(score)], 1)
        return res
