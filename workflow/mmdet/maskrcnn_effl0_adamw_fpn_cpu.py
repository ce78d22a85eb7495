# CPU profile (issue 17 measurement, not the default): the best sample AR@100 measured on 2 CPU cores
# (docs/benchmarks-proposals.md, "AR against training iterations"). ./maskrcnn_effl0_fpn_cpu.py (ImageNet
# EfficientNet-Lite0, stem + stride-4 stages frozen, the rest fine-tuned) with AdamW for the from-scratch
# FPN / RPN / RoI heads, the backbone at a tenth of their lr (it starts from ImageNet), and RPN anchor scales
# [2, 4] instead of mmdet's [8], which leave 40% of the sample's val boxes without an anchor at IoU 0.3 at a
# 256-px input (benchmarks/anchor_coverage.py). params.yaml's proposals.train.lr overrides the optimizer's
# lr: run it with --set proposals.train.lr=0.0003 (the measured setting), not the SGD default 0.01.
_base_ = './maskrcnn_effl0_fpn_cpu.py'

model = dict(rpn_head=dict(anchor_generator=dict(scales=[2, 4])))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=3e-4, weight_decay=0.05),
                     paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}),
                     clip_grad=dict(max_norm=35, norm_type=2))
