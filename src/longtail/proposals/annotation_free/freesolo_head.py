"""Self-supervised SOLO (Wang et al. 2022, FreeSOLO §3.3): SOLOv2 trained on coarse pseudo-masks.

Registered in mmdet's MODELS registry:

* ``FreeSOLOv2Head`` (a ``SOLOV2Head``): the full-mask Dice loss is replaced by the weak mask loss (Eq. 7)

      L_mask = alpha * L_avg-proj + L_max-proj + L_pairwise,   alpha = 0.1

  L_max-proj / L_avg-proj: Dice loss between the x- and y-projections (max / mean along each axis) of the
  predicted and the coarse masks (Eq. 5-6); L_pairwise: BoxInst's colour-affinity term: neighbours (kernel 3,
  dilation 2) whose Lab colour similarity exp(-||c_i - c_j|| / 2) >= 0.3 should share the label; restricted to
  the coarse mask's box, ramped up linearly over ``warmup_iters``.
* ``FreeSOLO`` (a ``SOLOv2`` detector): hands the Lab colour similarities of the input images to the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads.solov2_head import SOLOV2Head
from mmdet.models.detectors.solov2 import SOLOv2
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS

from longtail.proposals.annotation_free.weak_losses import (
    box_bitmasks,
    color_similarity,
    pairwise_loss,
    projection_losses,
    rgb_to_lab,
)

# ---- head and detector ---------------------------------------------------------------------------------------

@MODELS.register_module()
class FreeSOLOv2Head(SOLOV2Head):
    """SOLOv2 head with FreeSOLO's weak mask loss (Eq. 7); inference is SOLOv2's."""

    def __init__(self, *args, weak_loss: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        w = dict(alpha=0.1, pairwise_weight=1.0, kernel_size=3, dilation=2, color_thr=0.3, warmup_iters=1000)
        w.update(weak_loss or {})
        self.weak = w
        self.register_buffer("train_iter", torch.zeros((), dtype=torch.long))
        self._color_sim: torch.Tensor | None = None       # set by FreeSOLO.loss for the current batch

    def set_color_similarity(self, sim: torch.Tensor | None) -> None:
        self._color_sim = sim

    def loss_by_feat(self, mlvl_kernel_preds, mlvl_cls_preds, mask_feats, batch_gt_instances, batch_img_metas,
                     **kwargs) -> dict:
        w = self.weak
        featmap_sizes = mask_feats.size()[-2:]
        pos_mask_targets, labels, _, pos_indexes = multi_apply(
            self._get_targets_single, batch_gt_instances, featmap_sizes=featmap_sizes)

        preds, targets, img_ids = [], [], []
        for lvl, lvl_kernel_preds in enumerate(mlvl_kernel_preds):
            for img_id in range(len(batch_gt_instances)):
                idx = pos_indexes[img_id][lvl]
                if len(idx) == 0:
                    continue
                kernels = lvl_kernel_preds[img_id].view(lvl_kernel_preds.shape[1], -1)[:, idx]
                feats = mask_feats[[img_id]]
                h, w_ = feats.shape[-2:]
                n = kernels.shape[1]
                preds.append(F.conv2d(feats, kernels.permute(1, 0).view(n, -1, self.dynamic_conv_size,
                                                                        self.dynamic_conv_size)).view(-1, h, w_))
                targets.append(pos_mask_targets[img_id][lvl])
                img_ids += [img_id] * n
        num_pos = len(img_ids)
        loss_weight = float(getattr(self.loss_mask, "loss_weight", 1.0))
        if num_pos:
            logits = torch.cat(preds)
            tgt = torch.cat(targets).to(logits.device)
            probs = logits.sigmoid()
            l_max, l_avg = projection_losses(probs, tgt)
            loss_proj = loss_weight * (w["alpha"] * l_avg + l_max).sum() / num_pos
            loss_pair = logits.sum() * 0
            if self._color_sim is not None and w["pairwise_weight"] > 0:
                sim = self._color_sim.to(logits.device)
                if sim.shape[-2:] != logits.shape[-2:]:
                    sim = F.interpolate(sim, size=logits.shape[-2:], mode="nearest")
                sim = sim[torch.as_tensor(img_ids, device=logits.device)]
                weights = (sim >= w["color_thr"]).float() * box_bitmasks(tgt)[:, None]
                warm = min(float(self.train_iter.item()) / max(w["warmup_iters"], 1), 1.0)
                loss_pair = w["pairwise_weight"] * warm * pairwise_loss(logits, weights, w["kernel_size"],
                                                                        w["dilation"])
        else:
            loss_proj = loss_pair = mask_feats.sum() * 0
        if self.training:
            self.train_iter += 1

        flatten_labels = torch.cat([torch.cat([lab.flatten() for lab in lvl_labels])
                                    for lvl_labels in zip(*labels)])
        flatten_cls = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, self.num_classes) for p in mlvl_cls_preds])
        loss_cls = self.loss_cls(flatten_cls, flatten_labels, avg_factor=num_pos + 1)
        return dict(loss_mask_proj=loss_proj, loss_mask_pairwise=loss_pair, loss_cls=loss_cls)


@MODELS.register_module()
class FreeSOLO(SOLOv2):
    """SOLOv2 whose loss passes the images' Lab colour similarities (at the mask-feature stride) to the head."""

    def loss(self, batch_inputs, batch_data_samples, **kwargs):
        head = self.mask_head
        if isinstance(head, FreeSOLOv2Head) and head.weak["pairwise_weight"] > 0:
            dp = self.data_preprocessor
            # the preprocessor converted BGR -> RGB, then normalised: undo the normalisation only
            rgb = batch_inputs * dp.std + dp.mean if getattr(dp, "_enable_normalize", True) else batch_inputs
            s = head.mask_stride
            small = F.avg_pool2d(rgb, kernel_size=s, stride=s, ceil_mode=True)
            head.set_color_similarity(color_similarity(rgb_to_lab(small), head.weak["kernel_size"],
                                                       head.weak["dilation"]))
        try:
            return super().loss(batch_inputs, batch_data_samples, **kwargs)
        finally:
            if isinstance(head, FreeSOLOv2Head):
                head.set_color_similarity(None)
