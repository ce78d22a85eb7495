# HPC profile with the dense contrastive loss (Chen et al. 2022) switched on in the mask head.
_base_ = './maskrcnn_r50_fpn_agnostic_1x_coco.py'
custom_imports = dict(imports=['longtail.proposals.dcl'], allow_failed_imports=False)

model = dict(
    roi_head=dict(
        mask_head=dict(
            type='DCLFCNMaskHead')))   # loss_dcl (lambda, tau, K, projection size): train-proposals, from proposals.dcl
