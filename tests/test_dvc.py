"""DVC runs the same pipeline: repro, nothing to do the second time, metrics show, exp run -S (on prepare)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, cwd, stdout_only=False, **kw):
    env = {**os.environ, "LONGTAIL_MLFLOW": "0", "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout if stdout_only else r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory, repo_root):
    """The committed + untracked (not ignored) files in a fresh git repo, with the sample data."""
    dst = tmp_path_factory.mktemp("repo") / "longtail"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo_root, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (repo_root / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / f, dst / f)
    shutil.copytree(repo_root / "data", dst / "data")
    _run(["git", "init", "-q"], dst)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dst)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dst)
    return dst


def test_repro_then_nothing_to_do(repo_copy):
    out = _run([str(BIN / "dvc"), "repro", "prepare"], repo_copy)
    assert "Running stage 'prepare'" in out
    m = json.loads((repo_copy / "results/data/metrics.json").read_text())
    assert m["train"]["images"] == 180 and m["val"]["images"] == 177
    again = _run([str(BIN / "dvc"), "repro", "prepare"], repo_copy)
    assert "Running stage" not in again and "didn't change" in again


def test_metrics_show(repo_copy):
    shown = json.loads(_run([str(BIN / "dvc"), "metrics", "show", "--json"], repo_copy, stdout_only=True))
    flat = json.dumps(shown)
    assert '"images": 180' in flat and '"images": 177' in flat


def test_exp_run_with_override(repo_copy):
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "lock"], repo_copy) \
        if subprocess.run(["git", "status", "--porcelain"], cwd=repo_copy, capture_output=True,
                          text=True).stdout.strip() else None
    # base categories without 'person': base instances drop, novel rise, totals equal
    _run([str(BIN / "dvc"), "exp", "run", "prepare", "-S",
          "data.base_categories=[bicycle,car,motorcycle,airplane,bus,train,boat,bird,cat,dog,horse,sheep,cow,"
          "bottle,chair,couch,potted plant,dining table,tv]"], repo_copy)
    m = json.loads((repo_copy / "results/data/metrics.json").read_text())
    assert m["num_base_categories"] == 19 and m["num_novel_categories"] == 61
    assert m["train"]["instances"] == 1485
    shown = _run([str(BIN / "dvc"), "exp", "show", "--json"], repo_copy)
    assert "num_base_categories" in shown


def test_plots_show_elbow_curves(repo_copy):
    """`dvc plots show` renders the elbow curves written by the real `longtail cluster`."""
    import numpy as np

    rng = np.random.default_rng(0)
    for space in ("poincare", "euclidean"):
        x = rng.normal(size=(300, 2)) * 0.3
        z = x / (1 + np.linalg.norm(x, axis=1, keepdims=True)) if space == "poincare" else x
        npz = repo_copy / f"emb_{space}.npz"
        np.savez(npz, proposal_embeddings=z.astype(np.float32), proposal_ids=np.arange(300),
                 proposal_image_ids=np.repeat(np.arange(30), 10), proposal_scores=np.ones(300),
                 anchor_embeddings=z[:6].astype(np.float32), anchor_category_ids=np.array([1, 1, 2, 2, 3, 3]),
                 anchor_ann_ids=np.arange(6), space=space, curvature=1.0)
        _run([str(BIN / "longtail"), "cluster", "--embeddings", str(npz), "--out-dir",
              f"results/discovery/gt/{space}"], repo_copy)
    shown = json.loads(_run([str(BIN / "dvc"), "plots", "show", "--json"], repo_copy, stdout_only=True))
    flat = json.dumps(shown)
    assert "explained_variation" in flat
    import yaml

    k_grid = yaml.safe_load((repo_copy / "params.yaml").read_text())["discovery"]["k_grid"]
    for k in k_grid:
        assert f'"k": {k},' in flat or f'"k": {k}}}' in flat
