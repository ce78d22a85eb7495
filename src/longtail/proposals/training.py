"""Training of class-agnostic proposal networks with mmengine's Runner (Weng et al. 3.1/4.1).

The mmdet config (``proposals.models.<name>``) fixes the architecture; ``params.yaml`` (``proposals.train``,
``proposals.dcl``) fixes the schedule, input scale, init and loss weights (a ``null`` keeps the config's value,
which is how the HPC configs keep their 1x epoch schedule). The training set is rewritten class-agnostic with
novel annotations removed; images without annotations are skipped by mmdet's ``filter_empty_gt``.
Resuming: the Runner resumes from the last checkpoint of the work dir (``resume=True``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from longtail.common.params import project_path, project_root
from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path, write_json
from longtail.common.tracking import StageRun
from longtail.proposals.datasets import (
    category_splits,
    class_agnostic,
    images_with_annotations,
    load_coco,
    subset,
)

log = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
CONFIG_FILE = "config.py"


@contextlib.contextmanager
def own_checkpoints():
    """torch >= 2.6 loads with ``weights_only=True`` by default; mmengine's checkpoints (written by this stage,
    so trusted) pickle its message hub (HistoryBuffer, numpy scalars), so resuming needs full unpickling."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def load_config(path: str | Path):
    from mmengine.config import Config

    path = project_path(path)
    if not path.exists():
        raise LongtailError(f"mmdet config not found: {path}; fix proposals.models in params.yaml")
    try:
        return Config.fromfile(str(path))
    except LongtailError:
        raise
    except Exception as e:  # syntax errors, bad _base_, failed custom_imports
        raise LongtailError(f"mmdet config {path} cannot be loaded: {e}") from e


def write_agnostic_json(src: str | Path, dst: Path, *, base_only: bool) -> dict:
    """Class-agnostic copy of a COCO set (novel annotations dropped when ``base_only``); returns stats."""
    d = load_coco(src)
    if base_only:
        try:
            d = subset(d, category_splits(d, str(src))["base"])
        except LongtailError:
            log.warning("%s: categories carry no base/novel split; training on all its annotations", src)
    agn = class_agnostic(d)
    write_json(dst, agn, indent=None)
    return {"images": len(agn["images"]), "images_with_annotations": len(images_with_annotations(agn)),
            "annotations": sum(1 for a in agn["annotations"] if not a.get("iscrowd", 0))}


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
        cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False,
                                            interval=int(t["checkpoint_interval"]), max_keep_ckpts=1)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=int(t["log_interval"]))
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    if t["batch_size"] is not None:
        cfg.train_dataloader.batch_size = int(t["batch_size"])
    cfg.train_dataloader.num_workers = int(t["num_workers"])
    cfg.train_dataloader.persistent_workers = int(t["num_workers"]) > 0
    if t["lr"] is not None:
        _check_type(cfg_file, "optim_wrapper.optimizer", cfg.optim_wrapper.get("optimizer"), (dict,))
        cfg.optim_wrapper.optimizer.lr = float(t["lr"])
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


def _dataset_cfg(cfg, dl: str, ann_file: Path, test_mode: bool) -> None:
    ds = cfg[dl].dataset
    ds.ann_file = str(ann_file.resolve())
    ds.data_root = str(project_root())      # file_name is relative to the repository root
    ds.data_prefix = dict(img="")
    ds.metainfo = dict(classes=("object",))
    if not test_mode:
        ds.filter_cfg = dict(filter_empty_gt=True, min_size=1)


