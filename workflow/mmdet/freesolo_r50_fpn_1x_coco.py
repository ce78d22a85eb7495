# HPC profile: FreeSOLO on COCO train2017 (+ unlabeled2017) pseudo-masks, inheriting the proposal stage's
# class-agnostic SOLOv2 1x config (Wang et al. 2022, 4.1: alpha = 0.1, copy-paste augmentation, 10k warm-up).
_base_ = './solov2_r50_fpn_agnostic_1x_coco.py'

custom_imports = dict(imports=['longtail.proposals.annotation_free.freesolo_head'], allow_failed_imports=False)

model = dict(
    type='FreeSOLO',
    mask_head=dict(
        type='FreeSOLOv2Head',
        weak_loss=dict(alpha=0.1, pairwise_weight=1.0, kernel_size=3, dilation=2, color_thr=0.3,
                       warmup_iters=10000)))
