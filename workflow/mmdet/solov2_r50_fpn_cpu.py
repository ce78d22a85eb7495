# CPU profile (sample data): class-agnostic SOLOv2 with random-init (or hierarchy-pretrained) backbone, small
# input scale and an iteration schedule; scale/iterations/batch/LR/init come from params.yaml (proposals.train).
_base_ = './solov2_r50_fpn_agnostic_1x_coco.py'

model = dict(
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False),
    test_cfg=dict(nms_pre=300))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=120, val_interval=120)
param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=20)]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(by_epoch=False, interval=40, max_keep_ckpts=1),
    visualization=dict(draw=False))
log_processor = dict(by_epoch=False, window_size=5)
