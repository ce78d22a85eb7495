"""Check that mmcv's compiled ops are importable and really run on the CPU (run by scripts/setup_env.sh after
installing; tests/conftest.py's require_mmcv_ops uses the same check). Exit 0 and print the mmcv version, or
exit 1 with what is wrong and what to do."""

from __future__ import annotations

import sys


def check_mmcv_ops() -> str:
    """Import ``mmcv.ops`` and run two compiled kernels (``nms`` and ``RoIAlign``) on the CPU against values
    computed by hand; return mmcv's version. Raises RuntimeError naming what failed."""
    try:
        import mmcv
        import torch
        from mmcv.ops import RoIAlign, nms
    except (ImportError, OSError) as e:   # no mmcv._ext (built without ops), or an ABI mismatch with torch
        raise RuntimeError(f"mmcv.ops does not import ({type(e).__name__}: {e})") from e
    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)   # IoU(0, 1) = 81 / 100
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        pooled = RoIAlign((1, 1), spatial_scale=1.0, sampling_ratio=1, aligned=False)(
            x, torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0]]))                       # one sample at (1, 1) = x[1, 1]
    except Exception as e:  # noqa: BLE001  (any failure of a compiled kernel is the message)
        raise RuntimeError(f"mmcv.ops imports but its compiled CPU ops fail ({type(e).__name__}: {e})") from e
    if keep.tolist() != [0, 2] or pooled.flatten().tolist() != [5.0]:
        raise RuntimeError(f"mmcv.ops computes wrong values: nms kept {keep.tolist()} (expected [0, 2]), "
                           f"RoIAlign gave {pooled.flatten().tolist()} (expected [5.0])")
    return str(mmcv.__version__)


if __name__ == "__main__":
    try:
        print(f"mmcv {check_mmcv_ops()}: mmcv.ops imports; nms and RoIAlign run on the CPU")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
