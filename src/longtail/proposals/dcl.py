"""Dense contrastive loss (Chen et al. 2022, 4.2-4.3) as an mmdet mask head.

``DCLFCNMaskHead`` is mmdet's ``FCNMaskHead`` plus, at training time, an InfoNCE loss over the pixels of each
positive RoI's feature map F^i (the input of the last layer, ``conv_logits``): K anchors A_i and K positives
P_i sampled uniformly from the RoI's GT mask M_i, K negatives N_i from its complement, similarity = cosine of a
learnable two-layer projection phi_theta (eq. 5), temperature tau; RoIs with |M_i| < K or |M_i bar| < K are
skipped (eq. 4). Total loss L = L_rcnn + lambda * L_contrast (eq. 6).

The loss itself (and its normalisation) is in ``dcl_loss.py``.
"""

from __future__ import annotations

import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor, nn

from longtail.proposals.dcl_loss import dense_contrastive_loss
from longtail.proposals.mask_head import AgnosticFCNMaskHead


@MODELS.register_module()
class DCLFCNMaskHead(AgnosticFCNMaskHead):
    """FCN mask head trained with the dense contrastive loss in addition to the mask BCE (``predictor_std``:
    ``AgnosticFCNMaskHead``'s predictor init; default mmdet's)."""

    #: lambda, tau, K, projection size: ``proposals.dcl`` of params.yaml (train-proposals writes them into the config)
    LOSS_KEYS = ("loss_weight", "temperature", "num_samples", "proj_dim")

    def __init__(self, *args, loss_dcl: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = dict(loss_dcl or {})
        if set(cfg) != set(self.LOSS_KEYS):
            raise ValueError(f"DCLFCNMaskHead.loss_dcl must set exactly {list(self.LOSS_KEYS)} (got {sorted(cfg)}); "
                             f"`longtail train-proposals` fills it from params.yaml proposals.dcl")
        self.dcl_weight = float(cfg["loss_weight"])
        self.dcl_temperature = float(cfg["temperature"])
        self.dcl_num_samples = int(cfg["num_samples"])
        c = self.conv_out_channels
        # learnable similarity phi_theta: two fully connected layers (eq. 5)
        self.dcl_proj = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, int(cfg["proj_dim"])))
        self._dcl_feats: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        if self.upsample is not None:
            x = self.upsample(x)
            if self.upsample_method == "deconv":
                x = self.relu(x)
        if self.training:
            self._dcl_feats = x  # F^i: input of the last layer
        return self.conv_logits(x)

    def loss_and_target(self, mask_preds, sampling_results, batch_gt_instances, rcnn_train_cfg) -> dict:
        out = super().loss_and_target(mask_preds, sampling_results, batch_gt_instances, rcnn_train_cfg)
        feats, self._dcl_feats = self._dcl_feats, None
        if feats is None or feats.shape[0] != out["mask_targets"].shape[0] or feats.shape[0] == 0:
            loss = mask_preds.sum() * 0.0
        else:
            targets = out["mask_targets"]
            if targets.shape[-2:] != feats.shape[-2:]:
                targets = F.interpolate(targets[:, None].float(), size=feats.shape[-2:], mode="nearest")[:, 0]
            loss, _ = dense_contrastive_loss(feats, targets, self.dcl_proj, num_samples=self.dcl_num_samples,
                                             temperature=self.dcl_temperature)
        out["loss_mask"]["loss_dcl"] = self.dcl_weight * loss
        return out
