# CPU profile (sample data): class-agnostic SOLOv2 with random-init (or hierarchy-pretrained) backbone, small
# input scale and an iteration schedule; scale/iterations/batch/LR/init come from params.yaml (proposals.train).
_base_ = ['./solov2_r50_fpn_agnostic_1x_coco.py', './_cpu_runtime.py']

model = dict(
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    test_cfg=dict(nms_pre=300))

train_pipeline = {{_base_.cpu_train_pipeline}}
test_pipeline = {{_base_.cpu_test_pipeline}}
train_dataloader = {{_base_.cpu_train_dataloader}}
val_dataloader = {{_base_.cpu_val_dataloader}}
test_dataloader = val_dataloader
train_cfg = {{_base_.cpu_train_cfg}}
param_scheduler = {{_base_.cpu_param_scheduler}}
default_hooks = {{_base_.cpu_default_hooks}}
log_processor = {{_base_.cpu_log_processor}}
optim_wrapper = dict(optimizer=dict(lr=0.01))
