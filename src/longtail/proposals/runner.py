"""The one mmengine runner of the project: ``train-proposals`` (Mask R-CNN, SOLOv2, +DCL) and ``train-freesolo``
(every self-training round) both train through :func:`run_mmengine` and export through :func:`export_model`.

What lives here, once:

* **launch**: the launcher comes from the environment (:func:`launcher_from_env`): ``none`` for one process,
  ``pytorch`` under ``torchrun`` (``WORLD_SIZE`` > 1), ``slurm`` under ``srun -n N`` (``SLURM_NTASKS`` > 1).
  Without a visible GPU the world runs on CPU with gloo (a warning says so when GPUs were asked for).
* **resume**: ``cfg.resume = True`` resumes from the work dir's ``last_checkpoint``; mmengine's own checkpoints
  are unpickled in full (:func:`own_checkpoints`, torch >= 2.6 defaults to ``weights_only=True``).
* **preemption**: :class:`PreemptionHook` turns SIGUSR1 (SLURM's ``--signal`` warning) or SIGTERM into a
  checkpoint at the end of the current iteration and a non-zero exit (:class:`Preempted`), so that a retry
  resumes from that iteration.
* **export**: rank 0 writes ``model.pth`` (the last checkpoint's weights) and ``config.py`` (the resolved config
  with an inference pipeline) atomically; the other ranks wait for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from longtail.common.distributed import launcher_from_env, rank_from_env
from longtail.common.errors import LongtailError
from longtail.common.io import atomic_path
from longtail.common.params import project_path, project_root
from longtail.common.preemption import Preempted  # noqa: F401 (the one preemption error; re-exported)

log = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
CONFIG_FILE = "config.py"
PREEMPT_SIGNALS = ("SIGUSR1", "SIGTERM")


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


def load_config(path: str | Path, param: str = "proposals.models"):
    """An mmdet config file (``_base_`` inheritance resolved); ``param`` names where its path came from."""
    from mmengine.config import Config

    path = project_path(path)
    if not path.exists():
        raise LongtailError(f"mmdet config not found: {path}; fix {param} in params.yaml")
    try:
        return Config.fromfile(str(path))
    except LongtailError:
        raise
    except Exception as e:  # syntax errors, bad _base_, failed custom_imports
        raise LongtailError(f"mmdet config {path} cannot be loaded: {e}") from e


def dataset_cfg(cfg, dl: str, ann_file: Path, test_mode: bool) -> None:
    """Point ``cfg[dl]``'s dataset at a class-agnostic COCO file whose ``file_name``s are relative to the repo."""
    ds = cfg[dl].dataset
    ds.ann_file = str(ann_file.resolve())
    ds.data_root = str(project_root())      # file_name is relative to the repository root
    ds.data_prefix = dict(img="")
    ds.metainfo = dict(classes=("object",))
    if not test_mode:
        ds.filter_cfg = dict(filter_empty_gt=True, min_size=1)


def inference_pipeline(cfg) -> list:
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


def checkpoint_hook(interval: int, max_keep_ckpts: int) -> dict:
    """CheckpointHook every ``interval`` iterations whatever the schedule (iteration- or epoch-based): at COCO
    scale an epoch is hours, and a preempted job must not lose one."""
    return dict(type="CheckpointHook", by_epoch=False, interval=int(interval), max_keep_ckpts=int(max_keep_ckpts))


def auto_scale_lr(cfg, lr_given: bool, base_batch_size: int | None) -> dict:
    """mmengine's ``auto_scale_lr``: the Runner multiplies the LR by (world size x batch per process) /
    ``base_batch_size``. ``base_batch_size`` is the total batch the LR is given for; ``None``: one process's batch
    when params set the LR (one process trains exactly as before), else the config's own (mmdet: 16, for its LR)."""
    if base_batch_size is None:
        cfg_base = (cfg.get("auto_scale_lr") or {}).get("base_batch_size")
        base_batch_size = int(cfg.train_dataloader.batch_size) if lr_given or not cfg_base else int(cfg_base)
    return dict(enable=True, base_batch_size=int(base_batch_size))


