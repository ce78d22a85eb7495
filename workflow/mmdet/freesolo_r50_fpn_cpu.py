# FreeSOLO (Wang et al. 2022, 3.3): the class-agnostic SOLOv2 of the proposal stage trained on coarse pseudo-masks
# with the weak mask loss L_mask = alpha L_avg-proj + L_max-proj + L_pairwise (alpha = 0.1) and self-training.
# Schedule, input scale, batch, LR and the weak-loss parameters come from params.yaml (annotation_free.freesolo).
_base_ = './solov2_r50_fpn_cpu.py'

custom_imports = dict(imports=['longtail.proposals.annotation_free.freesolo_head'], allow_failed_imports=False)

# CPU profile: a light head (128 instead of 512 channels, 2 instead of 4 stacked convs, 128-d mask features);
# the HPC config (freesolo_r50_fpn_1x_coco.py) keeps SOLOv2's head.
model = dict(
    type='FreeSOLO',
    mask_head=dict(
        type='FreeSOLOv2Head',
        feat_channels=128,
        stacked_convs=2,
        mask_feature_head=dict(feat_channels=64, out_channels=128),
        # weak_loss (alpha, BoxInst pairwise term, warm-up) is set from params.yaml (annotation_free.freesolo.weak_loss)
    ),
    # fewer candidate masks upsampled to the image size at inference (CPU)
    test_cfg=dict(nms_pre=100))
