# CPU profile (sample data): class-agnostic SOLOv2 on the ImageNet-initialised EfficientNet-Lite0 of ./_effl0.py;
# everything else is ./solov2_r50_fpn_cpu.py's; params.yaml (proposals.train) sets scale, iterations, batch, LR
# and init.
_base_ = ['./solov2_r50_fpn_cpu.py', './_effl0.py']
custom_imports = dict(imports=['longtail.proposals.efficientnet_lite'], allow_failed_imports=False)

model = dict(
    data_preprocessor={{_base_.effl0_data_preprocessor}},
    backbone={{_base_.effl0_backbone}},
    neck={{_base_.effl0_neck}})
