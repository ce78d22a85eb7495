# HPC profile: class-agnostic SOLOv2 R50-FPN (Wang et al. 2020; the base of FreeSOLO, Wang et al. 2022) on the
# base categories of COCO train2017, ImageNet init, 1x schedule. Inherits mmdet's own config.
# The FreeSOLO config of the annotation-free stage inherits this file (or ./solov2_r50_fpn_cpu.py).
_base_ = 'mmdet::solov2/solov2_r50_fpn_1x_coco.py'

metainfo = dict(classes=('object', ), palette=[(220, 20, 60)])

model = dict(
    mask_head=dict(num_classes=1),
    # proposals want recall: low thresholds, matrix NMS only; mask NMS + top-K happen in `longtail propose`
    test_cfg=dict(score_thr=0.01, filter_thr=0.01, max_per_img=100))

train_dataloader = dict(dataset=dict(metainfo=metainfo))
val_dataloader = dict(dataset=dict(metainfo=metainfo))
test_dataloader = val_dataloader
