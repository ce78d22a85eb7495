"""What the embedding stage reads: a proposal set (top proposals per image) and a trained embedding network."""

from __future__ import annotations

from pathlib import Path

from longtail.common import LongtailError


def load_proposal_set(path: str, n_per_image: int | None):
    """(index, kept records, their positions in proposals.json, image table) of a proposal set."""
    from longtail.embedding.sampling import top_per_image
    from longtail.proposals.format import read_proposals

    index, records = read_proposals(path)
    if not records:
        raise LongtailError(f"{path}/proposals.json: no proposals at all; check the proposal stage's output.")
    for key in ("image_id", "segmentation", "score"):
        if key not in records[0]:
            raise LongtailError(f"{path}/proposals.json: records lack '{key}'; not the shared proposal format.")
    images = {int(im["id"]): im for im in index.get("images", [])}
    ids = top_per_image(records, n_per_image)
    index = {**index, "proposals_in_file": len(records)}
    return index, [records[i] for i in ids], ids, images


def load_model(path: str, gpu: int):
    """(network on its device in eval mode, the saved state: config, space, curvature ...) of a model.pt of
    `longtail train-embedding`; ``gpu`` is the params ``gpu`` count (0 = CPU)."""
    import torch

    from longtail.common.runtime import gpu_device
    from longtail.embedding.train import build_model

    p = Path(path)
    if not p.exists():
        raise LongtailError(f"--model {p}: not found; run `longtail train-embedding` first.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
        cfg = state["config"]
    except Exception as e:
        raise LongtailError(f"--model {p}: not a train-embedding model ({e}); retrain it.") from e
    cfg = {**cfg, "backbone_checkpoint": None}   # the weights come from the state dict
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.to(gpu_device(gpu, "embed")).eval()
    return model, state
