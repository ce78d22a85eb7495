# CPU profile (issue 17 measurement, not the default): ./maskrcnn_effl0_adamw_fpn_cpu.py whose RPN and RoI
# assigners take pseudo ground truth as "not background": with proposals.train.pseudo.mode: ignore, the
# annotation-free proposals of the training images that match no base annotation are ignored instances, and a
# candidate that would be a negative is ignored when its IoU with one of them is >= 0.5
# (longtail/proposals/assigners.py). Run it with --set proposals.train.lr=0.0003 and --pseudo <proposal set>.
_base_ = './maskrcnn_effl0_adamw_fpn_cpu.py'
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite', 'longtail.proposals.mask_head',
                               'longtail.proposals.assigners'], allow_failed_imports=False)

model = dict(train_cfg=dict(
    rpn=dict(assigner=dict(type='PseudoIgnoreAssigner', ignore_iou_thr=0.5, ignore_iof_thr=-1)),
    rcnn=dict(assigner=dict(type='PseudoIgnoreAssigner', ignore_iou_thr=0.5, ignore_iof_thr=-1))))
