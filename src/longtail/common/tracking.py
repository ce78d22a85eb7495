"""MLflow tracking: one parent run per pipeline invocation, one nested run per stage.

* Tracking URI: ``$MLFLOW_TRACKING_URI`` or a sqlite file in the repository (``mlflow.db``).
* Parent run: ``$LONGTAIL_PARENT_RUN_ID`` (Snakemake's ``onstart`` creates it and exports it to every job,
  local or SLURM). Without it (a plain ``dvc repro`` or a CLI call), stages of the same code + data + params
  share one parent run found by the tag ``longtail.pipeline_key``.
* Every stage run gets: the stage's params section (flattened), its metrics, its artifacts, and tags with
  the git commit and the md5 of ``data.dvc``.
* Experiment: ``tracking.experiment`` of params.yaml; ``$LONGTAIL_EXPERIMENT`` overrides it (tests).
* ``LONGTAIL_MLFLOW=0`` turns tracking off (metrics files are still written).
* Per-step metrics (``log_metrics(..., step=s)``) are buffered and sent with ``MlflowClient.log_batch`` every
  ``StageRun.FLUSH_STEPS`` steps or ``FLUSH_SECONDS`` seconds, before any step-less metric and when the stage
  ends (also when it fails): one request per batch instead of one per step, which an ``mlflow server`` shared
  by many jobs needs at scale (docs/slurm.md).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from longtail.common.distributed import is_rank_zero
from longtail.common.io import write_json
from longtail.common.params import flatten, load_params, params_hash, project_root, section

#: ``$LONGTAIL_EXPERIMENT``: overrides ``tracking.experiment`` (None: params.yaml's value is used)
EXPERIMENT = os.environ.get("LONGTAIL_EXPERIMENT") or None
PARENT_ENV = "LONGTAIL_PARENT_RUN_ID"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def enabled() -> bool:
    """Off with ``LONGTAIL_MLFLOW=0`` and in ranks > 0 of a torchrun/srun training world (rank 0 logs for it)."""
    return os.environ.get("LONGTAIL_MLFLOW", "1") not in ("0", "false", "no") and is_rank_zero()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_root(),
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_md5() -> str:
    import yaml

    p = project_root() / "data.dvc"
    try:
        return str(yaml.safe_load(p.read_text())["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError):
        return "unknown"


def _client():
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri())


def experiment_name(params: dict | None = None) -> str:
    """``$LONGTAIL_EXPERIMENT``, else ``tracking.experiment`` of ``params`` (the whole params.yaml; loaded when
    not given)."""
    if EXPERIMENT:
        return EXPERIMENT
    if params is None or "tracking" not in params:
        params = load_params()
    return section(params, "tracking")["experiment"]


def experiment_id(client, params: dict | None = None) -> str:
    name = experiment_name(params)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    kwargs = {}
    if tracking_uri().startswith("sqlite:"):
        kwargs["artifact_location"] = (project_root() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, **kwargs)
    except Exception:  # created concurrently by another job
        return client.get_experiment_by_name(name).experiment_id


def base_tags() -> dict[str, str]:
    return {"git_commit": git_commit(), "data_md5": data_md5()}


def start_pipeline_run(name: str = "pipeline", params: dict | None = None) -> str:
    """Create the parent run of one pipeline invocation and export its id to child processes."""
    client = _client()
    tags = {**base_tags(), "longtail.role": "pipeline", "mlflow.runName": name}
    run = client.create_run(experiment_id(client, params), tags=tags)
    if params:
        for k, v in flatten(params).items():
            client.log_param(run.info.run_id, k[:250], str(v)[:6000])
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def end_pipeline_run(status: str = "FINISHED") -> None:
    run_id = os.environ.get(PARENT_ENV)
    if run_id and enabled():
        _client().set_terminated(run_id, status=status)


def _parent_run_id(client, exp_id: str, params: dict | None) -> str:
    run_id = os.environ.get(PARENT_ENV)
    if run_id:
        return run_id
    key = params_hash([git_commit(), data_md5(), params])
    found = client.search_runs([exp_id], filter_string=f"tags.`longtail.pipeline_key` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {**base_tags(), "longtail.role": "pipeline", "longtail.pipeline_key": key,
            "mlflow.runName": "pipeline (no Snakemake parent)"}
    return client.create_run(exp_id, tags=tags).info.run_id


class StageRun:
    """Handle passed to a stage: log metrics (also to the DVC metrics file), step curves, artifacts."""

    FLUSH_STEPS = 50           # steps buffered before a log_batch
    FLUSH_SECONDS = 30.0       # ... or seconds since the last one
    BATCH_MAX = 1000           # metrics per log_batch request (MLflow's limit)

    def __init__(self, stage: str, run_id: str | None):
        self.stage = stage
        self.run_id = run_id
        self._buffer: list = []
        self._buffered_steps: set = set()
        self._last_flush = time.time()

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow

        flat = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and v == v}
        if not flat:
            return
        if step is None:
            self.flush()                   # keep the order of the curves and the final numbers
            mlflow.log_metrics(flat)
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, v, ts, int(step)) for k, v in flat.items())
        self._buffered_steps.add(int(step))
        if len(self._buffered_steps) >= self.FLUSH_STEPS or time.time() - self._last_flush >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send the buffered per-step metrics (``MlflowClient.log_batch``, at most BATCH_MAX per request)."""
        self._last_flush = time.time()
        if not self.active or not self._buffer:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri())
        buf, self._buffer, self._buffered_steps = self._buffer, [], set()
        for i in range(0, len(buf), self.BATCH_MAX):
            client.log_batch(self.run_id, metrics=buf[i:i + self.BATCH_MAX])

    def write_metrics(self, path: str | Path, metrics: dict[str, Any]) -> Path:
        """The DVC metrics file (JSON, atomic) and the same numbers in MLflow (rank 0 of a training world only)."""
        if is_rank_zero():
            write_json(path, metrics)
        self.log_metrics(metrics)
        return Path(path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        import mlflow

        p = Path(path)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        elif p.exists():
            mlflow.log_artifact(str(p), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.active:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def stage_run(stage: str, params: dict | None = None, all_params: dict | None = None,
              run_name: str | None = None, tags: dict | None = None) -> Iterator[StageRun]:
    """Nested MLflow run for one stage invocation; the run is marked FAILED if the block raises.

    ``params`` is the stage's section of params.yaml (logged flattened); ``all_params`` (the whole file)
    keys the fallback parent run.
    """
    if not enabled():
        yield StageRun(stage, None)
        return
    import mlflow

    client = _client()
    exp_id = experiment_id(client, all_params)
    parent = _parent_run_id(client, exp_id, all_params if all_params is not None else params)
    run_tags = {**base_tags(), "mlflow.parentRunId": parent, "longtail.stage": stage,
                "mlflow.runName": run_name or stage, **{k: str(v) for k, v in (tags or {}).items()}}
    run = client.create_run(exp_id, tags=run_tags)
    t0 = time.time()
    with mlflow.start_run(run_id=run.info.run_id):
        if params:
            items = [(k[:250], str(v)[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i:i + 100]))
        handle = StageRun(stage, run.info.run_id)
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(Exception):   # the curve up to the failure (e.g. a preempted training)
                handle.flush()
            mlflow.set_tag("longtail.status", "failed")
            mlflow.end_run(status="FAILED")
            raise
        handle.flush()
        mlflow.log_metric("stage_seconds", time.time() - t0)
