# CPU profile (issue 17 measurement, not the default): ./maskrcnn_effl0_adamw_fpn_cpu.py with OLN's
# localisation-quality scores (longtail/proposals/oln.py): the RPN score is the anchor's centerness and the RoI
# score the box's IoU, both learned on positives only, so the unlabelled novel objects of the base-only training
# images are never trained as background. Run it with --set proposals.train.lr=0.0003 (docs/benchmarks-proposals.md).
_base_ = './maskrcnn_effl0_adamw_fpn_cpu.py'
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite', 'longtail.proposals.mask_head',
                               'longtail.proposals.oln'], allow_failed_imports=False)

model = dict(rpn_head=dict(type='OlnRPNHead', loss_objectness_weight=1.0),
             roi_head=dict(type='OlnRoIHead', bbox_head=dict(type='OlnBBoxHead', loss_iou_weight=1.0)))
