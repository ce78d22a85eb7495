"""Label assignment for training on pseudo ground truth: a pseudo-object is never background.

``proposals.train.pseudo.mode: ignore`` adds an annotation-free method's proposals (those that match no base
annotation) to the training set as ignored instances (``iscrowd: 1``, mmdet's ``ignored_instances``). mmdet's
``MaxIoUAssigner`` ignores a candidate whose IoF with an ignored box exceeds ``ignore_iof_thr``: every anchor
*inside* the box, positives of the objects within it included, which for large regions (a UCM region of
grass with a person on it) removes the annotated object's positives too. ``PseudoIgnoreAssigner`` only takes the
label *background* away: a candidate the plain assignment made a negative and whose IoU with an ignored box is
at least ``ignore_iou_thr`` is ignored (no loss); positives and the other negatives are as before. The
unlabelled novel objects a base-only training would learn as background (docs/benchmarks-proposals.md) are then
neither taught as objects nor as background.

Select it in a config (``custom_imports`` ``longtail.proposals.assigners``; ``train_cfg.rpn.assigner`` and
``train_cfg.rcnn.assigner`` of ``type='PseudoIgnoreAssigner'``), as
``workflow/mmdet/maskrcnn_effl0_adamw_pseudo_fpn_cpu.py`` does.
"""

from __future__ import annotations

from mmdet.models.task_modules.assigners import AssignResult, MaxIoUAssigner
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData


@TASK_UTILS.register_module()
class PseudoIgnoreAssigner(MaxIoUAssigner):
    """``MaxIoUAssigner`` whose ignored instances turn matching negatives into ignored candidates (``gt_inds``
    -1 instead of 0), at IoU >= ``ignore_iou_thr``; mmdet's IoF-based ignoring (``ignore_iof_thr``) is off."""

    def __init__(self, *args, ignore_iou_thr: float = 0.5, **kwargs):
        if kwargs.get("ignore_iof_thr", -1) > 0:
            raise ValueError("PseudoIgnoreAssigner: set ignore_iou_thr, not ignore_iof_thr (mmdet's IoF ignoring "
                             "would also ignore the positives inside an ignored box)")
        if not 0.0 < ignore_iou_thr <= 1.0:
            raise ValueError(f"PseudoIgnoreAssigner: ignore_iou_thr={ignore_iou_thr} must be in (0, 1]")
        super().__init__(*args, **kwargs)
        self.ignore_iou_thr = float(ignore_iou_thr)

    def assign(self, pred_instances: InstanceData, gt_instances: InstanceData,
               gt_instances_ignore: InstanceData | None = None, **kwargs) -> AssignResult:
        result = super().assign(pred_instances, gt_instances, None, **kwargs)
        if gt_instances_ignore is None or len(gt_instances_ignore) == 0 or result.gt_inds.numel() == 0:
            return result
        ignore = gt_instances_ignore.bboxes
        priors = pred_instances.priors
        overlaps = self.iou_calculator(priors, ignore.to(priors.device))
        hit = overlaps.max(dim=1).values >= self.ignore_iou_thr
        result.gt_inds[hit.to(result.gt_inds.device) & (result.gt_inds == 0)] = -1
        return result
