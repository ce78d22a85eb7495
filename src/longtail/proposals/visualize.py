"""Report picture: proposals overlaid on a few images."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from longtail.common.io import atomic_path
from longtail.common.masks import decode_mask


def overlay_figure(dataset: dict, records: list[dict], out: str | Path, *, num_images: int = 4, per_image: int = 10,
                   title: str = "proposals") -> Path:
    """Top ``per_image`` proposals (random colours, score-sorted) on the first images that have proposals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        by_image[int(r["image_id"])].append(r)
    ims = [im for im in dataset["images"] if by_image.get(int(im["id"]))][:num_images] or dataset["images"][:1]
    fig, axes = plt.subplots(1, max(len(ims), 1), figsize=(4 * max(len(ims), 1), 4), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, im in zip(axes[0], ims):
        img = np.asarray(Image.open(im["file_name"]).convert("RGB"), dtype=float) / 255.0
        recs = sorted(by_image.get(int(im["id"]), []), key=lambda r: -r["score"])[:per_image]
        for r in recs[::-1]:
            m = decode_mask(r["segmentation"])
            if m.shape != img.shape[:2]:
                continue
            img[m] = 0.5 * img[m] + 0.5 * rng.random(3)
        ax.imshow(img)
        ax.set_title(f"{Path(im['file_name']).name}: {len(by_image.get(int(im['id']), []))} props", fontsize=8)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return Path(out)
