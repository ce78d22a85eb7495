"""Class-agnostic FCN mask head with a usable initial mask predictor (issue 17).

mmdet's ``FCNMaskHead.init_weights`` initialises the last 1x1 convolution (``conv_logits``) with Kaiming normal,
``mode='fan_out'``: the fan-out is the number of mask classes, 80 on COCO (std 0.16) but 1 for a class-agnostic
head (std sqrt(2) = 1.41). With 128-256 ReLU inputs the initial logits are then of order +-10, the mask loss
starts at ~2 and SGD first spends its steps shrinking the predictor; in a CPU-sized schedule the head ends at the
constant prediction (loss ~ ln 2) and the binarised masks are chance. ``AgnosticFCNMaskHead`` initialises the
predictor as Detectron2's ``MaskRCNNConvUpsampleHead`` does (normal, std 0.001, bias 0): logits ~0 at the start,
loss ln 2 and a gradient that reaches the convolutions from the first step. Everything else is ``FCNMaskHead``.

Select it in a config (``custom_imports = dict(imports=['longtail.proposals.mask_head'])``,
``roi_head=dict(mask_head=dict(type='AgnosticFCNMaskHead', predictor_std=0.001, ...))``); ``predictor_std=None``
keeps mmdet's init (the HPC configs, as in the paper). ``DCLFCNMaskHead`` derives from it, so a config inheriting
``predictor_std`` compares DCL on/off at the same init.
"""

from __future__ import annotations

from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import MODELS
from torch import nn


def init_mask_predictor(conv_logits: nn.Module, std: float) -> None:
    """Normal(0, ``std``) weights and zero bias for the last mask convolution (Detectron2's mask predictor)."""
    nn.init.normal_(conv_logits.weight, std=std)
    if conv_logits.bias is not None:
        nn.init.constant_(conv_logits.bias, 0.0)


@MODELS.register_module()
class AgnosticFCNMaskHead(FCNMaskHead):
    """``FCNMaskHead`` whose mask predictor starts near zero (normal, ``predictor_std``) instead of Kaiming
    fan-out; ``predictor_std=None``: mmdet's init."""

    def __init__(self, *args, predictor_std: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if predictor_std is not None and not predictor_std > 0:
            raise ValueError(f"{type(self).__name__}.predictor_std must be > 0 or None (got {predictor_std})")
        self.predictor_std = None if predictor_std is None else float(predictor_std)

    def init_weights(self) -> None:
        super().init_weights()
        if self.predictor_std is not None:
            init_mask_predictor(self.conv_logits, self.predictor_std)
