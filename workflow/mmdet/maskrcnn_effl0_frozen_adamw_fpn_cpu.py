# CPU profile (issue 17 measurement, not the default): ./maskrcnn_effl0_fpn_cpu.py with the whole ImageNet
# EfficientNet-Lite0 frozen (frozen_stages=4: every stage the FPN reads; only FPN, RPN and RoI heads train, and no
# backward pass through the backbone) and AdamW for the from-scratch heads. params.yaml's proposals.train.lr
# overrides the optimizer's lr: run it with --set proposals.train.lr=0.0003 (the measured setting;
# docs/benchmarks-proposals.md), not the SGD default 0.01. `init: random` unfreezes the backbone.
_base_ = './maskrcnn_effl0_fpn_cpu.py'

model = dict(backbone=dict(frozen_stages=4))
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=3e-4, weight_decay=0.05),
                     clip_grad=dict(max_norm=35, norm_type=2))
