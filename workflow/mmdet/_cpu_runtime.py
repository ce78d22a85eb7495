# Shared CPU runtime of the *_cpu.py configs (sample data): small keep-ratio input scale, no workers, an
# iteration schedule with linear warm-up, light logging and checkpoints. The keys carry a `cpu_` prefix so this
# file can sit beside an HPC base in `_base_` (mmengine forbids duplicate keys among bases); each CPU config
# assigns them with `{{_base_.cpu_...}}`. Scale, iterations, batch, LR and init are overridden from params.yaml
# by `longtail train-proposals` / `longtail train-freesolo`.
cpu_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
cpu_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
cpu_train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=cpu_train_pipeline))
cpu_val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=cpu_test_pipeline))
cpu_train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=120, val_interval=120)
cpu_param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=20)]
cpu_default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(by_epoch=False, interval=40, max_keep_ckpts=1),
    visualization=dict(draw=False))
cpu_log_processor = dict(by_epoch=False, window_size=5)
