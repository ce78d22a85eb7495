# CPU profile (sample data, the default of `proposals.models.maskrcnn`): class-agnostic Mask R-CNN on the
# ImageNet-initialised EfficientNet-Lite0 of ./_effl0.py (issue 17), RoI sampling, input scale and schedule of
# ./maskrcnn_r50_fpn_cpu.py, and a lighter neck/heads for 2 CPU cores: 128 FPN/RPN/RoI channels instead of 256
# (the 4-conv mask head on the RoIs dominates training and inference; 128 channels cost a quarter; see
# docs/benchmarks-proposals.md). params.yaml (proposals.train) sets scale, iterations, batch, LR and init.
_base_ = ['./maskrcnn_r50_fpn_cpu.py', './_effl0.py']
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite', 'longtail.proposals.mask_head'],
                      allow_failed_imports=False)

width = 128
model = dict(
    data_preprocessor={{_base_.effl0_data_preprocessor}},
    backbone={{_base_.effl0_backbone}},
    neck=dict(in_channels={{_base_.effl0_neck.in_channels}}, norm_cfg={{_base_.effl0_neck.norm_cfg}},
              out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width),
        mask_roi_extractor=dict(out_channels=width),
        # the 1-channel class-agnostic predictor starts near 0 logits instead of mmdet's Kaiming fan_out = 1
        # (std 1.41, mask loss ~2 at the start): longtail/proposals/mask_head.py (DCLFCNMaskHead inherits it)
        mask_head=dict(type='AgnosticFCNMaskHead', predictor_std=0.001, in_channels=width,
                       conv_out_channels=width)))
