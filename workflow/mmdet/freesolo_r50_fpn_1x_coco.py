# HPC profile: FreeSOLO on COCO train2017 (+ unlabeled2017) pseudo-masks, inheriting the proposal stage's
# class-agnostic SOLOv2 1x config (Wang et al. 2022, 4.1: alpha = 0.1, copy-paste augmentation, 10k warm-up).
_base_ = './solov2_r50_fpn_agnostic_1x_coco.py'

custom_imports = dict(imports=['longtail.proposals.annotation_free.freesolo_head'], allow_failed_imports=False)

model = dict(
    type='FreeSOLO',
    # weak_loss (alpha, pairwise term, warm-up) is set from params.yaml (annotation_free.freesolo.weak_loss)
    mask_head=dict(type='FreeSOLOv2Head'))
