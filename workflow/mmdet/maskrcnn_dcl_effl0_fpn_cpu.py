# CPU profile with the dense contrastive loss (Chen et al. 2022) on the ImageNet EfficientNet-Lite0 backbone:
# the DCL on/off ablation compares this config with ./maskrcnn_effl0_fpn_cpu.py on the same data and schedule.
_base_ = './maskrcnn_effl0_fpn_cpu.py'
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite', 'longtail.proposals.dcl'],
                      allow_failed_imports=False)

model = dict(
    roi_head=dict(
        mask_head=dict(
            type='DCLFCNMaskHead',
            loss_dcl=dict(loss_weight=1.2, temperature=0.07, num_samples=32, proj_dim=128))))
