"""Faults and logging at scale (issue 15.4/15.5): the slurm profile (every rule sized, keep-going, pre-timeout
signal for long jobs), batched per-step MLflow metrics, GPU-configured discovery stages on a CPU node."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import test_discovery_eval as T
from test_discovery_eval import _setup  # noqa: F401 (autouse: the prepared val.json, MLflow off)

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"


def _rules() -> set[str]:
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--list-rules"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return {ln.strip() for ln in out.stdout.splitlines() if re.fullmatch(r"[a-z_][a-z0-9_]*", ln.strip())}


def test_slurm_profile_sizes_every_rule_and_keeps_going():
    prof = yaml.safe_load(PROFILE.read_text())
    assert prof["keep-going"] is True and prof["executor"] == "slurm"
    res = prof["set-resources"]
    rules = _rules() - {"all", "ablations"}                 # target-only rules (no job)
    assert {"train_pixel_embedding", "cluster", "evaluate", "propose"} <= rules
    missing = sorted(r for r in rules if r not in res)
    assert not missing, f"rules without at-scale resources in {PROFILE}: {missing}"
    for rule, r in res.items():
        assert rule in rules, f"{rule}: not a rule of the workflow"
        assert r["mem_mb"] > 0 and r["runtime"] > 0, rule
        # cluster / evaluate: GPUs from discovery.gpu when discovery.device is cuda (rules/discovery.smk)
        assert ("gpu" in r) != (rule in ("cluster", "evaluate")), rule
    # jobs that run for hours ask for SLURM's warning signal (they checkpoint on it and the retry resumes)
    for rule in ("train_proposals", "train_freesolo", "train_embedding", "train_pixel_embedding"):
        assert re.fullmatch(r"--signal=USR1@\d+", res[rule]["slurm_extra"]), rule   # all step processes, not B:
    assert prof["retries"] >= 1


def test_step_metrics_are_batched_and_all_reach_mlflow(tmp_path, monkeypatch):
    """150 per-step losses + a final number: every value reaches a file-store MLflow at its step, in a few
    log_batch requests (FLUSH_STEPS = 50) instead of one request per step; a failing stage flushes its curve."""
    from mlflow.tracking import MlflowClient

    from longtail.common import tracking
    from longtail.common.params import load_params

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")     # MLflow 3 keeps the file store in maintenance
    monkeypatch.setenv("LONGTAIL_MLFLOW", "1")
    monkeypatch.delenv("LONGTAIL_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr(tracking, "EXPERIMENT", "test-batching")
    calls = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, run_id, metrics=(), **kw: (
        calls.append(sum(m.key == "loss" for m in metrics or ())), real(self, run_id, metrics=metrics, **kw))[1])
    params = load_params()
    with tracking.stage_run("unit", params={"a": 1}, all_params=params) as run:
        for s in range(150):
            run.log_metrics({"loss": 1.0 / (s + 1), "lr": 0.1}, step=s)
        run.log_metrics({"final": 3.0})
        rid = run.run_id
    assert [c for c in calls if c] == [50, 50, 50]        # 50 steps (x 2 metrics) per request
    client = MlflowClient(uri)
    hist = sorted(client.get_metric_history(rid, "loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == list(range(150))
    assert [m.value for m in hist] == pytest.approx([1.0 / (s + 1) for s in range(150)])
    assert len(client.get_metric_history(rid, "lr")) == 150 and client.get_run(rid).data.metrics["final"] == 3.0
    with pytest.raises(RuntimeError):
        with tracking.stage_run("unit-fails", params={"a": 1}, all_params=params) as run:
            for s in range(7):
                run.log_metrics({"loss": float(s)}, step=s)
            raise RuntimeError("preempted")
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == list(range(7))
    assert client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="tests the fallback on a node without a GPU")
def test_cluster_and_evaluate_fall_back_to_the_cpu(tmp_path, caplog):
    """discovery.device: cuda (the COCO -> LVIS setting) on a node without a GPU: cluster and evaluate (with
    its random-baseline k-means) run on the CPU with a warning and give the CPU results."""
    gt, props, recs, cats = T.gt_proposals(tmp_path, n_images=20)
    with caplog.at_level(logging.WARNING, logger="longtail.common.runtime"):
        _, m, k = T.run_cli(tmp_path, gt, props, recs, cats, extra=["--set", "discovery.device=cuda"])
    msgs = " | ".join(r.getMessage() for r in caplog.records)
    for stage in ("cluster", "evaluate"):
        assert f"{stage}: device cuda requested but no CUDA device is visible; using the CPU" in msgs
    assert m["purity"]["purity"] == pytest.approx(1.0) and 0 < m["baseline_random"]["purity"] < 0.6
