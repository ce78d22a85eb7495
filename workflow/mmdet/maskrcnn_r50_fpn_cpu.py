# CPU profile (sample data): the HPC config with a random-init (or hierarchy-pretrained) backbone, small input
# scale, lighter RoI sampling and an iteration schedule. Input scale, iterations, batch size, LR and init come
# from params.yaml (proposals.train) and are applied by `longtail train-proposals`.
_base_ = ['./maskrcnn_r50_fpn_agnostic_1x_coco.py', './_cpu_runtime.py']

model = dict(
    backbone=dict(
        init_cfg=None,            # random init; train-proposals swaps in the hierarchy backbone when present
        frozen_stages=-1,         # nothing pretrained to freeze
        norm_eval=False),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_pipeline = {{_base_.cpu_train_pipeline}}
test_pipeline = {{_base_.cpu_test_pipeline}}
train_dataloader = {{_base_.cpu_train_dataloader}}
val_dataloader = {{_base_.cpu_val_dataloader}}
test_dataloader = val_dataloader
train_cfg = {{_base_.cpu_train_cfg}}
param_scheduler = {{_base_.cpu_param_scheduler}}
default_hooks = {{_base_.cpu_default_hooks}}
log_processor = {{_base_.cpu_log_processor}}
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=35, norm_type=2))
