"""MLflow: a real `mlflow server` receives a stage's params, metrics, artifacts and tags, nested under a parent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_prepare_logs_to_server(mlflow_server, tmp_path, repo_root):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "LONGTAIL_MLFLOW": "1",
           "LONGTAIL_EXPERIMENT": "test-tracking", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("LONGTAIL_PARENT_RUN_ID", None)
    out = tmp_path / "data"
    r = subprocess.run([str(BIN / "longtail"), "prepare", "--out-dir", str(out)], cwd=repo_root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("test-tracking")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`longtail.stage` = 'prepare'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # params: the stage's params.yaml section, flattened
    assert run.data.params["on_bad_input"] == "skip"
    assert run.data.params["min_image_size"] == "32"
    assert json.loads(run.data.params["base_categories"])[0] == "person"
    # metrics: the same numbers as the DVC metrics file
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["train.images"] == metrics["train"]["images"] == 180
    assert run.data.metrics["val.novel_instances"] == metrics["val"]["novel_instances"]
    # tags: git commit, data md5 (from data.dvc), nested under a pipeline parent run
    import yaml

    md5 = yaml.safe_load((repo_root / "data.dvc").read_text())["outs"][0]["md5"]
    assert run.data.tags["data_md5"] == md5
    assert len(run.data.tags["git_commit"].split("-")[0]) == 40
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["longtail.role"] == "pipeline"
    # artifacts
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "categories.json"} <= names


def test_stages_share_the_parent_from_environment(mlflow_server, tmp_path, repo_root):
    """Separate processes (Snakemake jobs, SLURM jobs) nest under the parent exported by Snakemake's onstart."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "LONGTAIL_MLFLOW": "1",
           "LONGTAIL_EXPERIMENT": "test-parent", "PATH": f"{BIN}:{os.environ['PATH']}"}
    code = ("from longtail.common.tracking import start_pipeline_run; print(start_pipeline_run('t'))")
    parent = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            check=True).stdout.strip()
    env["LONGTAIL_PARENT_RUN_ID"] = parent
    procs = [subprocess.Popen([str(BIN / "longtail"), "prepare", "--out-dir", str(tmp_path / f"d{i}")],
                              cwd=repo_root, env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("test-parent")
    children = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 2
    assert all(c.data.metrics["val.images"] == 177 for c in children)
