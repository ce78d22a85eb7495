# HPC profile: class-agnostic Mask R-CNN R50-FPN (Weng et al. 2021, 4.1) on the base categories of COCO
# train2017, ImageNet-initialised ResNet-50 (mmdet's torchvision://resnet50), 1x schedule, GPU.
# Inherits mmdet's own config; `longtail train-proposals` replaces ann_file/data_root with the class-agnostic
# base-only training set it writes into the work dir (every category -> "object").
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

metainfo = dict(classes=('object', ), palette=[(220, 20, 60)])

model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=1, reg_class_agnostic=True),
        mask_head=dict(num_classes=1, class_agnostic=True)),
    test_cfg=dict(
        # proposals want recall: keep low-score boxes, mask NMS + top-K happen in `longtail propose`
        rcnn=dict(score_thr=0.0, max_per_img=100)))

train_dataloader = dict(dataset=dict(metainfo=metainfo))
val_dataloader = dict(dataset=dict(metainfo=metainfo))
test_dataloader = val_dataloader
