# CPU profile (sample data): the HPC config with a random-init (or hierarchy-pretrained) backbone, small input
# scale, lighter RoI sampling and an iteration schedule. Input scale, iterations, batch size, LR and init come
# from params.yaml (proposals.train) and are applied by `longtail train-proposals`.
_base_ = './maskrcnn_r50_fpn_agnostic_1x_coco.py'

model = dict(
    backbone=dict(
        init_cfg=None,            # random init; train-proposals swaps in the hierarchy backbone when present
        frozen_stages=-1,         # nothing pretrained to freeze
        norm_eval=False),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

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
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=35, norm_type=2))
default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(by_epoch=False, interval=40, max_keep_ckpts=1),
    visualization=dict(draw=False))
log_processor = dict(by_epoch=False, window_size=5)
