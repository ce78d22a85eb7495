# CPU profile (issue 17 measurement, not the default): ./maskrcnn_effl0_adamw_fpn_cpu.py with OLN's
# localisation-quality scores (longtail/proposals/oln.py): the RPN score is the anchor's centerness and the RoI
# score the box's IoU, both learned on positives only, so the unlabelled novel objects of the base-only training
# images are never trained as background; a box's final score is sqrt(centerness x IoU).
# Run it with --set proposals.train.lr=0.0003 (docs/benchmarks-proposals.md).
_base_ = './maskrcnn_effl0_adamw_fpn_cpu.py'
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite', 'longtail.proposals.mask_head',
                               'longtail.proposals.oln'], allow_failed_imports=False)

model = dict(
    rpn_head=dict(type='OlnRPNHead', loss_objectness_weight=1.0),
    roi_head=dict(type='OlnRoIHead', bbox_head=dict(type='OlnBBoxHead', loss_iou_weight=1.0)),
    # OLN's objectness targets: anchors with IoU > 0.3 to a GT box, 256 an image, positives only (no background)
    train_cfg=dict(rpn=dict(
        objectness_assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.3, neg_iou_thr=0.1, min_pos_iou=0.3,
                                 ignore_iof_thr=-1),
        objectness_sampler=dict(type='RandomSampler', num=256, pos_fraction=1.0, neg_pos_ub=-1,
                                add_gt_as_proposals=False))))