def hierarchy_init(cfg, ckpt: Path, work_dir: Path, required: bool) -> int:
    """Backbone init from the hierarchy stage's pixel-embedding checkpoint: copy every tensor whose name and
    shape match the mmdet backbone into ``work_dir/hierarchy_backbone.pth`` and point ``init_cfg`` at it.
    Returns the number of tensors transferred (0 = random init)."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    if not ckpt.exists():
        if required:
            raise LongtailError(f"proposals.train.init=hierarchy but {ckpt} does not exist; run "
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


def make_mlflow_hook(run: StageRun, interval: int):
    """mmengine hook: training losses and LR every ``interval`` iterations, validation metrics -> MLflow."""
    from mmengine.hooks import Hook

    class MLflowStageHook(Hook):
        priority = "LOW"

        def __init__(self):
            self.last: dict[str, float] = {}
            self.start_iter = 0

        def before_train(self, runner):
            self.start_iter = int(runner.iter)  # > 0 when resumed from a checkpoint

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            it = runner.iter + 1
            if not outputs or (it % interval and it != runner.max_iters):
                return
            m = {f"train/{k}": float(v.detach() if hasattr(v, "detach") else v) for k, v in outputs.items()}
            lr = runner.optim_wrapper.get_lr()
            m["train/lr"] = float(next(iter(lr.values()))[0])
            self.last.update(m)
            run.log_metrics(m, step=it)

        def after_val_epoch(self, runner, metrics=None):
            m = {f"val/{k.replace('/', '_')}": float(v) for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float))}
            self.last.update(m)
            run.log_metrics(m, step=runner.iter)

    return MLflowStageHook()


def train(model: str, pcfg: dict, seed: int, train_json: str, val_json: str | None, work_dir: str | Path,
          run: StageRun) -> dict:
    """Train (or resume) ``model``; write ``config.py`` and ``model.pth`` into ``work_dir``; return metrics."""
    import torch
    from mmengine.runner import Runner

    cfg_file = pcfg["models"][model]
    cfg = load_config(cfg_file)
    work_dir = Path(work_dir)
    (work_dir / "data").mkdir(parents=True, exist_ok=True)

    stats = write_agnostic_json(train_json, work_dir / "data" / "train_agnostic.json", base_only=True)
    if stats["images_with_annotations"] == 0:
        raise LongtailError(f"{train_json}: no image has a (base-category, non-crowd) annotation; the training "
                            f"set is empty. Check `longtail prepare` and data.base_categories")
    apply_params(cfg, pcfg, seed, cfg_file)
    _dataset_cfg(cfg, "train_dataloader", work_dir / "data" / "train_agnostic.json", test_mode=False)
    if val_json:
        write_agnostic_json(val_json, work_dir / "data" / "val_agnostic.json", base_only=False)
        _dataset_cfg(cfg, "val_dataloader", work_dir / "data" / "val_agnostic.json", test_mode=True)
        cfg.val_evaluator = dict(type="CocoMetric", ann_file=str((work_dir / "data" / "val_agnostic.json").resolve()),
                                 metric=["bbox", "segm"], format_only=False)
        cfg.val_cfg = dict(type="ValLoop")
    else:
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.train_cfg.pop("val_interval", None)
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None

    init = pcfg["train"]["init"]
    n_init = 0
    if init in ("auto", "hierarchy"):
        cfg.model.backbone.init_cfg = None
        n_init = hierarchy_init(cfg, project_path(pcfg["train"]["hierarchy_checkpoint"]), work_dir,
                                required=init == "hierarchy")
    elif init == "random":
        cfg.model.backbone.init_cfg = None
    cfg.work_dir = str(work_dir.resolve())
    cfg.resume = True
    cfg.load_from = None
    cfg.launcher = "none"

    try:
        runner = Runner.from_cfg(cfg)
    except LongtailError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise LongtailError(f"{cfg_file}: cannot build the runner from the config ({type(e).__name__}: {e}); "
                            f"check the keys named there") from e
    hook = make_mlflow_hook(run, int(pcfg["train"]["log_interval"]))
    runner.register_hook(hook)
    with own_checkpoints():
        runner.train()

    # final weights + the resolved config, for `longtail propose`
    last = work_dir / "last_checkpoint"
    if not last.exists():
        raise LongtailError(f"{work_dir}: training wrote no checkpoint (last_checkpoint missing)")
    ckpt_path = Path(last.read_text().strip())
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    with atomic_path(work_dir / MODEL_FILE) as tmp:
        torch.save({"state_dict": state["state_dict"], "meta": state.get("meta", {})}, tmp)
    cfg.test_dataloader = dict(batch_size=1, num_workers=0, dataset=dict(
        type="CocoDataset", pipeline=_test_pipeline(cfg), metainfo=dict(classes=("object",))))
    with atomic_path(work_dir / CONFIG_FILE) as tmp:
        cfg.dump(str(tmp))
    metrics = {"model": model, "config": cfg_file, "iterations": int(runner.iter), "start_iter": hook.start_iter,
               "backbone_init_tensors": n_init,
               "train_images_with_annotations": stats["images_with_annotations"],
               "train_annotations": stats["annotations"], **hook.last}
    return metrics


def _test_pipeline(cfg) -> list:
    """Inference pipeline: the train pipeline minus annotations and augmentation."""
    out = []
    for t in cfg.train_dataloader.dataset.pipeline:
        if t["type"] in ("LoadAnnotations", "RandomFlip"):
            continue
        if t["type"] == "PackDetInputs":
            t = dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                                      "scale_factor"))
        out.append(t)
    return out