# --- launch ---------------------------------------------------------------------------------------------------

def training_device(gpus: int, what: str) -> str:
    """mmengine trains on a visible GPU, else on the CPU; ``gpus`` > 0 without one logs a warning
    (:func:`longtail.common.runtime.gpu_device`)."""
    import torch

    from longtail.common.runtime import gpu_device

    gpu_device(gpus, what)
    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_launch(cfg, launcher: str, device: str) -> None:
    """Launcher, communication backend and model wrapper of ``cfg`` for ``device``."""
    cfg.launcher = launcher
    if launcher == "none":
        return
    env_cfg = cfg.get("env_cfg") or {}
    env_cfg.setdefault("dist_cfg", {})
    env_cfg["dist_cfg"]["backend"] = "nccl" if device == "cuda" else "gloo"
    cfg.env_cfg = env_cfg
    if device == "cpu":
        # DDP of a CPU module: no device_ids (mmengine would pass [LOCAL_RANK], a GPU index)
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                                     find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
                                     device_ids=None)


def _init_cpu_world(launcher: str) -> None:
    """mmengine's launchers pin a GPU per rank (``torch.cuda.set_device``); without one the gloo world is
    started here from torchrun's variables, and the Runner finds it initialised."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if launcher != "pytorch":
        raise LongtailError(f"launcher {launcher!r} without a visible GPU: mmengine's slurm launcher needs GPUs; "
                            f"on CPU start the processes with `torchrun --nproc_per_node N` instead of `srun -n N`")
    dist.init_process_group(backend="gloo")


# --- hooks ----------------------------------------------------------------------------------------------------

def make_mlflow_hook(run, interval: int):
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


def make_preemption_hook():
    """mmengine hook: after a SIGUSR1/SIGTERM (see :meth:`signals`), every rank stops at the end of the current
    iteration, rank 0 writes ``iter_<n>.pth`` (+ ``last_checkpoint``) and :class:`Preempted` is raised."""
    from mmengine.hooks import Hook

    class PreemptionHook(Hook):
        priority = "LOWEST"          # after CheckpointHook: a regular checkpoint of this iteration is not redone

        def __init__(self):
            self.received: str | None = None

        @contextlib.contextmanager
        def signals(self):
            """Install the handlers (main thread only) for the block; a second signal gets the old handler."""
            old = {}

            def handler(signum, frame):
                name = signal.Signals(signum).name
                if self.received is not None:        # second signal: stop waiting for the iteration to end
                    signal.signal(signum, old.get(name, signal.SIG_DFL))
                    os.kill(os.getpid(), signum)
                    return
                self.received = name
                log.warning("%s received: checkpoint at the end of this iteration, then exit", name)

            for name in PREEMPT_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    try:
                        old[name] = signal.signal(sig, handler)
                    except ValueError:                # not the main thread: no handler, default behaviour
                        pass
            try:
                yield self
            finally:
                for name, h in old.items():
                    signal.signal(getattr(signal, name), h)

        def _stop_everywhere(self) -> bool:
            from mmengine import dist

            if dist.get_world_size() == 1:
                return self.received is not None
            import torch

            flag = torch.tensor([1 if self.received else 0], dtype=torch.int32)
            dist.all_reduce(flag, op="max")          # one rank signalled: all stop at the same iteration
            return bool(flag.item())

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if not self._stop_everywhere():
                return
            from mmengine import dist
            from mmengine.hooks import CheckpointHook

            it = runner.iter + 1
            ckpt = Path(runner.work_dir) / f"iter_{it}.pth"
            last = runner.message_hub.get_info("last_ckpt")   # the same on every rank (not the file system)
            if last is None or Path(last).name != ckpt.name:  # CheckpointHook did not just save this iteration
                hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
                if hooks:
                    hooks[0]._save_checkpoint(runner)  # also updates last_checkpoint and max_keep_ckpts
                else:
                    runner.save_checkpoint(runner.work_dir, f"iter_{it}.pth", save_optimizer=True,
                                           save_param_scheduler=True)
                    if dist.is_main_process():
                        (Path(runner.work_dir) / "last_checkpoint").write_text(str(ckpt))
            dist.barrier()                            # rank 0 has written it before anyone exits
            raise Preempted(f"training in {runner.work_dir} stopped by {self.received or 'a signal on another rank'}"
                            f" at iteration {it}: checkpoint {ckpt.name} written; rerun the same command (Snakemake:"
                            f" retries) to resume from it")

    return PreemptionHook()


# --- run + export ---------------------------------------------------------------------------------------------

def run_mmengine(cfg, work_dir: str | Path, run, log_interval: int, *, cfg_file: str, gpus: int = 0,
                 what: str = "training") -> tuple[Any, Any]:
    """Build mmengine's Runner from ``cfg``, register the MLflow and preemption hooks, train; returns
    ``(runner, mlflow_hook)``. A work dir with a ``last_checkpoint`` resumes from it; otherwise ``cfg.load_from``
    (if set: e.g. the previous FreeSOLO round's ``model.pth``) initialises the weights of a new run. ``gpus``: GPUs the params ask for (0 = CPU);
    the launcher and the world come from the environment (torchrun / srun), see :func:`launcher_from_env`."""
    from mmengine.runner import Runner

    work_dir = Path(work_dir)
    cfg.work_dir = str(work_dir.resolve())
    if cfg.get("load_from") and not (work_dir / "last_checkpoint").exists():
        cfg.resume = False       # a new run initialised from these weights (mmengine's resume=True would "resume"
    else:                        # from them and fail: a model.pth has no optimizer / message hub)
        cfg.load_from = None
        cfg.resume = True        # from the work dir's last checkpoint, if any
    launcher = launcher_from_env()
    device = training_device(gpus, what)
    apply_launch(cfg, launcher, device)
    preempt = make_preemption_hook()
    with preempt.signals():
        if launcher != "none" and device == "cpu":
            _init_cpu_world(launcher)
        try:
            runner = Runner.from_cfg(cfg)
        except LongtailError:
            raise
        except (KeyError, TypeError, ValueError, AssertionError) as e:
            raise LongtailError(f"{cfg_file}: cannot build the runner from the config ({type(e).__name__}: {e}); "
                                f"check the keys named there") from e
        hook = make_mlflow_hook(run, int(log_interval))    # ranks > 0: an inactive run (tracking)
        runner.register_hook(hook)
        runner.register_hook(preempt)
        with own_checkpoints():
            runner.train()
    return runner, hook


def is_main_process() -> bool:
    """Rank 0 of the training world (True outside one)."""
    from mmengine import dist

    return dist.is_main_process() if dist.is_distributed() else rank_from_env() == 0


def barrier() -> None:
    from mmengine import dist

    dist.barrier()


def export_model(cfg, work_dir: str | Path) -> Path:
    """Rank 0: the last checkpoint's weights -> ``work_dir/model.pth``, the resolved config (``cfg``, updated in
    place) with an inference pipeline -> ``work_dir/config.py`` (both atomic); every rank returns once they exist."""
    import torch

    work_dir = Path(work_dir)
    if is_main_process():
        last = work_dir / "last_checkpoint"
        if not last.exists():
            raise LongtailError(f"{work_dir}: training wrote no checkpoint (last_checkpoint missing)")
        state = torch.load(Path(last.read_text().strip()), map_location="cpu", weights_only=False)
        with atomic_path(work_dir / MODEL_FILE) as tmp:
            torch.save({"state_dict": state["state_dict"], "meta": state.get("meta", {})}, tmp)
        cfg.test_dataloader = dict(batch_size=1, num_workers=0, dataset=dict(
            type="CocoDataset", pipeline=inference_pipeline(cfg), metainfo=dict(classes=("object",))))
        cfg.load_from = None          # the weights are model.pth
        cfg.launcher = "none"         # inference is one process
        cfg.pop("model_wrapper_cfg", None)
        with atomic_path(work_dir / CONFIG_FILE) as tmp:
            cfg.dump(str(tmp))
    barrier()
    return work_dir / MODEL_FILE
